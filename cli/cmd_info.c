/* taper info MODEL: architecture, parameter counts per component, tensor table. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/safetensors.h"

static const char *HELP =
    "usage: taper info MODEL [--tensors] [--json[=FILE]]\n\n"
    "Prints the architecture, the parameter count per component and (with --tensors) the table of\n"
    "tensors as stored in the file (name, type, shape).\n\n"
    "  --tensors       list every tensor of the checkpoint\n"
    "  --json[=FILE]   also write the numbers as JSON (stdout, or FILE)\n"
    "  -h, --help      this help\n";

static const char *arch_name(tp_arch a) {
    static const char *const names[] = {"llama", "mistral", "qwen2", "qwen3", "gemma3"};
    return (int)a >= 0 && (int)a < (int)(sizeof names / sizeof names[0]) ? names[a] : "?";
}

static void print_tensors(const tp_model *m, cJSON *arr) {
    struct stat st;
    if (stat(m->source, &st) == 0 && S_ISDIR(st.st_mode)) {
        tp_safetensors *s = NULL;
        if (tp_st_open(m->source, &s)) return;
        printf("\n%-52s %-6s %s\n", "tensor", "dtype", "shape");
        for (size_t i = 0; i < s->n_tensors; i++) {
            const tp_st_tensor *t = &s->tensors[i];
            char shape[128] = "";
            size_t o = 0;
            for (int d = 0; d < t->n_dims && o < sizeof shape; d++)
                o += (size_t)snprintf(shape + o, sizeof shape - o, d ? ", %llu" : "%llu",
                                      (unsigned long long)t->shape[d]);
            printf("%-52s %-6s [%s]\n", t->name, t->dtype_str, shape);
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "name", t->name);
            cJSON_AddStringToObject(j, "dtype", t->dtype_str);
            cJSON_AddStringToObject(j, "shape", shape);
            cJSON_AddItemToArray(arr, j);
        }
        tp_st_close(s);
    } else {
        tp_gguf *g = NULL;
        if (tp_gguf_open(m->source, &g)) return;
        printf("\n%-32s %-6s %s\n", "tensor", "type", "shape (ggml order: ne[0] first)");
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const tp_gguf_tensor *t = &g->tensors[i];
            char shape[128] = "";
            size_t o = 0;
            for (uint32_t d = 0; d < t->n_dims && o < sizeof shape; d++)
                o += (size_t)snprintf(shape + o, sizeof shape - o, d ? ", %llu" : "%llu",
                                      (unsigned long long)t->ne[d]);
            printf("%-32s %-6s [%s]\n", t->name, tp_ggml_type_name(t->type), shape);
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "name", t->name);
            cJSON_AddStringToObject(j, "dtype", tp_ggml_type_name(t->type));
            cJSON_AddStringToObject(j, "shape", shape);
            cJSON_AddItemToArray(arr, j);
        }
        tp_gguf_close(g);
    }
}

int cmd_info(int argc, char **argv) {
    static const struct option opts[] = {{"tensors", no_argument, 0, 't'},
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *json = NULL;
    int tensors = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') { fputs(HELP, stdout); return CLI_OK; }
        else if (c == 't') tensors = 1;
        else if (c == 'j') json = optarg ? optarg : "-";
        else return cli_usage("info", "unknown option");
    }
    if (optind != argc - 1) return cli_usage("info", "expects exactly one MODEL");
    tp_model *m = NULL;
    tp_status s = tp_model_load(argv[optind], &m);
    if (s) return cli_error(s);
    const tp_config *k = &m->cfg;
    size_t d = (size_t)k->d_model, q = (size_t)k->n_heads * k->head_dim, kv = (size_t)k->n_kv_heads * k->head_dim;
    size_t emb = (size_t)k->vocab * d;
    size_t attn = (size_t)k->n_layers * (2 * q * d + 2 * kv * d + (k->attn_bias ? q + 2 * kv : 0));
    size_t mlp = (size_t)k->n_layers * 3 * (size_t)k->d_ff * d;
    size_t norms = (size_t)((2 + 2 * !!k->sandwich_norm) * k->n_layers + 1) * d +
                   (k->qk_norm ? (size_t)k->n_layers * 2 * (size_t)k->head_dim : 0);
    size_t head = k->tie_embeddings ? 0 : emb;
    printf("model        %s (%s)\n", m->source, m->source_format);
    printf("architecture %s: %d layers, d_model %d, %d heads / %d KV heads, head_dim %d, ffn %d, vocab %d\n",
           arch_name(k->arch), k->n_layers, k->d_model, k->n_heads, k->n_kv_heads, k->head_dim, k->d_ff, k->vocab);
    printf("rope         theta %g, scaling %s; rms_norm_eps %g; context %d; %s embeddings%s\n", k->rope_theta,
           k->rope_scaling == TP_ROPE_LLAMA3 ? "llama3" : k->rope_scaling == TP_ROPE_LINEAR ? "linear" : "none",
           k->norm_eps, k->max_pos, k->tie_embeddings ? "tied" : "untied", k->attn_bias ? "; q/k/v bias" : "");
    if (k->sliding_window > 0) {
        int n_sl = 0;
        for (int l = 0; l < k->n_layers; l++) n_sl += tp_config_layer_sliding(k, l);
        printf("attention    sliding window %d on %d of %d layers", k->sliding_window, n_sl, k->n_layers);
        if (k->rope_local_theta > 0) printf(" (their RoPE base %g)", k->rope_local_theta);
        printf("\n");
    }
    if (k->arch == TP_ARCH_GEMMA3 || k->arch == TP_ARCH_QWEN3)
        printf("family       %s%s%s\n", k->qk_norm ? "q/k norms" : "",
               k->arch == TP_ARCH_GEMMA3 ? "; GeGLU (tanh), (1 + w) and sandwich norms, embeddings x sqrt(d_model)" : "",
               k->attn_scale_base > 0 ? "; scores / sqrt(query_pre_attn_scalar)" : "");
    if (m->tok)
        printf("tokenizer    %s, %d tokens, pre-tokenizer %s, bos %d, eos %d, adds BOS: %s\n", tp_tok_kind(m->tok),
               tp_tok_vocab_size(m->tok), tp_tok_pre_name(m->tok), tp_tok_bos(m->tok), tp_tok_eos(m->tok),
               tp_tok_adds_bos(m->tok) ? "yes" : "no");
    printf("\n%-14s %14s %7s\n", "component", "parameters", "share");
    const char *names[] = {"embeddings", "attention", "mlp", "norms", "lm_head"};
    size_t counts[] = {emb, attn, mlp, norms, head};
    cJSON *j = cJSON_CreateObject(), *pc = cJSON_CreateObject();
    for (int i = 0; i < 5; i++) {
        printf("%-14s %14zu %6.1f%%\n", names[i], counts[i], 100.0 * (double)counts[i] / (double)m->n_params);
        cJSON_AddNumberToObject(pc, names[i], (double)counts[i]);
    }
    printf("%-14s %14zu (%.1fM)\n", "total", m->n_params, (double)m->n_params / 1e6);
    cJSON_AddStringToObject(j, "model", m->source);
    cJSON_AddStringToObject(j, "format", m->source_format);
    cJSON_AddStringToObject(j, "architecture", arch_name(k->arch));
    cJSON_AddNumberToObject(j, "n_layers", k->n_layers);
    cJSON_AddNumberToObject(j, "d_model", k->d_model);
    cJSON_AddNumberToObject(j, "n_heads", k->n_heads);
    cJSON_AddNumberToObject(j, "n_kv_heads", k->n_kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", k->head_dim);
    cJSON_AddNumberToObject(j, "d_ff", k->d_ff);
    cJSON_AddNumberToObject(j, "vocab", k->vocab);
    cJSON_AddBoolToObject(j, "tied_embeddings", k->tie_embeddings);
    cJSON_AddNumberToObject(j, "n_params", (double)m->n_params);
    cJSON_AddItemToObject(j, "params", pc);
    cJSON *arr = cJSON_CreateArray();
    if (tensors) print_tensors(m, arr);
    cJSON_AddItemToObject(j, "tensors", arr);
    tp_model_free(m);
    if (json) return cli_json_out(j, json);
    cJSON_Delete(j);
    return CLI_OK;
}
