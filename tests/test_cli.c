/* CLI behaviour: --help everywhere, exit codes (0 ok, 1 failure, 2 usage), clear messages for
 * bad input, JSON output. Runs the built binary ($TAPER_BIN, set by make test). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "taper/util.h"
#include "tt.h"

TT_TEST(cli_help_and_usage_errors) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char *out, *help;
    TT_CHECK(tt_taper("--help", &help) == 0 && strstr(help, "commands:"), "taper --help");
    TT_CHECK(tt_taper("frobnicate", &out) == 2 && strstr(out, "unknown command"), "unknown command -> 2");
    free(out);
    /* every command listed by taper --help: --help exits 0, an unknown option exits 2 */
    int n = 0;
    const char *p = strstr(help, "commands:");
    for (p = p ? strchr(p, '\n') : NULL; p && p[1] == ' ' && p[2] == ' '; p = strchr(p + 1, '\n')) {
        char name[32];
        if (sscanf(p + 1, " %31s", name) != 1) break;
        char a[96];
        snprintf(a, sizeof a, "%s --help", name);
        TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "usage: taper"), "%s --help exits 0 with usage", name);
        free(out);
        snprintf(a, sizeof a, "%s --no-such-option x", name);
        TT_CHECK(tt_taper(a, &out) == 2, "%s with an unknown option exits 2", name);
        free(out);
        n++;
    }
    TT_CHECK(n >= 13, "taper --help lists %d commands", n);
    free(help);
    TT_CHECK(tt_taper("ppl model.gguf --data x --ctx abc", &out) == 2 && strstr(out, "--ctx"), "bad --ctx names it");
    free(out);
    TT_CHECK(tt_taper("convert a b --to onnx", &out) == 2 && strstr(out, "--to"), "bad --to -> 2");
    free(out);
}

TT_TEST(cli_bad_files_fail_cleanly) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char *out;
    TT_CHECK(tt_taper("info /nonexistent/model.gguf", &out) == 1 && strstr(out, "/nonexistent/model.gguf"),
             "missing file -> exit 1 naming it: %s", out);
    free(out);
    char *junk = tt_path(tt_tmp_dir(), "junk.gguf");
    FILE *f = fopen(junk, "wb");
    fputs("GGUF\x03\x00\x00\x00 this is not a model", f);
    fclose(f);
    char a[512];
    snprintf(a, sizeof a, "info %s", junk);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, junk), "truncated GGUF -> exit 1 naming the file: %s", out);
    free(out);
    snprintf(a, sizeof a, "info %s", tt_tmp_dir());
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "config.json"), "folder without config.json -> exit 1: %s", out);
    free(out);
    free(junk);
}

TT_TEST(cli_info_ppl_generate_on_default_model) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    const char *model = tt_model_path();
    if (!model) { tt_skip("default model not found (run make deps)"); return; }
    char a[1024], *out;
    char *js = tt_path(tt_tmp_dir(), "info.json");
    snprintf(a, sizeof a, "info %s --tensors --json=%s", model, js);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "blk.0.attn_q.weight"), "info lists tensors");
    free(out);
    char *text = NULL;
    cJSON *j = NULL;
    if (tp_read_file(js, &text, NULL) == TP_OK) j = cJSON_Parse(text);
    TT_CHECK(j && cJSON_GetObjectItem(j, "n_params")->valuedouble == 134515008.0,
             "info --json: n_params of SmolLM2-135M is 134515008");
    TT_CHECK(j && cJSON_GetObjectItem(j, "n_kv_heads")->valueint == 3, "info --json: 3 KV heads");
    cJSON_Delete(j);
    free(text);
    /* ppl on a small text: the GPL-3 licence text shipped by Debian's base-files */
    const char *lic = "/usr/share/common-licenses/GPL-3";
    snprintf(a, sizeof a, "ppl %s --data %s --ctx 128 --max-chunks 2 --json", model, lic);
    int rc = tt_taper(a, &out);
    TT_CHECK(rc == 0 && strstr(out, "\"protocol\":\t\"chunks\"") && strstr(out, "llama.cpp"),
             "ppl prints both protocols as JSON (rc %d): %s", rc, out);
    free(out);
    snprintf(a, sizeof a, "generate %s --prompt 'The capital of France is' --max-tokens 8 --json", model);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "\"generated_ids\""), "generate --json");
    free(out);
    snprintf(a, sizeof a, "generate %s --prompt '' --max-tokens 4", model);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "no tokens"), "empty prompt is a clear error: %s", out);
    free(out);
    free(js);
}

