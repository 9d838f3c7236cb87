/* Tokenizer tests against HF `tokenizers` (fixtures from tests/ref/tok_ref.py): SmolLM2's
 * tokenizer from tokenizer.json and from the GGUF, on the hard cases, extra strings (newline
 * runs, control bytes, invalid UTF-8), decode cases, special-token handling, pipeline variants
 * (Llama 3, Qwen2, GPT-2, generic regex, Split behaviours, added-token flags) and the data
 * files; save/reload through tokenizer.json and GGUF; malformed inputs; the hand-written
 * regex matchers against PCRE2. */
#include "tt.h"
#include "tt_tok.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tok/tok_internal.h"
#include "taper/gguf.h"
#include "taper/tokenizer.h"
#include "taper/util.h"

/* ---- helpers ---- */


static char *fixture(const char *rel) { return tt_path(tt_fixtures_dir(), rel); }

static cJSON *load_expected(void) { return tt_fixture_json("tok/expected.json"); }

static tp_tokenizer *load_json_fixture(void) {
    char *p = fixture("tok/smollm2/tokenizer.json");
    tp_tokenizer *t = NULL;
    tp_status rc = tp_tok_load_json(p, &t);
    TT_CHECK(rc == TP_OK, "tp_tok_load_json(%s): %s", p, tp_errmsg());
    free(p);
    return t;
}




static char *hard_cases_path(void) { return tt_path(tt_fixtures_dir(), "../data/tok_hard_cases.txt"); }

static int32_t *enc(const tp_tokenizer *t, const char *s, size_t n, int add_special, size_t *nid) {
    int32_t *ids = NULL;
    tp_status rc = tp_tok_encode(t, s, n, add_special, &ids, nid);
    TT_CHECK(rc == TP_OK, "tp_tok_encode: %s", tp_errmsg());
    if (rc) *nid = 0;
    return ids;
}




static char *hexstr(uint64_t h) {
    static char b[4][17];
    static int k;
    k = (k + 1) & 3;
    snprintf(b[k], sizeof b[k], "%016llx", (unsigned long long)h);
    return b[k];
}

