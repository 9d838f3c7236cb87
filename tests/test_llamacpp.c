/* taper's GGUF exports in a second, independent runtime: llama.cpp (the copy vendored in the PyPI
 * source package llama-cpp-python==0.3.36, built by `make llama-cpp`, scripts/llama-cpp.sh).
 * For each model and stored type: `taper convert MODEL --to gguf OUT --dtype T`, then
 * llama-perplexity and `taper ppl` score the same WikiText-2 chunks under llama.cpp's protocol and
 * must agree; llama-completion and `taper generate` must produce the same greedy text.
 * Tools: $TAPER_LLAMA_CPP_BIN, default $TAPER_CACHE/llama.cpp-0.3.36/build/bin. Adding a model
 * family is one line at the bottom (llamacpp_family). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/util.h"
#include "tt.h"

#define LL_CTX 512
#define LL_CHUNKS 4 /* 4 x 512 tokens, 1024 of them scored: agreement, not a benchmark */
/* llama.cpp's numerics made as plain as they go: an f32 KV cache (not f16), no flash attention
 * (it rounds through f16 on the CPU), one sequence per batch. With these the f32 export gives the
 * same PPL as taper to the 4 decimals llama-perplexity prints; with the defaults, 7e-5 apart. */
#define LL_EXACT "-fa off -ctk f32 -ctv f32 -b 512 -t 2"
#define LL_GEN_TOKENS 16
#define LL_PROMPT "The history of the city of Paris"

static char ll_bin_buf[4096];

/* The directory holding llama-perplexity, or NULL when llama.cpp is not built. */
static const char *ll_bin_dir(void) {
    const char *b = getenv("TAPER_LLAMA_CPP_BIN");
    if (b && *b) snprintf(ll_bin_buf, sizeof ll_bin_buf, "%s", b);
    else {
        const char *c = getenv("TAPER_CACHE"), *h = getenv("HOME");
        if (c && *c) snprintf(ll_bin_buf, sizeof ll_bin_buf, "%s/llama.cpp-0.3.36/build/bin", c);
        else snprintf(ll_bin_buf, sizeof ll_bin_buf, "%s/.cache/taper/llama.cpp-0.3.36/build/bin", h ? h : ".");
    }
    char *p = tt_path(ll_bin_buf, "llama-perplexity");
    int ok = access(p, X_OK) == 0;
    free(p);
    return ok ? ll_bin_buf : NULL;
}

/* Runs a shell command line with its stdout into a file (the caller redirects stderr) and
 * returns that output (malloc'd, never NULL) and the exit status in *rc. */
static char *ll_run(const char *cmd, const char *log, int *rc) {
    *rc = tt_sh("{ %s; } > '%s'", cmd, log);
    char *out = NULL;
    if (tp_read_file(log, &out, NULL) != TP_OK) out = strdup("");
    if (!out) abort();
    unlink(log);
    return out;
}

/* llama-perplexity's "Final estimate: PPL = 12.3456 +/- 0.789" and "over N chunks". */
static int ll_parse_ppl(const char *out, double *ppl, int *chunks) {
    const char *f = strstr(out, "Final estimate: PPL = ");
    const char *c = strstr(out, "calculating perplexity over ");
    if (!f || !c) return 0;
    return sscanf(f, "Final estimate: PPL = %lf", ppl) == 1 &&
           sscanf(c, "calculating perplexity over %d chunks", chunks) == 1;
}

/* The llama.cpp-protocol result of `taper ppl --json=FILE`. */
static int taper_llamacpp_ppl(const char *json, double *ppl, int *chunks) {
    cJSON *j = tt_read_json(json), *r;
    cJSON *results = j ? cJSON_GetObjectItem(j, "results") : NULL;
    int ok = 0;
    cJSON_ArrayForEach(r, results) {
        const cJSON *p = cJSON_GetObjectItem(r, "protocol");
        if (cJSON_IsString(p) && !strcmp(p->valuestring, "llama.cpp")) {
            *ppl = cJSON_GetObjectItem(r, "ppl")->valuedouble;
            *chunks = cJSON_GetObjectItem(r, "chunks")->valueint;
            ok = 1;
        }
    }
    cJSON_Delete(j);
    return ok;
}