/* taper bench: one row per batch size with both phases' rates, as JSON; bad lists refused. */
TT_TEST(cli_bench_rows) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    const char *model = tt_model_path();
    if (!model) { tt_skip("default model not found (run make deps)"); return; }
    char a[1024], *out = NULL, *text = NULL;
    char *js = tt_path(tt_tmp_dir(), "bench.json");
    snprintf(a, sizeof a, "bench %s --batch 1,3 --prompt 16 --gen 4 --json=%s", model, js);
    int rc = tt_taper(a, &out);
    TT_CHECK(rc == 0 && strstr(out, "S_TG t/s"), "bench prints its table (rc %d): %s", rc, out);
    free(out);
    cJSON *j = NULL;
    if (tp_read_file(js, &text, NULL) == TP_OK) j = cJSON_Parse(text);
    cJSON *rows = j ? cJSON_GetObjectItem(j, "rows") : NULL;
    int ok = cJSON_GetArraySize(rows) == 2;
    for (int i = 0; ok && i < 2; i++) {
        cJSON *r = cJSON_GetArrayItem(rows, i);
        ok = cJSON_GetObjectItem(r, "batch")->valueint == (i ? 3 : 1) &&
             cJSON_GetObjectItem(r, "prompt_tok_s")->valuedouble > 0 &&
             cJSON_GetObjectItem(r, "gen_tok_s")->valuedouble > 0 && cJSON_GetObjectItem(r, "gen")->valueint == 4;
    }
    TT_CHECK(ok, "bench --json: rows for batch 1 and 3 with positive rates: %s", text ? text : "(none)");
    cJSON_Delete(j);
    free(text);
    free(js);
    const char *bad[] = {"--batch 0", "--batch 1,,2", "--batch x", "--prompt 0"};
    for (int i = 0; i < 4; i++) {
        snprintf(a, sizeof a, "bench %s %s", model, bad[i]);
        rc = tt_taper(a, &out);
        TT_CHECK(rc == 2, "bench %s is a usage error (rc %d): %s", bad[i], rc, out);
        free(out);
    }
    snprintf(a, sizeof a, "bench %s --prompt 9000 --gen 1 --batch 1", model);
    rc = tt_taper(a, &out);
    TT_CHECK(rc == 1 && strstr(out, "context"), "prompt past the context is refused (rc %d): %s", rc, out);
    free(out);
}

/* ---- taper info on an 8B checkpoint whose weights are a sparse hole ---- */