static const cJSON *jget(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

/* How many cases tests/ref/tok_ref.py writes into tok/expected.json: each loop below asserts it
 * compared exactly these, so a truncated or regenerated-short fixture fails instead of passing
 * vacuously. */
#define TOK_HARD_LINES 110 /* lines of tests/data/tok_hard_cases.txt (hard_cases.lines, lines_fnv) */
#define TOK_EXTRAS 46      /* EXTRAS (extras, extras_fnv) */
#define TOK_DECODE 16      /* 8 dec_cases x skip 0/1 (decode) */
#define TOK_SPECIAL 4      /* SPECIAL_TEXTS (special, variants.*.special) */
#define TOK_VARIANTS 7     /* variants() */
/* DATA_FILES and their line counts (chunks of CHUNK = 64 lines each) */
static const struct { const char *path; int n_lines; } tok_data_files[] = {
    {"wikitext2/wiki.test.raw", 4358},
    {"wikitext2/wiki.test.tokens", 4358},
    {"wikitext2/wiki.valid.tokens", 3760},
    {"tinyshakespeare/input.txt", 40000},
};
#define TOK_DATA_FILES (int)(sizeof tok_data_files / sizeof tok_data_files[0])

/* Compares a tokenizer with the expected ids of the hard cases (per line and whole file) and
 * checks decode(encode(line)) == line. Returns the number of tokens compared. */
static size_t check_hard_cases(const tp_tokenizer *t, const cJSON *exp, const char *label) {
    const cJSON *hc = jget(exp, "hard_cases"), *lines = jget(hc, "lines");
    char *path = hard_cases_path();
    tt_lines tl;
    int ok = tt_read_lines(path, &tl, (size_t)-1);
    TT_CHECK(ok, "cannot read %s", path);
    free(path);
    if (!ok) return 0;
    TT_CHECK(tl.n == (size_t)cJSON_GetArraySize(lines), "%s: %zu hard-case lines, expected.json has %d", label, tl.n,
             cJSON_GetArraySize(lines));
    size_t tokens = 0, bad = 0, compared = 0;
    for (size_t i = 0; i < tl.n && i < (size_t)cJSON_GetArraySize(lines); i++) {
        compared++;
        size_t n;
        int32_t *ids = enc(t, tl.line[i], tl.line_len[i], 0, &n);
        const cJSON *want = cJSON_GetArrayItem(lines, (int)i);
        if (!TT_CHECK(tt_ids_equal(ids, n, want), "%s: hard case line %zu \"%.50s\" differs from HF", label, i, tl.line[i])) {
            if (bad++ < 3) {
                tt_print_ids("taper", ids, n);
                char *w = cJSON_PrintUnformatted(want);
                fprintf(stderr, "      HF: %.300s\n", w);
                free(w);
            }
        }
        tokens += n;
        char *d;
        size_t dl;
        tp_status rc = tp_tok_decode(t, ids, n, 0, &d, &dl);
        TT_CHECK(rc == TP_OK, "decode: %s", tp_errmsg());
        char key[24];
        snprintf(key, sizeof key, "%zu", i);
        const cJSON *alt = jget(jget(hc, "decode_differs"), key);
        if (!rc && alt) {
            size_t al;
            unsigned char *a = tt_unhex(alt->valuestring, &al);
            TT_CHECK(dl == al && memcmp(d, a, al) == 0, "%s: decode of line %zu differs from HF's", label, i);
            free(a);
        } else if (!rc)
            TT_CHECK(dl == tl.line_len[i] && memcmp(d, tl.line[i], dl) == 0, "%s: decode(encode(line %zu)) != line",
                     label, i);
        free(d);
        free(ids);
    }
    TT_CHECK(compared == TOK_HARD_LINES, "%s: compared %zu hard-case lines (expected %d)", label, compared,
             TOK_HARD_LINES);
    size_t n;
    int32_t *ids = enc(t, tl.data, tl.len, 0, &n);
    TT_CHECK(tt_ids_equal(ids, n, jget(hc, "whole")), "%s: hard cases as one string differ from HF (%zu tokens)", label, n);
    free(ids);
    tt_free_lines(&tl);
    return tokens + n;
}

static size_t check_extras(const tp_tokenizer *t, const cJSON *exp, const char *label) {
    const cJSON *e;
    size_t k = 0, tokens = 0;
    cJSON_ArrayForEach(e, jget(exp, "extras")) {
        size_t bl, n;
        unsigned char *b = tt_unhex(jget(e, "hex")->valuestring, &bl);
        int32_t *ids = enc(t, (const char *)b, bl, 0, &n);
        if (!TT_CHECK(tt_ids_equal(ids, n, jget(e, "ids")), "%s: extra case %zu (hex %.40s) differs from HF", label, k,
                      jget(e, "hex")->valuestring))
            tt_print_ids("taper", ids, n);
        tokens += n;
        for (int skip = 0; skip < 2; skip++) {
            char *d;
            size_t dl, wl;
            tp_status rc = tp_tok_decode(t, ids, n, skip, &d, &dl);
            unsigned char *w = tt_unhex(jget(e, skip ? "decode_skip_hex" : "decode_hex")->valuestring, &wl);
            TT_CHECK(rc == TP_OK && dl == wl && memcmp(d, w, wl) == 0 && d[dl] == 0,
                     "%s: extra case %zu: decode (skip_special=%d) differs from HF", label, k, skip);
            free(d);
            free(w);
        }
        free(ids);
        free(b);
        k++;
    }
    TT_CHECK(k == TOK_EXTRAS, "%s: compared %zu extra cases (expected %d)", label, k, TOK_EXTRAS);
    return tokens;
}

/* ---- SmolLM2 from tokenizer.json ---- */

TT_TEST(tok_json_smollm2_hard_cases) {
    cJSON *exp = load_expected();
    tp_tokenizer *t = load_json_fixture();
    if (!exp || !t) { cJSON_Delete(exp); tp_tok_free(t); return; }
    TT_CHECK(tp_tok_vocab_size(t) == 49152, "vocab size %d", tp_tok_vocab_size(t));
    TT_CHECK(tp_tok_bos(t) == 1 && tp_tok_eos(t) == 2, "bos %d eos %d", tp_tok_bos(t), tp_tok_eos(t));
    TT_CHECK(!tp_tok_adds_bos(t), "SmolLM2 does not add BOS");
    TT_CHECK(tp_tok_unk(t) == 0 && tp_tok_pad(t) == 2, "unk %d pad %d", tp_tok_unk(t), tp_tok_pad(t));
    TT_CHECK(strcmp(tp_tok_pre_name(t), "smollm") == 0, "pre name %s", tp_tok_pre_name(t));
    TT_CHECK(tp_tok_piece(t, 1) && strcmp(tp_tok_piece(t, 1), "<|im_start|>") == 0, "piece 1");
    TT_CHECK(tp_tok_piece(t, 49152) == NULL && tp_tok_piece(t, -1) == NULL, "piece out of range");
    TT_CHECK(tp_tok_find(t, "<|im_end|>") == 2 && tp_tok_find(t, "Ġthe") >= 0 && tp_tok_find(t, "no such") < 0, "find");
    for (int i = 0; i < 17; i++) TT_CHECK(tp_tok_is_special(t, i), "id %d is special", i);
    TT_CHECK(!tp_tok_is_special(t, 17) && !tp_tok_is_special(t, 49152), "17 is not special");
    size_t n_lines = (size_t)cJSON_GetArraySize(jget(jget(exp, "hard_cases"), "lines"));
    size_t tokens = check_hard_cases(t, exp, "json");
    tt_note("json: %zu hard-case lines + whole file, %zu tokens compared with HF tokenizers %s", n_lines, tokens,
            jget(jget(exp, "versions"), "tokenizers")->valuestring);
    tp_tok_free(t);
    cJSON_Delete(exp);
}

TT_TEST(tok_json_smollm2_extras_and_invalid_utf8) {
    cJSON *exp = load_expected();
    tp_tokenizer *t = load_json_fixture();
    if (!exp || !t) { cJSON_Delete(exp); tp_tok_free(t); return; }
    size_t tokens = check_extras(t, exp, "json");
    tt_note("%d extra strings (newlines, control and absent bytes, invalid UTF-8), %zu tokens",
            cJSON_GetArraySize(jget(exp, "extras")), tokens);
    tp_tok_free(t);
    cJSON_Delete(exp);
}

TT_TEST(tok_decode_cases) {
    cJSON *exp = load_expected();
    tp_tokenizer *t = load_json_fixture();
    if (!exp || !t) { cJSON_Delete(exp); tp_tok_free(t); return; }
    const cJSON *c;
    int k = 0;
    cJSON_ArrayForEach(c, jget(exp, "decode")) {
        const cJSON *arr = jget(c, "ids");
        size_t n = (size_t)cJSON_GetArraySize(arr), wl, dl;
        int32_t *ids = malloc((n + 1) * sizeof *ids);
        for (size_t i = 0; i < n; i++) ids[i] = (int32_t)cJSON_GetArrayItem(arr, (int)i)->valuedouble;
        unsigned char *w = tt_unhex(jget(c, "hex")->valuestring, &wl);
        char *d;
        tp_status rc = tp_tok_decode(t, ids, n, (int)jget(c, "skip")->valuedouble, &d, &dl);
        TT_CHECK(rc == TP_OK && dl == wl && memcmp(d, w, wl) == 0, "decode case %d differs from HF", k);
        if (!rc) free(d);
        free(w);
        free(ids);
        k++;
    }
    TT_CHECK(k == TOK_DECODE, "compared %d decode cases (expected %d)", k, TOK_DECODE);
    int32_t bad[] = {5, 49152};
    char *d = NULL;
    TT_CHECK(tp_tok_decode(t, bad, 2, 0, &d, NULL) == TP_ERR_ARG && d == NULL, "out-of-range id refused");
    bad[1] = -3;
    TT_CHECK(tp_tok_decode(t, bad, 2, 0, &d, NULL) == TP_ERR_ARG, "negative id refused");
    tp_tok_free(t);
    cJSON_Delete(exp);
}

TT_TEST(tok_special_tokens_bos) {
    cJSON *exp = load_expected();
    tp_tokenizer *t = load_json_fixture();
    if (!exp || !t) { cJSON_Delete(exp); tp_tok_free(t); return; }
    const cJSON *s;
    int k = 0;
    cJSON_ArrayForEach(s, jget(exp, "special")) {
        const char *text = jget(s, "text")->valuestring;
        size_t n;
        int32_t *ids = enc(t, text, strlen(text), 1, &n);
        TT_CHECK(tt_ids_equal(ids, n, jget(s, "ids")), "add_special on \"%s\" differs from HF", text);
        free(ids);
        k++;
    }
    TT_CHECK(k == TOK_SPECIAL, "compared %d special-token cases (expected %d)", k, TOK_SPECIAL);
    tp_tok_free(t);
    cJSON_Delete(exp);
}

/* ---- pipeline variants: the fixture with a patched pipeline, as tok_ref.py patches it ---- */

static char *write_variant(const cJSON *base, const char *name, const cJSON *patch) {
    cJSON *d = cJSON_Duplicate(base, 1);
    const cJSON *p;
    cJSON_ArrayForEach(p, patch) {
        const char *k = p->string;
        size_t kl = strlen(k);
        if (strncmp(k, "model.", 6) == 0)
            cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(d, "model"), k + 6, cJSON_Duplicate(p, 1));
        else if (kl && k[kl - 1] == '+') {
            char key[64];
            snprintf(key, sizeof key, "%.*s", (int)(kl - 1), k);
            cJSON *arr = cJSON_GetObjectItemCaseSensitive(d, key);
            const cJSON *x;
            cJSON_ArrayForEach(x, p) cJSON_AddItemToArray(arr, cJSON_Duplicate(x, 1));
        } else
            cJSON_ReplaceItemInObjectCaseSensitive(d, k, cJSON_Duplicate(p, 1));
    }
    char *dir = tt_path(tt_tmp_dir(), name);
    mkdir(dir, 0777);
    char *path = tt_path(dir, "tokenizer.json");
    char *text = cJSON_PrintUnformatted(d);
    int ok = text && tt_write_text(path, text, strlen(text));
    TT_CHECK(ok, "cannot write %s", path);
    free(text);
    free(dir);
    cJSON_Delete(d);
    return path;
}