/* Perplexity of the export under llama.cpp's protocol, llama-perplexity vs taper ppl (computing
 * with PRECISION, fp32 or bf16). */
static void ll_check_ppl(const char *bin, const char *gguf, const char *tag, const char *data, const char *precision,
                         double rtol) {
    char cmd[8192];
    char *log = tt_path(tt_tmp_dir(), "llama-perplexity.log");
    snprintf(cmd, sizeof cmd, "'%s/llama-perplexity' -m '%s' -f '%s' -c %d --chunks %d " LL_EXACT " 2>&1", bin,
             gguf, data, LL_CTX, LL_CHUNKS);
    int rc;
    char *out = ll_run(cmd, log, &rc);
    double lp = 0;
    int lc = 0;
    int ok = TT_CHECK(rc == 0 && ll_parse_ppl(out, &lp, &lc),
                      "%s: llama-perplexity (rc %d) gave no final estimate:\n%s", tag, rc, out);
    free(out);
    free(log);
    if (!ok) return;

    char *json = tt_path(tt_tmp_dir(), "llamacpp-ppl.json");
    snprintf(cmd, sizeof cmd, "ppl '%s' --data '%s' --ctx %d --max-chunks %d --precision %s --json='%s'", gguf, data,
             LL_CTX, LL_CHUNKS, precision, json);
    rc = tt_taper(cmd, &out);
    double tp = 0;
    int tc = 0;
    ok = TT_CHECK(rc == 0 && taper_llamacpp_ppl(json, &tp, &tc), "%s: taper ppl (rc %d): %s", tag, rc, out);
    free(out);
    unlink(json);
    free(json);
    if (!ok) return;
    tt_note("%s: llama.cpp-protocol PPL, %d x %d tokens: taper (%s) %.4f, llama-perplexity %.4f (rel. diff %.1e)",
            tag, tc, LL_CTX, precision, tp, lp, fabs(tp - lp) / lp);
    TT_CHECK(lc == LL_CHUNKS && tc == LL_CHUNKS, "%s: both scored %d chunks (llama.cpp %d, taper %d)", tag,
             LL_CHUNKS, lc, tc);
    /* llama-perplexity prints 4 decimals: ~2e-6 relative at PPL ~20, well inside rtol */
    TT_CHECK(fabs(tp - lp) <= rtol * lp, "%s: taper %.4f vs llama-perplexity %.4f differ by more than %.2g%%", tag,
             tp, lp, 100 * rtol);
}

/* Greedy continuation of LL_PROMPT, llama-completion vs taper generate: the same text (required
 * when must_match, else only reported). */
static void ll_check_greedy(const char *bin, const char *gguf, const char *tag, int must_match) {
    char cmd[8192];
    char *gen = tt_path(bin, "llama-completion");
    if (access(gen, X_OK) != 0) {
        tt_note("%s: %s not built, greedy generation not compared", tag, gen);
        free(gen);
        return;
    }
    char *log = tt_path(tt_tmp_dir(), "llama-completion.log");
    /* stdout only (the log goes to stderr): with --no-display-prompt that is the continuation */
    snprintf(cmd, sizeof cmd,
             "'%s' -m '%s' -p '%s' -n %d --temp 0 --seed 1 -c 256 -no-cnv --no-display-prompt --no-warmup " LL_EXACT
             " 2>/dev/null </dev/null",
             gen, gguf, LL_PROMPT, LL_GEN_TOKENS);
    int rc;
    char *ll = ll_run(cmd, log, &rc);
    free(gen);
    free(log);
    if (!TT_CHECK(rc == 0 && *ll, "%s: llama-completion (rc %d) printed nothing", tag, rc)) { free(ll); return; }
    char *json = tt_path(tt_tmp_dir(), "llamacpp-gen.json"), *out;
    snprintf(cmd, sizeof cmd, "generate '%s' --prompt '%s' --max-tokens %d --temperature 0 --json='%s'", gguf,
             LL_PROMPT, LL_GEN_TOKENS, json);
    rc = tt_taper(cmd, &out);
    cJSON *j = tt_read_json(json);
    const cJSON *t = j ? cJSON_GetObjectItem(j, "text") : NULL;
    if (TT_CHECK(rc == 0 && cJSON_IsString(t), "%s: taper generate (rc %d): %s", tag, rc, out)) {
        /* llama-completion ends its stdout with a newline (and " [end of text]" at EOS) */
        size_t n = strlen(ll);
        while (n && ll[n - 1] == '\n') ll[--n] = 0;
        const char *eot = " [end of text]";
        if (n >= strlen(eot) && !strcmp(ll + n - strlen(eot), eot)) ll[n - strlen(eot)] = 0;
        if (must_match)
            TT_CHECK(!strcmp(ll, t->valuestring),
                     "%s: greedy %d tokens differ:\n      llama.cpp: [%s]\n      taper:     [%s]", tag, LL_GEN_TOKENS,
                     ll, t->valuestring);
        else
            tt_note("%s: greedy %d tokens %s (not required):\n      llama.cpp: [%s]\n      taper:     [%s]", tag,
                    LL_GEN_TOKENS, strcmp(ll, t->valuestring) ? "differ" : "agree", ll, t->valuestring);
    }
    cJSON_Delete(j);
    unlink(json);
    free(json);
    free(out);
    free(ll);
}