/* Llama-3.1-8B's config.json (the fields taper reads). */
static const char LLAMA8B_CONFIG[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4096,\n"
    " \"intermediate_size\": 14336, \"num_hidden_layers\": 32, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 8, \"head_dim\": 128, \"vocab_size\": 128256,\n"
    " \"max_position_embeddings\": 131072, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0,\n"
    " \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,\n"
    "                  \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},\n"
    " \"tie_word_embeddings\": false, \"attention_bias\": false, \"mlp_bias\": false,\n"
    " \"hidden_act\": \"silu\", \"bos_token_id\": 128000, \"eos_token_id\": 128001,\n"
    " \"torch_dtype\": \"bfloat16\"}\n";

typedef struct { char *p; size_t n, cap; } hdr_buf;

static void hdr_printf(hdr_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hdr_printf(hdr_buf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) abort();
        if (b->p && b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
        b->cap = b->cap ? 2 * b->cap + (size_t)k : 65536;
        if (!(b->p = realloc(b->p, b->cap))) abort();
    }
}

/* One BF16 tensor of the header at the running data offset *off; returns its element count. */
static uint64_t hdr_tensor(hdr_buf *b, const char *name, uint64_t rows, uint64_t cols, uint64_t *off) {
    uint64_t n = rows * (cols ? cols : 1);
    if (cols)
        hdr_printf(b, "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu,%llu],\"data_offsets\":[%llu,%llu]}",
                   b->n > 1 ? "," : "", name, (unsigned long long)rows, (unsigned long long)cols,
                   (unsigned long long)*off, (unsigned long long)(*off + 2 * n));
    else
        hdr_printf(b, "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]}",
                   b->n > 1 ? "," : "", name, (unsigned long long)rows, (unsigned long long)*off,
                   (unsigned long long)(*off + 2 * n));
    *off += 2 * n;
    return n;
}

/* `taper info` reads metadata only: on an HF folder with Llama-3.1-8B's config.json and a
 * model.safetensors whose header lists all 291 BF16 tensors but whose 16 GB of data are a sparse
 * hole (no disk used), it answers in under a second with the parameter count the shapes give. */
TT_TEST(cli_info_8b_metadata_only) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    const uint64_t d = 4096, ff = 14336, vocab = 128256, q = 32 * 128, kv = 8 * 128;
    const int n_layers = 32;
    hdr_buf b = {0};
    uint64_t off = 0, n_params = 0;
    int n_tensors = 0;
    char name[96];
    hdr_printf(&b, "{");
    n_params += hdr_tensor(&b, "model.embed_tokens.weight", vocab, d, &off), n_tensors++;
    for (int l = 0; l < n_layers; l++) {
        static const struct { const char *name; int rows, cols; } parts[] = {
            /* 0: d, 1: q, 2: kv, 3: ff */
            {"input_layernorm", 0, -1}, {"self_attn.q_proj", 1, 0}, {"self_attn.k_proj", 2, 0},
            {"self_attn.v_proj", 2, 0}, {"self_attn.o_proj", 0, 1}, {"post_attention_layernorm", 0, -1},
            {"mlp.gate_proj", 3, 0}, {"mlp.up_proj", 3, 0}, {"mlp.down_proj", 0, 3}};
        const uint64_t dim[] = {d, q, kv, ff};
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, parts[i].name);
            uint64_t cols = parts[i].cols < 0 ? 0 : dim[parts[i].cols];
            n_params += hdr_tensor(&b, name, dim[parts[i].rows], cols, &off), n_tensors++;
        }
    }
    n_params += hdr_tensor(&b, "model.norm.weight", d, 0, &off), n_tensors++;
    n_params += hdr_tensor(&b, "lm_head.weight", vocab, d, &off), n_tensors++;
    hdr_printf(&b, "}");
    while (b.n % 8) hdr_printf(&b, " ");
    TT_CHECK(n_tensors == 291, "the header lists %d tensors (expected 291)", n_tensors);
    TT_CHECK(n_params == 8030261248ull, "the shapes hold %llu parameters (Llama-3.1-8B: 8030261248)",
             (unsigned long long)n_params);

    char *dir = tt_path(tt_tmp_dir(), "llama8b-sparse");
    char *cfg = tt_path(dir, "config.json"), *st = tt_path(dir, "model.safetensors");
    char *js = tt_path(dir, "info.json");
    mkdir(dir, 0777);
    TT_CHECK(tt_write_text(cfg, LLAMA8B_CONFIG, sizeof LLAMA8B_CONFIG - 1), "cannot write %s", cfg);
    uint64_t hlen = b.n;
    int fd = open(st, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int wrote = fd >= 0 && write(fd, &hlen, 8) == 8 && write(fd, b.p, b.n) == (ssize_t)b.n;
    TT_CHECK(wrote, "cannot write the header of %s: %s", st, strerror(errno));
    int sparse = wrote && ftruncate(fd, (off_t)(8 + hlen + off)) == 0;
    int err = errno;
    if (fd >= 0) close(fd);
    struct stat sb;
    if (wrote && !sparse) tt_skip_optional("cannot make a sparse file of %llu bytes: %s",
                                           (unsigned long long)(8 + hlen + off), strerror(err));
    else if (wrote && stat(st, &sb) == 0 && TT_CHECK((uint64_t)sb.st_size == 8 + hlen + off, "size of %s", st)) {
        tt_note("%s: %lld bytes, %lld on disk", st, (long long)sb.st_size, (long long)sb.st_blocks * 512);
        char a[1024], *out = NULL;
        snprintf(a, sizeof a, "info %s --json=%s", dir, js);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int rc = tt_taper(a, &out);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        TT_CHECK(rc == 0, "info on the sparse 8B folder exits %d: %s", rc, out);
        TT_CHECK(secs < 1.0, "info on the sparse 8B folder took %.2f s (limit 1 s)", secs);
        tt_note("taper info on the sparse 8B folder: %.3f s", secs);
        TT_CHECK(strstr(out, "weights      BF16, 16.06 GB in 1 file") != NULL, "weights line: %s", out);
        TT_CHECK(strstr(out, "scaling llama3") != NULL && strstr(out, "untied embeddings") != NULL,
                 "rope and embeddings line: %s", out);
        cJSON *j = tt_read_json(js);
        const cJSON *w = cJSON_GetObjectItem(j, "weights");
        const cJSON *np = cJSON_GetObjectItem(j, "n_params");
        TT_CHECK(cJSON_IsNumber(np) && np->valuedouble == 8030261248.0 && np->valuedouble == (double)n_params,
                 "info --json: n_params %.0f, the shapes give %llu", cJSON_IsNumber(np) ? np->valuedouble : -1.0,
                 (unsigned long long)n_params);
        TT_CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(w, "dtypes"), "BF16") &&
                     cJSON_GetObjectItem(cJSON_GetObjectItem(w, "dtypes"), "BF16")->valuedouble == 291.0,
                 "info --json: weights.dtypes is {\"BF16\": 291}");
        TT_CHECK(cJSON_GetObjectItem(w, "bytes") && cJSON_GetObjectItem(w, "bytes")->valuedouble == (double)off &&
                     cJSON_GetObjectItem(w, "files") && cJSON_GetObjectItem(w, "files")->valueint == 1,
                 "info --json: weights.bytes is %llu in 1 file", (unsigned long long)off);
        TT_CHECK(cJSON_GetObjectItem(j, "format") && !strcmp(cJSON_GetObjectItem(j, "format")->valuestring, "hf"),
                 "info --json: format hf");
        cJSON_Delete(j);
        free(out);
    }
    unlink(st); /* the 16 GB apparent size goes now, even when a check failed and tmp stays */
    unlink(cfg);
    unlink(js);
    rmdir(dir);
    free(b.p);
    free(st);
    free(cfg);
    free(js);
    free(dir);
}