/* Hashes of the hard cases (per line, whole), extras and add_special against one variant. */
static size_t check_variant(const tp_tokenizer *t, const cJSON *v, const char *name) {
    char *path = hard_cases_path();
    tt_lines tl;
    int ok = tt_read_lines(path, &tl, (size_t)-1);
    free(path);
    if (!TT_CHECK(ok, "hard cases missing")) return 0;
    const cJSON *fn = jget(v, "lines_fnv");
    size_t tokens = 0, bad = 0;
    for (size_t i = 0; i < tl.n; i++) {
        size_t n;
        int32_t *ids = enc(t, tl.line[i], tl.line_len[i], 0, &n);
        const cJSON *want = cJSON_GetArrayItem(fn, (int)i);
        if (!TT_CHECK(want && strcmp(hexstr(tt_fnv_ids(ids, n, TT_FNV0)), want->valuestring) == 0,
                      "variant %s: hard case line %zu \"%.50s\" differs from HF", name, i, tl.line[i]) &&
            bad++ < 3)
            tt_print_ids("taper", ids, n);
        tokens += n;
        free(ids);
    }
    TT_CHECK(tl.n == TOK_HARD_LINES && cJSON_GetArraySize(fn) == TOK_HARD_LINES,
             "variant %s: compared %zu hard-case lines, lines_fnv has %d (expected %d)", name, tl.n,
             cJSON_GetArraySize(fn), TOK_HARD_LINES);
    TT_CHECK(tokens == (size_t)jget(v, "n_tokens")->valuedouble, "variant %s: %zu tokens, HF %d", name, tokens,
             (int)jget(v, "n_tokens")->valuedouble);
    size_t n;
    int32_t *ids = enc(t, tl.data, tl.len, 0, &n);
    TT_CHECK(strcmp(hexstr(tt_fnv_ids(ids, n, TT_FNV0)), jget(v, "whole_fnv")->valuestring) == 0,
             "variant %s: whole hard-case file differs", name);
    free(ids);
    tt_free_lines(&tl);
    cJSON *exp = load_expected();
    const cJSON *e;
    int k = 0;
    cJSON_ArrayForEach(e, jget(exp, "extras")) {
        size_t bl;
        unsigned char *b = tt_unhex(jget(e, "hex")->valuestring, &bl);
        ids = enc(t, (const char *)b, bl, 0, &n);
        const cJSON *want = cJSON_GetArrayItem(jget(v, "extras_fnv"), k);
        TT_CHECK(want && strcmp(hexstr(tt_fnv_ids(ids, n, TT_FNV0)), want->valuestring) == 0,
                 "variant %s: extra case %d differs from HF", name, k);
        free(ids);
        free(b);
        k++;
    }
    cJSON_Delete(exp);
    TT_CHECK(k == TOK_EXTRAS && cJSON_GetArraySize(jget(v, "extras_fnv")) == TOK_EXTRAS,
             "variant %s: compared %d extra cases, extras_fnv has %d (expected %d)", name, k,
             cJSON_GetArraySize(jget(v, "extras_fnv")), TOK_EXTRAS);
    k = 0;
    cJSON_ArrayForEach(e, jget(v, "special")) {
        const char *text = jget(e, "text")->valuestring;
        ids = enc(t, text, strlen(text), 1, &n);
        TT_CHECK(tt_ids_equal(ids, n, jget(e, "ids")), "variant %s: add_special on \"%s\" differs from HF", name, text);
        free(ids);
        k++;
    }
    TT_CHECK(k == TOK_SPECIAL, "variant %s: compared %d special-token cases (expected %d)", name, k, TOK_SPECIAL);
    return tokens;
}

TT_TEST(tok_variants_llama3_qwen2_gpt2_split_added) {
    cJSON *exp = load_expected();
    char *bp = fixture("tok/smollm2/tokenizer.json");
    cJSON *base = tt_read_json(bp);
    TT_CHECK(base != NULL, "cannot parse %s", bp);
    free(bp);
    const cJSON *v;
    int n_variants = 0;
    cJSON_ArrayForEach(v, jget(base ? exp : NULL, "variants")) {
        n_variants++;
        char *path = write_variant(base, v->string, jget(v, "patch"));
        tp_tokenizer *t = NULL;
        tp_status rc = tp_tok_load_json(path, &t);
        TT_CHECK(rc == TP_OK, "variant %s: %s", v->string, tp_errmsg());
        if (!rc) {
            size_t tokens = check_variant(t, v, v->string);
            tt_note("variant %-18s pre=%-9s %zu tokens compared", v->string, tp_tok_pre_name(t), tokens);
            if (strcmp(v->string, "llama3") == 0)
                TT_CHECK(strcmp(tp_tok_pre_name(t), "llama-bpe") == 0 && tp_tok_adds_bos(t) && tp_tok_bos(t) == 1,
                         "llama3 variant: pre %s adds_bos %d", tp_tok_pre_name(t), tp_tok_adds_bos(t));
            if (strcmp(v->string, "qwen2") == 0) TT_CHECK(strcmp(tp_tok_pre_name(t), "qwen2") == 0, "qwen2 name");
            if (strcmp(v->string, "gpt2") == 0) TT_CHECK(strcmp(tp_tok_pre_name(t), "gpt2") == 0, "gpt2 name");
        }
        tp_tok_free(t);
        free(path);
    }
    TT_CHECK(n_variants == TOK_VARIANTS, "compared %d pipeline variants (expected %d)", n_variants, TOK_VARIANTS);
    cJSON_Delete(base);
    cJSON_Delete(exp);
}

/* ---- data files ---- */

