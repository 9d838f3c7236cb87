/* taper info MODEL: architecture, parameter counts per component, stored weight types and size,
 * tensor table. Reads metadata only (config.json or the GGUF header, the safetensors headers, the
 * tokenizer): no weight is read, so it is instant on a checkpoint of any size. */
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
    "Prints the architecture, the parameter count per component, the stored type(s) and size of the\n"
    "weights and (with --tensors) the table of tensors as stored in the file (name, type, shape).\n"
    "Only metadata is read (config.json or the GGUF header, the safetensors headers, the tokenizer).\n\n"
    "  --tensors       list every tensor of the checkpoint\n"
    "  --json[=FILE]   also write the numbers as JSON (stdout, or FILE)\n"
    "  -h, --help      this help\n";

/* What info knows of a model without its weights. */
typedef struct {
    const char *path;
    const char *format;   /* "hf" (a folder) or "gguf" */
    tp_config cfg;
    size_t n_params;
    tp_safetensors *st;   /* hf: the safetensors headers (mapped; no tensor data read) */
    tp_gguf *g;           /* gguf: the file's header (mapped; no tensor data read) */
    tp_tokenizer *tok;    /* NULL when the model has none */
} info_model;

/* Stored types of the tensors with their counts (most frequent first once sorted). 64 slots hold
 * every type either format knows (20 safetensors dtypes, fewer than 64 ggml types). */
typedef struct { char name[16]; size_t n; } info_type_count;
typedef struct {
    info_type_count type[64];
    int n_types;
    uint64_t bytes;       /* the tensors' stored bytes (headers excluded) */
    int files;
} info_weights;

static const char *arch_name(tp_arch a) {
    static const char *const names[] = {"llama", "mistral", "qwen2", "qwen3", "gemma3"};
    return (int)a >= 0 && (int)a < (int)(sizeof names / sizeof names[0]) ? names[a] : "?";
}

static void info_close(info_model *m) {
    tp_st_close(m->st);
    tp_gguf_close(m->g);
    tp_tok_free(m->tok);
}

/* Config, weight headers and tokenizer of path; on failure m holds nothing to close. The
 * tokenizer is found as tp_model_load finds it: an HF folder's tokenizer.json (else its
 * tokenizer.gguf), a GGUF's tokenizer.ggml.* keys; none there is no tokenizer, not an error. */
static tp_status info_open(const char *path, info_model *m) {
    memset(m, 0, sizeof *m);
    m->path = path;
    tp_status s = tp_config_load(path, &m->cfg);
    if (s) return s;
    struct stat sb;
    if (stat(path, &sb) != 0) return tp_fail(TP_ERR_IO, "%s: no such file or directory", path);
    m->format = S_ISDIR(sb.st_mode) ? "hf" : "gguf";
    m->n_params = tp_config_n_params(&m->cfg);
    if (S_ISDIR(sb.st_mode)) {
        if (!(s = tp_st_open(path, &m->st))) s = tp_tok_load_any(path, &m->tok, NULL);
    } else if (!(s = tp_gguf_open(path, &m->g)) && tp_gguf_find(m->g, "tokenizer.ggml.model") &&
               (s = tp_tok_load_gguf(m->g, &m->tok)))
        s = tp_fail_ctx(s, "%s: tokenizer: ", path);
    if (s) {
        info_close(m);
        memset(m, 0, sizeof *m);
    }
    return s;
}

static void count_type(info_weights *w, const char *name, size_t nbytes) {
    int i = 0;
    w->bytes += nbytes;
    while (i < w->n_types && strcmp(w->type[i].name, name) != 0) i++;
    if (i == (int)(sizeof w->type / sizeof w->type[0])) return;
    if (i == w->n_types) {
        snprintf(w->type[i].name, sizeof w->type[i].name, "%s", name);
        w->type[i].n = 0;
        w->n_types++;
    }
    w->type[i].n++;
}

static int cmp_type_count(const void *a, const void *b) {
    const info_type_count *x = a, *y = b;
    return x->n != y->n ? (x->n > y->n ? -1 : 1) : strcmp(x->name, y->name);
}

static void summarize_weights(const info_model *m, info_weights *w) {
    memset(w, 0, sizeof *w);
    if (m->st) {
        for (size_t i = 0; i < m->st->n_tensors; i++)
            count_type(w, m->st->tensors[i].dtype_str, m->st->tensors[i].nbytes);
        w->files = m->st->n_shards;
    } else {
        for (uint64_t i = 0; i < m->g->n_tensors; i++)
            count_type(w, tp_ggml_type_name(m->g->tensors[i].type), m->g->tensors[i].nbytes);
        w->files = 1;
    }
    qsort(w->type, (size_t)w->n_types, sizeof w->type[0], cmp_type_count);
}

/* "16.06 GB", "85.3 MB", ...: decimal units, as file sizes are usually quoted. */
static void format_bytes(uint64_t b, char *buf, size_t n) {
    if (b >= 1000000000ull) snprintf(buf, n, "%.2f GB", (double)b / 1e9);
    else if (b >= 1000000ull) snprintf(buf, n, "%.1f MB", (double)b / 1e6);
    else if (b >= 1000ull) snprintf(buf, n, "%.1f kB", (double)b / 1e3);
    else snprintf(buf, n, "%llu bytes", (unsigned long long)b);
}