/* Exports MODEL as a GGUF of stored type DTYPE (f32, f16, bf16) and checks it in llama.cpp.
 * LABEL names the model in messages and file names. Seen on SmolLM2 (4 chunks):
 * f32: PPL within 1e-4 (seen 2e-7), greedy text identical.
 * f16: llama.cpp's CPU products with f16 weights round the activations to f16; PPL within 5e-4
 *      (seen 5e-5), greedy text identical.
 * bf16: the same rounding to bf16, so taper runs with --precision bf16 (bf16 inputs, fp32
 *      accumulation); PPL within 1e-3 (seen 1.4e-4; 6.6e-4 with taper in fp32). The greedy text is
 *      only reported: taper's generate computes in fp32, not the same computation. */
static void llamacpp_export_check(const char *model, const char *dtype, const char *label) {
    int bf16 = !strcmp(dtype, "bf16");
    const char *bin = ll_bin_dir();
    if (!bin) { tt_skip("llama.cpp's tools not found in %s: `make llama-cpp` builds them", ll_bin_buf); return; }
    char tag[256], name[320], cmd[4096], *out;
    snprintf(tag, sizeof tag, "%s %s", label, dtype);
    snprintf(name, sizeof name, "llamacpp-%s-%s.gguf", label, dtype);
    char *gguf = tt_path(tt_tmp_dir(), name), *data = tt_path(tt_data_dir(), "wikitext2/wiki.test.raw");
    snprintf(cmd, sizeof cmd, "convert '%s' --to gguf '%s' --dtype %s", model, gguf, dtype);
    int rc = tt_taper(cmd, &out);
    if (TT_CHECK(rc == 0, "%s: taper convert (rc %d): %s", tag, rc, out)) {
        ll_check_ppl(bin, gguf, tag, data, bf16 ? "bf16" : "fp32", bf16 ? 1e-3 : !strcmp(dtype, "f16") ? 5e-4 : 1e-4);
        ll_check_greedy(bin, gguf, tag, !bf16);
    }
    free(out);
    unlink(gguf); /* an f32 export of a 135M model is 540 MB */
    free(gguf);
    free(data);
}

/* Every stored type `taper convert --to gguf` writes at full precision, each against llama.cpp. */
static void llamacpp_family(const char *label, const char *model) {
    if (!ll_bin_dir()) {
        tt_skip("llama.cpp's tools not found in %s: `make llama-cpp` builds them (or set TAPER_LLAMA_CPP_BIN)",
                ll_bin_buf);
        return;
    }
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    if (!model) { tt_skip("%s: model not found (make deps fetches it)", label); return; }
    char *data = tt_path(tt_data_dir(), "wikitext2/wiki.test.raw");
    int have = access(data, R_OK) == 0;
    if (!have) tt_skip("%s not found (TAPER_DATA)", data);
    free(data);
    if (!have) return;
    llamacpp_export_check(model, "f32", label);
    llamacpp_export_check(model, "f16", label);
    llamacpp_export_check(model, "bf16", label);
}

TT_TEST(llamacpp_smollm2) { llamacpp_family("smollm2", tt_model_path()); }