static void check_data_files(const tp_tokenizer *t, const char *label, int full) {
    cJSON *exp = load_expected();
    if (!exp) return;
    const cJSON *d;
    size_t total_lines = 0, total_tokens = 0, files = 0, missing = 0;
    int k = 0;
    cJSON_ArrayForEach(d, jget(exp, "data")) {
        const char *rel = jget(d, "path")->valuestring;
        /* the fixture must hold every data file, in order, with its full line count (tok_ref.py
         * leaves out a file it could not find) */
        TT_CHECK(k < TOK_DATA_FILES && !strcmp(rel, tok_data_files[k].path) &&
                     (int)jget(d, "n_lines")->valuedouble == tok_data_files[k].n_lines,
                 "expected.json data[%d] is %s with %d lines (expected %s, %d lines)", k, rel,
                 (int)jget(d, "n_lines")->valuedouble, k < TOK_DATA_FILES ? tok_data_files[k].path : "nothing",
                 k < TOK_DATA_FILES ? tok_data_files[k].n_lines : 0);
        k++;
        char *path = tt_path(tt_data_dir(), rel);
        tt_lines tl;
        if (!tt_read_lines(path, &tl, (size_t)-1)) {
            tt_note("%s not found", path);
            missing++;
            free(path);
            continue;
        }
        free(path);
        files++;
        int chunk = (int)jget(d, "chunk")->valuedouble;
        TT_CHECK(tl.n == (size_t)jget(d, "n_lines")->valuedouble, "%s: %zu lines, HF %d", rel, tl.n,
                 (int)jget(d, "n_lines")->valuedouble);
        size_t tokens = 0, bad_rt = 0;
        if (full) {
            uint64_t h = TT_FNV0;
            size_t ct = 0;
            int chunks = 0;
            for (size_t i = 0; i < tl.n; i++) {
                size_t n;
                int32_t *ids = enc(t, tl.line[i], tl.line_len[i], 0, &n);
                int32_t sep = -1;
                h = tt_fnv_ids(&sep, 1, tt_fnv_ids(ids, n, h));
                ct += n;
                char *dd;
                size_t dl;
                if (tp_tok_decode(t, ids, n, 0, &dd, &dl) == TP_OK) {
                    if (dl != tl.line_len[i] || memcmp(dd, tl.line[i], dl) != 0) bad_rt++;
                    free(dd);
                } else bad_rt++;
                free(ids);
                if ((i + 1) % (size_t)chunk == 0 || i + 1 == tl.n) {
                    int c = (int)(i / (size_t)chunk);
                    const cJSON *w = cJSON_GetArrayItem(jget(d, "chunk_fnv"), c);
                    TT_CHECK(w && strcmp(hexstr(h), w->valuestring) == 0 &&
                                 ct == (size_t)cJSON_GetArrayItem(jget(d, "chunk_tokens"), c)->valuedouble,
                             "%s (%s): lines %d..%zu differ from HF", rel, label, c * chunk, i);
                    tokens += ct;
                    h = TT_FNV0;
                    ct = 0;
                    chunks++;
                }
            }
            int want_chunks = (int)((tl.n + (size_t)chunk - 1) / (size_t)chunk);
            TT_CHECK(chunks == want_chunks && cJSON_GetArraySize(jget(d, "chunk_fnv")) == want_chunks,
                     "%s (%s): compared %d chunks of %d lines, chunk_fnv has %d (expected %d)", rel, label, chunks,
                     chunk, cJSON_GetArraySize(jget(d, "chunk_fnv")), want_chunks);
            TT_CHECK(bad_rt == 0, "%s: decode(encode(line)) != line on %zu lines", rel, bad_rt);
            TT_CHECK(tokens == (size_t)jget(d, "n_tokens")->valuedouble, "%s: %zu tokens, HF %d", rel, tokens,
                     (int)jget(d, "n_tokens")->valuedouble);
        }
        double t0 = tp_time_s();
        size_t n;
        int32_t *ids = enc(t, tl.data, tl.len, 0, &n);
        double dt = tp_time_s() - t0;
        TT_CHECK(n == (size_t)jget(d, "whole_n")->valuedouble &&
                     strcmp(hexstr(tt_fnv_ids(ids, n, TT_FNV0)), jget(d, "whole_fnv")->valuestring) == 0,
                 "%s (%s): whole file as one string differs from HF (%zu tokens, HF %d)", rel, label, n,
                 (int)jget(d, "whole_n")->valuedouble);
        free(ids);
        if (full)
            tt_note("%s %-28s %6zu lines %7zu tokens per line, %7zu whole (%.2f MB/s)", label, rel, tl.n, tokens, n,
                    (double)tl.len / 1e6 / (dt > 0 ? dt : 1e-9));
        else
            tt_note("%s %-28s %7zu tokens as one string (%.2f MB/s)", label, rel, n, (double)tl.len / 1e6 / (dt > 0 ? dt : 1e-9));
        total_lines += tl.n;
        total_tokens += tokens + n;
        tt_free_lines(&tl);
    }
    TT_CHECK(k == TOK_DATA_FILES, "%s: expected.json lists %d data files (expected %d)", label, k, TOK_DATA_FILES);
    if (files) tt_note("%s: %zu files, %zu lines, %zu tokens compared with HF", label, files, total_lines, total_tokens);
    if (missing) tt_skip("%zu of the data files not found under %s (set TAPER_DATA)", missing, tt_data_dir());
    cJSON_Delete(exp);
}

TT_TEST(tok_json_data_files) {
    tp_tokenizer *t = load_json_fixture();
    if (t) check_data_files(t, "json", 1);
    tp_tok_free(t);
}

/* ---- save and reload ---- */

/* With TAPER_TOK_SAVED_DIR set, also writes the folder there (under `sub`) for
 * tests/ref/tok_ref.py --check-saved, which loads it with HF tokenizers and transformers. */
static void save_for_check_saved(const tp_tokenizer *t, const char *sub) {
    const char *extra = getenv("TAPER_TOK_SAVED_DIR");
    if (!extra || !*extra) return;
    mkdir(extra, 0777);
    char *dir = tt_path(extra, sub);
    TT_CHECK(tp_tok_save_hf(t, dir) == TP_OK, "save to %s: %s", dir, tp_errmsg());
    tt_note("saved %s for tok_ref.py --check-saved", dir);
    free(dir);
}

/* Saves as an HF folder, reloads the tokenizer.json, compares with HF. */
static void check_save_reload(const tp_tokenizer *t, const cJSON *exp, const char *sub) {
    char *dir = tt_path(tt_tmp_dir(), sub);
    tp_status rc = tp_tok_save_hf(t, dir);
    TT_CHECK(rc == TP_OK, "tp_tok_save_hf: %s", tp_errmsg());
    char *json = tt_path(dir, "tokenizer.json");
    tp_tokenizer *r = NULL;
    rc = tp_tok_load_json(json, &r);
    TT_CHECK(rc == TP_OK, "reload %s: %s", json, tp_errmsg());
    if (!rc) {
        TT_CHECK(tp_tok_bos(r) == tp_tok_bos(t) && tp_tok_eos(r) == tp_tok_eos(t) &&
                     tp_tok_adds_bos(r) == tp_tok_adds_bos(t) && tp_tok_vocab_size(r) == tp_tok_vocab_size(t),
                 "%s: reloaded bos/eos/add_bos/size differ", sub);
        TT_CHECK(strcmp(tp_tok_pre_name(r), tp_tok_pre_name(t)) == 0, "reloaded pre %s", tp_tok_pre_name(r));
        for (int i = 0; i < tp_tok_vocab_size(t); i++)
            if (!TT_CHECK(tp_tok_is_special(r, i) == tp_tok_is_special(t, i) &&
                              strcmp(tp_tok_piece(r, i), tp_tok_piece(t, i)) == 0,
                          "%s: token %d differs after reload", sub, i))
                break;
        size_t tokens = check_hard_cases(r, exp, sub) + check_extras(r, exp, sub);
        tt_note("%s: tokenizer.json written by taper and reloaded: %zu tokens compared", sub, tokens);
    }
    tp_tok_free(r);
    free(json);
    free(dir);
}