/* "weights      BF16, 16.06 GB in 4 files", or with several types "Q4_1 x 169, F32 x 61, ...". */
static void print_weights(const info_weights *w) {
    char size[32];
    format_bytes(w->bytes, size, sizeof size);
    printf("weights      ");
    if (w->n_types == 1) printf("%s, ", w->type[0].name);
    else
        for (int i = 0; i < w->n_types; i++) printf("%s x %zu, ", w->type[i].name, w->type[i].n);
    printf("%s in %d file%s\n", size, w->files, w->files == 1 ? "" : "s");
}

/* {"dtypes": {TYPE: count, ...}, "bytes": N, "files": N} */
static cJSON *weights_json(const info_weights *w) {
    cJSON *jw = cJSON_CreateObject(), *jd = cJSON_CreateObject();
    for (int i = 0; i < w->n_types; i++) cJSON_AddNumberToObject(jd, w->type[i].name, (double)w->type[i].n);
    cJSON_AddItemToObject(jw, "dtypes", jd);
    cJSON_AddNumberToObject(jw, "bytes", (double)w->bytes);
    cJSON_AddNumberToObject(jw, "files", w->files);
    return jw;
}

static void print_tensors(const info_model *m, cJSON *arr) {
    if (m->st) {
        const tp_safetensors *s = m->st;
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
    } else {
        const tp_gguf *g = m->g;
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
    info_model m;
    tp_status s = info_open(argv[optind], &m);
    if (s) return cli_error(s);
    const tp_config *k = &m.cfg;
    size_t d = (size_t)k->d_model, kv = (size_t)k->n_kv_heads * k->head_dim;
    size_t emb = (size_t)k->vocab * d, attn = 0, mlp = 0;
    for (int l = 0; l < k->n_layers; l++) {
        size_t q = (size_t)tp_config_heads(k, l) * k->head_dim;
        attn += 2 * q * d + 2 * kv * d + (k->attn_bias ? q + 2 * kv : 0);
        mlp += 3 * (size_t)tp_config_ff(k, l) * d;
    }
    size_t norms = (size_t)((2 + 2 * !!k->sandwich_norm) * k->n_layers + 1) * d +
                   (k->qk_norm ? (size_t)k->n_layers * 2 * (size_t)k->head_dim : 0);
    size_t head = k->tie_embeddings ? 0 : emb;
    printf("model        %s (%s)\n", m.path, m.format);
    printf("architecture %s: %d layers, d_model %d, %d heads / %d KV heads, head_dim %d, ffn %d, vocab %d\n",
           arch_name(k->arch), k->n_layers, k->d_model, k->n_heads, k->n_kv_heads, k->head_dim, k->d_ff, k->vocab);
    if (k->hetero) {
        printf("per layer    ffn/heads:");
        for (int l = 0; l < k->n_layers; l++) printf(" %d/%d", k->layer_ff[l], k->layer_heads[l]);
        printf(" (the sizes above are the widest)\n");
    }
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
    if (m.tok)
        printf("tokenizer    %s, %d tokens, pre-tokenizer %s, bos %d, eos %d, adds BOS: %s\n", tp_tok_kind(m.tok),
               tp_tok_vocab_size(m.tok), tp_tok_pre_name(m.tok), tp_tok_bos(m.tok), tp_tok_eos(m.tok),
               tp_tok_adds_bos(m.tok) ? "yes" : "no");
    info_weights w;
    summarize_weights(&m, &w);
    print_weights(&w);
    printf("\n%-14s %14s %7s\n", "component", "parameters", "share");
    const char *names[] = {"embeddings", "attention", "mlp", "norms", "lm_head"};
    size_t counts[] = {emb, attn, mlp, norms, head};
    cJSON *j = cJSON_CreateObject(), *pc = cJSON_CreateObject();
    for (int i = 0; i < 5; i++) {
        printf("%-14s %14zu %6.1f%%\n", names[i], counts[i], 100.0 * (double)counts[i] / (double)m.n_params);
        cJSON_AddNumberToObject(pc, names[i], (double)counts[i]);
    }
    printf("%-14s %14zu (%.1fM)\n", "total", m.n_params, (double)m.n_params / 1e6);
    cJSON_AddStringToObject(j, "model", m.path);
    cJSON_AddStringToObject(j, "format", m.format);
    cJSON_AddStringToObject(j, "architecture", arch_name(k->arch));
    cJSON_AddNumberToObject(j, "n_layers", k->n_layers);
    cJSON_AddNumberToObject(j, "d_model", k->d_model);
    cJSON_AddNumberToObject(j, "n_heads", k->n_heads);
    cJSON_AddNumberToObject(j, "n_kv_heads", k->n_kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", k->head_dim);
    cJSON_AddNumberToObject(j, "d_ff", k->d_ff);
    if (k->hetero) {
        cJSON_AddItemToObject(j, "layer_d_ff", cJSON_CreateIntArray(k->layer_ff, k->n_layers));
        cJSON_AddItemToObject(j, "layer_n_heads", cJSON_CreateIntArray(k->layer_heads, k->n_layers));
    }
    cJSON_AddNumberToObject(j, "vocab", k->vocab);
    cJSON_AddBoolToObject(j, "tied_embeddings", k->tie_embeddings);
    cJSON_AddNumberToObject(j, "n_params", (double)m.n_params);
    cJSON_AddItemToObject(j, "params", pc);
    cJSON_AddItemToObject(j, "weights", weights_json(&w));
    cJSON *arr = cJSON_CreateArray();
    if (tensors) print_tensors(&m, arr);
    cJSON_AddItemToObject(j, "tensors", arr);
    info_close(&m);
    if (json) return cli_json_out(j, json);
    cJSON_Delete(j);
    return CLI_OK;
}