/* ---- GGUF ---- */

static tp_tokenizer *load_gguf_model(tp_gguf **g) {
    const char *mp = tt_model_path();
    *g = NULL;
    if (!mp) { tt_skip("model GGUF not found (make deps fetches it; or set TAPER_MODEL)"); return NULL; }
    tp_status rc = tp_gguf_open(mp, g);
    TT_CHECK(rc == TP_OK, "tp_gguf_open(%s): %s", mp, tp_errmsg());
    if (rc) return NULL;
    tp_tokenizer *t = NULL;
    rc = tp_tok_load_gguf(*g, &t);
    TT_CHECK(rc == TP_OK, "tp_tok_load_gguf: %s", tp_errmsg());
    return t;
}

TT_TEST(tok_gguf_smollm2) {
    tp_gguf *g;
    tp_tokenizer *t = load_gguf_model(&g);
    cJSON *exp = t ? load_expected() : NULL;
    if (t && exp) {
        const cJSON *gg = jget(exp, "gguf");
        TT_CHECK(strcmp(tp_tok_pre_name(t), "smollm") == 0, "pre %s", tp_tok_pre_name(t));
        TT_CHECK(tp_tok_vocab_size(t) == (int)jget(gg, "n_tokens")->valuedouble, "vocab %d", tp_tok_vocab_size(t));
        TT_CHECK(tp_tok_bos(t) == (int)jget(gg, "bos")->valuedouble && tp_tok_eos(t) == (int)jget(gg, "eos")->valuedouble,
                 "bos/eos %d/%d", tp_tok_bos(t), tp_tok_eos(t));
        TT_CHECK(tp_tok_adds_bos(t) == cJSON_IsTrue(jget(gg, "add_bos")), "add_bos");
        for (int i = 0; i < 17; i++) TT_CHECK(tp_tok_is_special(t, i), "gguf: id %d special", i);
        size_t tokens = check_hard_cases(t, exp, "gguf") + check_extras(t, exp, "gguf");
        const cJSON *s;
        int k = 0;
        cJSON_ArrayForEach(s, jget(exp, "special")) {
            const char *text = jget(s, "text")->valuestring;
            size_t n;
            int32_t *ids = enc(t, text, strlen(text), 1, &n);
            TT_CHECK(tt_ids_equal(ids, n, jget(s, "ids")), "gguf: add_special on \"%s\" differs", text);
            free(ids);
            k++;
        }
        TT_CHECK(k == TOK_SPECIAL, "gguf: compared %d special-token cases (expected %d)", k, TOK_SPECIAL);
        tt_note("gguf: hard cases + extras, %zu tokens compared", tokens);
        check_data_files(t, "gguf", 0);
        check_save_reload(t, exp, "saved_gguf");
        save_for_check_saved(t, "gguf");
    }
    cJSON_Delete(exp);
    tp_tok_free(t);
    tp_gguf_close(g);
}

TT_TEST(tok_save_hf_roundtrip) {
    cJSON *exp = load_expected();
    tp_tokenizer *t = load_json_fixture();
    if (!exp || !t) { cJSON_Delete(exp); tp_tok_free(t); return; }
    check_save_reload(t, exp, "saved_json");
    save_for_check_saved(t, "json");
    char *dir = tt_path(tt_tmp_dir(), "saved_json");
    static const char *files[] = {"tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; i < 2; i++) {
        char *p = tt_path(dir, files[i]);
        cJSON *j = tt_read_json(p);
        TT_CHECK(j != NULL, "%s missing or not JSON", p);
        if (j) TT_CHECK(cJSON_IsString(jget(j, "eos_token")) && strcmp(jget(j, "eos_token")->valuestring, "<|im_end|>") == 0,
                        "%s: eos_token", files[i]);
        cJSON_Delete(j);
        free(p);
    }
    free(dir);
    tp_tok_free(t);
    cJSON_Delete(exp);
}

static tp_tokenizer *gguf_roundtrip(const tp_tokenizer *t, const char *name, tp_gguf **g) {
    tp_gguf_writer *w = NULL;
    *g = NULL;
    tp_status rc = tp_gguf_writer_new(&w);
    TT_CHECK(rc == TP_OK, "writer: %s", tp_errmsg());
    if (rc) return NULL;
    char *path = tt_path(tt_tmp_dir(), name);
    tp_tokenizer *r = NULL;
    rc = tp_tok_to_gguf(t, w);
    TT_CHECK(rc == TP_OK, "tp_tok_to_gguf: %s", tp_errmsg());
    if (!rc) rc = tp_gguf_write(w, path);
    TT_CHECK(rc == TP_OK, "tp_gguf_write: %s", tp_errmsg());
    if (!rc) rc = tp_gguf_open(path, g);
    TT_CHECK(rc == TP_OK, "tp_gguf_open: %s", tp_errmsg());
    if (!rc) rc = tp_tok_load_gguf(*g, &r);
    TT_CHECK(rc == TP_OK, "tp_tok_load_gguf (written): %s", tp_errmsg());
    tp_gguf_writer_free(w);
    free(path);
    return r;
}

TT_TEST(tok_to_gguf_roundtrip) {
    cJSON *exp = load_expected();
    tp_tokenizer *t = load_json_fixture();
    if (!exp || !t) { cJSON_Delete(exp); tp_tok_free(t); return; }
    tp_gguf *g;
    tp_tokenizer *r = gguf_roundtrip(t, "tok.gguf", &g);
    if (r) {
        TT_CHECK(strcmp(tp_tok_pre_name(r), "smollm") == 0 && tp_tok_bos(r) == 1 && tp_tok_eos(r) == 2 &&
                     !tp_tok_adds_bos(r),
                 "written GGUF metadata: pre %s bos %d eos %d", tp_tok_pre_name(r), tp_tok_bos(r), tp_tok_eos(r));
        size_t tokens = check_hard_cases(r, exp, "to_gguf") + check_extras(r, exp, "to_gguf");
        tt_note("GGUF written by taper and reloaded: %zu tokens compared", tokens);
    }
    tp_tok_free(r);
    tp_gguf_close(g);
    /* the llama3 / qwen2 / gpt2 variants through GGUF exercise llama.cpp's pre names */
    char *bp = fixture("tok/smollm2/tokenizer.json");
    cJSON *base = tt_read_json(bp);
    free(bp);
    static const char *names[] = {"llama3", "qwen2", "gpt2"};
    for (int i = 0; i < 3 && base; i++) {
        const cJSON *v = jget(jget(exp, "variants"), names[i]);
        if (!TT_CHECK(v != NULL, "variant %s missing from expected.json", names[i])) continue;
        char *path = write_variant(base, names[i], jget(v, "patch"));
        tp_tokenizer *vt = NULL;
        if (TT_CHECK(tp_tok_load_json(path, &vt) == TP_OK, "%s: %s", names[i], tp_errmsg())) {
            char gname[64];
            snprintf(gname, sizeof gname, "%s.gguf", names[i]);
            r = gguf_roundtrip(vt, gname, &g);
            if (r) {
                size_t tokens = check_variant(r, v, names[i]);
                tt_note("variant %s through GGUF (pre=%s): %zu tokens compared", names[i], tp_tok_pre_name(r), tokens);
            }
            tp_tok_free(r);
            tp_gguf_close(g);
        }
        tp_tok_free(vt);
        free(path);
    }
    cJSON_Delete(base);
    tp_tok_free(t);
    cJSON_Delete(exp);
}

/* ---- malformed input ---- */

#define GOOD_PRE "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"
#define VOCAB "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"Ġ\":3}"

TT_TEST(tok_malformed_json) {
    static const struct { const char *name, *text; tp_status want; const char *needle; } cases[] = {
        {"ok.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"a b\"]}," GOOD_PRE "}", TP_OK, NULL},
        {"notjson.json", "{\"model\": [1, 2,", TP_ERR_FORMAT, "not valid JSON"},
        {"empty.json", "", TP_ERR_FORMAT, "not valid JSON"},
        {"array.json", "[1,2,3]", TP_ERR_FORMAT, "not a JSON object"},
        {"nomodel.json", "{" GOOD_PRE "}", TP_ERR_FORMAT, "missing \"model\""},
        {"novocab.json", "{\"model\":{\"type\":\"BPE\",\"merges\":[]}," GOOD_PRE "}", TP_ERR_FORMAT, "model.vocab"},
        {"merge_unknown.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"a c\"]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "not in the vocabulary"},
        {"merge_result_unknown.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"b a\"]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "produces a token"},
        {"merge_shape.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"a b c\"]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "merges[0]"},
        {"merge_type.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[[\"a\"]]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "merges[0]"},
        {"dup_id.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "given to both"},
        {"id_range.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":7},\"merges\":[]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "out of range"},
        {"id_negative.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1,\"b\":0},\"merges\":[]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "out of range"},
        {"id_float.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0.5,\"b\":0},\"merges\":[]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "not an integer"},
        {"id_string.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"0\"},\"merges\":[]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "not an integer"},
        {"pre_unknown.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Whitespace\"}}",
         TP_ERR_UNSUPPORTED, "Whitespace"},
        {"pre_two_bytelevel.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},\"pre_tokenizer\":{\"type\":"
                                   "\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\"},{\"type\":\"ByteLevel\"}]}}",
         TP_ERR_UNSUPPORTED, "ByteLevel"},
        {"pre_notype.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},\"pre_tokenizer\":{}}",
         TP_ERR_FORMAT, "type"},
        {"pre_metaspace_bytelevel.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},\"pre_tokenizer\":"
                                         "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Metaspace\"},"
                                         "{\"type\":\"ByteLevel\"}]}}", TP_ERR_FORMAT, "replacement"},
        {"pre_bad_regex.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},\"pre_tokenizer\":{\"type\":"
                               "\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},"
                               "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\"}]}}",
         TP_ERR_UNSUPPORTED, "regex"},
        {"pre_bad_behavior.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},\"pre_tokenizer\":{\"type\":"
                                  "\"Split\",\"pattern\":{\"String\":\"a\"},\"behavior\":\"Sideways\"}}",
         TP_ERR_FORMAT, "behavior"},
        {"pre_bool.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},\"pre_tokenizer\":{\"type\":"
                          "\"ByteLevel\",\"use_regex\":\"yes\"}}", TP_ERR_FORMAT, "use_regex"},
        {"normalizer.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},\"normalizer\":{\"type\":"
                            "\"Precompiled\"}," GOOD_PRE "}", TP_ERR_UNSUPPORTED, "Precompiled"},
        {"wordpiece.json", "{\"model\":{\"type\":\"WordPiece\"," VOCAB "}," GOOD_PRE "}", TP_ERR_UNSUPPORTED, "WordPiece"},
        {"byte_fallback.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[],\"byte_fallback\":true}," GOOD_PRE "}",
         TP_ERR_UNSUPPORTED, "byte_fallback"},
        {"dropout.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[],\"dropout\":0.1}," GOOD_PRE "}",
         TP_ERR_UNSUPPORTED, "dropout"},
        {"unk_missing.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[],\"unk_token\":\"<unk>\"}," GOOD_PRE "}",
         TP_ERR_FORMAT, "unk_token"},
        {"decoder.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]}," GOOD_PRE ",\"decoder\":{\"type\":"
                         "\"WordPiece\"}}", TP_ERR_UNSUPPORTED, "decoder"},
        {"post.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]}," GOOD_PRE ",\"post_processor\":{\"type\":"
                      "\"Foo\"}}", TP_ERR_UNSUPPORTED, "Foo"},
        {"post_template.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]}," GOOD_PRE ",\"post_processor\":"
                               "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}},"
                               "{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{}}}", TP_ERR_FORMAT, "<s>"},
        {"post_template_range.json", "{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]}," GOOD_PRE ",\"post_processor\":"
                                     "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}},"
                                     "{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{\"<s>\":{\"ids\":[99]}}}}",
         TP_ERR_FORMAT, "out of range"},
        {"added_conflict.json", "{\"added_tokens\":[{\"id\":1,\"content\":\"<s>\",\"special\":true}],\"model\":{\"type\":"
                                "\"BPE\"," VOCAB ",\"merges\":[]}," GOOD_PRE "}", TP_ERR_FORMAT, "gives to"},
        {"added_id_mismatch.json", "{\"added_tokens\":[{\"id\":5,\"content\":\"a\"}],\"model\":{\"type\":\"BPE\"," VOCAB
                                   ",\"merges\":[]}," GOOD_PRE "}", TP_ERR_FORMAT, "vocabulary gives it"},
        {"added_noid.json", "{\"added_tokens\":[{\"content\":\"x\"}],\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]},"
                            GOOD_PRE "}", TP_ERR_FORMAT, "id"},
        {"added_dup.json", "{\"added_tokens\":[{\"id\":4,\"content\":\"x\"},{\"id\":4,\"content\":\"y\"}],\"model\":"
                           "{\"type\":\"BPE\"," VOCAB ",\"merges\":[]}," GOOD_PRE "}", TP_ERR_FORMAT, "twice"},
        {"added_empty.json", "{\"added_tokens\":[{\"id\":4,\"content\":\"\"}],\"model\":{\"type\":\"BPE\"," VOCAB
                             ",\"merges\":[]}," GOOD_PRE "}", TP_ERR_FORMAT, "content"},
        {"added_type.json", "{\"added_tokens\":{\"id\":4},\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]}," GOOD_PRE "}",
         TP_ERR_FORMAT, "added_tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tp_tokenizer *t = NULL;
        tp_clear_error();
        tp_status rc = tt_tok_load_text("bad", cases[i].name, cases[i].text, &t);
        TT_CHECK(rc == cases[i].want, "%s: got %s (%s), want %s", cases[i].name, tp_status_name(rc),
                 rc ? tp_errmsg() : "", tp_status_name(cases[i].want));
        if (rc && cases[i].needle)
            TT_CHECK(strstr(tp_errmsg(), cases[i].needle) != NULL, "%s: message \"%s\" lacks \"%s\"", cases[i].name,
                     tp_errmsg(), cases[i].needle);
        TT_CHECK((rc == TP_OK) == (t != NULL), "%s: *out set iff ok", cases[i].name);
        if (t) { /* the tiny valid one tokenizes */
            size_t n;
            int32_t *ids = enc(t, "ab a", 4, 0, &n);
            TT_CHECK(n == 3 && ids[0] == 2 && ids[1] == 3 && ids[2] == 0, "tiny tokenizer: %zu ids", n);
            free(ids);
        }
        tp_tok_free(t);
    }
    tp_tokenizer *t = NULL;
    TT_CHECK(tp_tok_load_json("/nonexistent/tokenizer.json", &t) == TP_ERR_IO && !t, "missing file is TP_ERR_IO");
    /* the real fixture cut short */
    char *p = fixture("tok/smollm2/tokenizer.json"), *data;
    size_t len;
    if (tp_read_file(p, &data, &len) == TP_OK) {
        for (size_t cut = 1; cut < len; cut = cut * 3 + 7) {
            char *dir = tt_path(tt_tmp_dir(), "bad");
            mkdir(dir, 0777);
            char *q = tt_path(dir, "cut.json");
            tt_write_text(q, data, cut);
            TT_CHECK(tp_tok_load_json(q, &t) == TP_ERR_FORMAT && !t, "fixture cut at %zu bytes: %s", cut, tp_errmsg());
            free(q);
            free(dir);
        }
        free(data);
    }
    free(p);
}

/* GGUFs with broken tokenizer metadata, made with the writer. */
typedef struct { const char *name; tp_status want; const char *needle; } gguf_case;

static void write_bad_gguf(int which, const char *path) {
    tp_gguf_writer *w;
    if (tp_gguf_writer_new(&w)) return;
    const char *toks[] = {"a", "b", "ab", "Ġ", "a"};
    int32_t types[] = {1, 1, 1, 1, 1};
    const char *merges[] = {"a b", "a c", "ab"};
    tp_gguf_set_str(w, "tokenizer.ggml.model", which == 1 ? "t5" : "gpt2");
    if (which != 2) tp_gguf_set_str_arr(w, "tokenizer.ggml.tokens", toks, which == 6 ? 5 : 4);
    tp_gguf_set_arr(w, "tokenizer.ggml.token_type", TP_GGUF_INT32, types, which == 3 ? 3 : (which == 6 ? 5 : 4));
    tp_gguf_set_str_arr(w, "tokenizer.ggml.merges", which == 4 ? merges + 1 : which == 8 ? merges + 2 : merges, 1);
    tp_gguf_set_str(w, "tokenizer.ggml.pre", which == 5 ? "no-such-pre" : "smollm");
    tp_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", which == 7 ? 4 : 0);
    if (which == 9) tp_gguf_set_u32(w, "tokenizer.ggml.tokens", 3); /* wrong type */
    tp_gguf_write(w, path);
    tp_gguf_writer_free(w);
}

TT_TEST(tok_malformed_gguf) {
    static const gguf_case cases[] = {
        {"ok", TP_OK, NULL},
        {"model t5", TP_ERR_UNSUPPORTED, "tokenizer.ggml.model \"t5\""},
        {"no tokens", TP_ERR_FORMAT, "tokenizer.ggml.tokens"},
        {"token_type length", TP_ERR_FORMAT, "token_type"},
        {"merge unknown", TP_ERR_FORMAT, "merge"},
        {"pre unknown", TP_ERR_UNSUPPORTED, "no-such-pre"},
        {"duplicate token", TP_ERR_FORMAT, "duplicates"},
        {"bos out of range", TP_ERR_FORMAT, "bos"},
        {"merge without space", TP_ERR_FORMAT, "merges[0]"},
        {"tokens not an array", TP_ERR_FORMAT, "tokenizer.ggml.tokens"},
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%d.gguf", i);
        char *path = tt_path(tt_tmp_dir(), name);
        write_bad_gguf(i, path);
        tp_gguf *g = NULL;
        tp_status rc = tp_gguf_open(path, &g);
        TT_CHECK(rc == TP_OK, "%s: the GGUF itself should open: %s", cases[i].name, tp_errmsg());
        if (!rc) {
            tp_tokenizer *t = NULL;
            rc = tp_tok_load_gguf(g, &t);
            TT_CHECK(rc == cases[i].want, "%s: got %s (%s), want %s", cases[i].name, tp_status_name(rc),
                     rc ? tp_errmsg() : "", tp_status_name(cases[i].want));
            if (rc && cases[i].needle)
                TT_CHECK(strstr(tp_errmsg(), cases[i].needle) != NULL, "%s: message \"%s\" lacks \"%s\"", cases[i].name,
                         tp_errmsg(), cases[i].needle);
            if (rc) TT_CHECK(strstr(tp_errmsg(), name) != NULL, "%s: message does not name the file", cases[i].name);
            TT_CHECK((rc == TP_OK) == (t != NULL), "%s: *out set iff ok", cases[i].name);
            tp_tok_free(t);
        }
        tp_gguf_close(g);
        free(path);
    }
}

/* ---- the hand-written regex matchers against PCRE2 ---- */

/* Characters whose classes PCRE2 10.42 (Unicode 14) and tokenizers' tables agree on. */
static const char *const alphabet[] = {
    "a", "b", "s", "S", "t", "T", "r", "e", "v", "l", "L", "m", "d", "D", "x", "Z", "'", "'", " ", " ", " ", "\t",
    "\n", "\r", "\r\n", "0", "1", "9", ".", ",", "-", "!", "?", "(", "_", "\"", "é", "ß", "ſ", "ǅ", "中", "文", "ア",
    "٣", "²", "½", "Ⅻ", "〇", "𝟘", "\xc2\xa0", "\xe3\x80\x80", "\xe2\x80\x83", "\xc2\x85", "\x0b", "\x0c",
    "😀", "\xe2\x80\x8d", "\xcc\x81", "€", "→", "\xef\xbb\xbf", "ä", "Ж",
};

TT_TEST(tok_builtin_regex_vs_pcre2) {
    static const tp_re_builtin kinds[] = {TP_RE_GPT2, TP_RE_LLAMA3, TP_RE_QWEN2};
    static const char *const pats[] = {tp_re_gpt2, tp_re_llama3, tp_re_qwen2};
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    size_t na = sizeof alphabet / sizeof alphabet[0], compared = 0;
    for (int k = 0; k < 3; k++) {
        /* the same regex text, forced onto PCRE2 by a no-op prefix */
        char pat[512];
        snprintf(pat, sizeof pat, "(?:)%s", pats[k]);
        tp_pre_step st = {.kind = TP_PRE_SPLIT, .is_regex = 1, .behavior = TP_SPLIT_ISOLATED};
        st.pattern = strdup(pat);
        st.pattern_len = strlen(pat);
        tp_status rc = tp_pre_step_prepare(&st, "test");
        if (!TT_CHECK(rc == TP_OK && st.re && st.builtin == TP_RE_NONE, "PCRE2 compile: %s", tp_errmsg())) {
            tp_pre_step_clear(&st);
            continue;
        }
        pcre2_match_data *md = pcre2_match_data_create(8, NULL);
        int bad = 0;
        for (int it = 0; it < 20000 && bad < 5; it++) {
            char s[400];
            size_t n = 0;
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            int len = 1 + (int)(rng % 24);
            for (int j = 0; j < len; j++) {
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                const char *c = alphabet[rng % na];
                memcpy(s + n, c, strlen(c));
                n += strlen(c);
            }
            size_t pos = 0;
            while (pos < n) {
                size_t l = tp_re_builtin_match(kinds[k], (const uint8_t *)s, n, pos);
                int r = pcre2_match(st.re, (PCRE2_SPTR)s, n, pos, 0, md, NULL);
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                int same = r > 0 && ov[0] == pos && ov[1] == pos + l;
                if (!TT_CHECK(same, "regex %d on \"%.*s\" at %zu: builtin %zu bytes, PCRE2 [%zu,%zu)", k, (int)n, s, pos,
                              l, r > 0 ? (size_t)ov[0] : 0, r > 0 ? (size_t)ov[1] : 0)) {
                    bad++;
                    break;
                }
                pos += l;
                compared++;
            }
        }
        pcre2_match_data_free(md);
        tp_pre_step_clear(&st);
    }
    tt_note("%zu regex matches compared between the hand-written matchers and PCRE2", compared);
    /* and the class tables on a few known code points */
    TT_CHECK(tp_uclass(0x0663) == (TP_UC_N | TP_UC_NUM), "Arabic-Indic three");
    TT_CHECK(tp_uclass(0x180E) == 0, "U+180E is not \\s in Oniguruma");
    TT_CHECK(tp_uclass(0x3000) == TP_UC_WS && tp_uclass(0x85) == TP_UC_WS, "ideographic space, NEL");
    TT_CHECK(tp_uclass(0x4E2D) == TP_UC_L && tp_uclass(0x1F600) == 0, "CJK letter, emoji");
    TT_CHECK(tp_uclass(0x11DE0) == TP_UC_NUM, "U+11DE0 numeric for Rust, not \\p{N} for Oniguruma (%u)",
             tp_uclass(0x11DE0));
    for (unsigned b = 0; b < 256; b++)
        TT_CHECK(tp_cp_to_byte(tp_byte_to_cp((uint8_t)b)) == (int)b, "byte map round trip %u", b);
}

/* Random bytes: no crash, decode(encode(valid UTF-8)) round-trips where the vocabulary has all
 * the bytes. (The libFuzzer target in tests/fuzz/ does this at length.) */
TT_TEST(tok_random_bytes) {
    tp_tokenizer *t = load_json_fixture();
    if (!t) return;
    uint64_t rng = 12345;
    for (int it = 0; it < 3000; it++) {
        unsigned char s[64];
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        size_t n = rng % sizeof s;
        for (size_t i = 0; i < n; i++) {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            /* mostly text-like bytes, sometimes anything */
            s[i] = (rng >> 8) % 4 ? (unsigned char)(0x20 + (rng >> 16) % 0x60) : (unsigned char)(rng >> 24);
        }
        size_t nid;
        int32_t *ids = enc(t, (const char *)s, n, it & 1, &nid);
        char *d;
        size_t dl;
        TT_CHECK(tp_tok_decode(t, ids, nid, 0, &d, &dl) == TP_OK, "decode: %s", tp_errmsg());
        int plain = tp_utf8_valid((const char *)s, n);
        for (size_t i = 0; i < n && plain; i++) plain = t->byte_id[s[i]] >= 0;
        if (plain) TT_CHECK(dl == n && memcmp(d, s, n) == 0, "round trip of %zu valid bytes", n);
        free(d);
        free(ids);
    }
    int32_t *ids = NULL;
    size_t n = 7;
    TT_CHECK(tp_tok_encode(t, NULL, 0, 0, &ids, &n) == TP_OK && n == 0 && ids, "empty input");
    free(ids);
    TT_CHECK(tp_tok_encode(t, NULL, 3, 0, &ids, &n) == TP_ERR_ARG, "NULL text with a length");
    tp_tok_free(t);
}

/* One tokenizer, many threads: the same ids as one thread. */
TT_TEST(tok_threads) {
    tp_tokenizer *t = load_json_fixture();
    char *path = tt_path(tt_data_dir(), "wikitext2/wiki.valid.tokens");
    tt_lines tl;
    int have = t && tt_read_lines(path, &tl, (size_t)-1);
    free(path);
    if (!have) {
        if (t) tt_skip("wiki.valid.tokens not found (set TAPER_DATA)");
        tp_tok_free(t);
        return;
    }
    uint64_t *h1 = calloc(tl.n, sizeof *h1), *h2 = calloc(tl.n, sizeof *h2);
    for (size_t i = 0; i < tl.n; i++) {
        size_t n;
        int32_t *ids = enc(t, tl.line[i], tl.line_len[i], 0, &n);
        h1[i] = tt_fnv_ids(ids, n, TT_FNV0);
        free(ids);
    }
    long bad = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(+ : bad)
    for (long i = 0; i < (long)tl.n; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tp_tok_encode(t, tl.line[i], tl.line_len[i], 0, &ids, &n) != TP_OK) bad++;
        h2[i] = tt_fnv_ids(ids, n, TT_FNV0);
        free(ids);
    }
    TT_CHECK(bad == 0 && memcmp(h1, h2, tl.n * sizeof *h1) == 0, "threaded encode differs (%ld errors)", bad);
    free(h1);
    free(h2);
    tt_free_lines(&tl);
    tp_tok_free(t);
}
