/* SentencePiece-style tokenizers and normalizers against HF `tokenizers` (fixtures from
 * tests/ref/tok_spm_ref.py): the Llama 2 vocabulary as transformers writes its tokenizer.json
 * (BPE with byte fallback, Metaspace) and variants of it (Prepend/Replace normalizers, Gemma's
 * shape, Metaspace split, NFKC with unk), SmolLM2's with Qwen2's pipeline and NFC, and NFD +
 * Lowercase; hard cases, extra strings (ids with and without special tokens, decodes) and the
 * first lines of the data files. Then the GGUF side: llama.cpp's SPM against HF's legacy
 * pipeline on the same texts, save / GGUF round trips and their refusals, and malformed
 * tokenizer metadata for every new parser path. */
#include "tt.h"
#include "tt_tok.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "taper/gguf.h"
#include "taper/tokenizer.h"
#include "taper/util.h"

static const cJSON *jget(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

/* How many cases tests/ref/tok_spm_ref.py writes per variant into tok/spm/expected.json: the
 * loops assert they compared exactly these, so a short fixture fails rather than passing. */
#define SPM_HARD_LINES 110 /* lines of tests/data/tok_hard_cases.txt (hard) */
#define SPM_EXTRAS 30      /* EXTRAS (extras) */
#define SPM_DATA_FILES 2   /* DATA_FILES (data) */
#define SPM_DATA_LINES 512 /* DATA_LINES per data file, hashed in chunks of CHUNK = 64: 8 chunks */
#define SPM_DATA_CHUNKS 8








static int32_t *enc(const tp_tokenizer *t, const char *s, size_t n, unsigned flags, size_t *nid) {
    int32_t *ids = NULL;
    tp_status rc = tp_tok_encode_ex(t, s, n, flags, &ids, nid);
    TT_CHECK(rc == TP_OK, "encode: %s", tp_errmsg());
    if (rc) *nid = 0;
    return ids;
}

/* ---- the HF variants ---- */

static cJSON *base_json(const char *base) {
    char rel[128];
    snprintf(rel, sizeof rel, "%s", strcmp(base, "smollm2") == 0 ? "tok/smollm2/tokenizer.json" : "tok/spm/llama-spm.tokenizer.json");
    return tt_fixture_json(rel);
}

/* The variant's tokenizer.json: the base with the patch's top-level and model fields replaced. */
static char *write_variant(const cJSON *base, const cJSON *v) {
    cJSON *d = cJSON_Duplicate(base, 1);
    const cJSON *p;
    cJSON_ArrayForEach(p, jget(v, "patch")) cJSON_ReplaceItemInObjectCaseSensitive(d, p->string, cJSON_Duplicate(p, 1));
    cJSON *m = cJSON_GetObjectItemCaseSensitive(d, "model");
    cJSON_ArrayForEach(p, jget(v, "model_patch")) {
        if (cJSON_GetObjectItemCaseSensitive(m, p->string))
            cJSON_ReplaceItemInObjectCaseSensitive(m, p->string, cJSON_Duplicate(p, 1));
        else cJSON_AddItemToObject(m, p->string, cJSON_Duplicate(p, 1));
    }
    char *dir = tt_path(tt_tmp_dir(), jget(v, "name")->valuestring);
    mkdir(dir, 0777);
    char *path = tt_path(dir, "tokenizer.json");
    char *text = cJSON_PrintUnformatted(d);
    TT_CHECK(text && tt_write_text(path, text, strlen(text)), "cannot write %s", path);
    free(text);
    free(dir);
    cJSON_Delete(d);
    return path;
}

/* Set when a data file of expected.json is absent (TAPER_DATA): the test is then skipped with a
 * notice after comparing the hard cases and extras, which come with the fixtures. */
static int spm_data_missing;

/* Hard cases, extras and data lines against one variant's expectations; returns tokens compared. */
static size_t check_expected(const tp_tokenizer *t, const cJSON *v, const char *label, int check_decode) {
    size_t tokens = 0, bad = 0;
    char *hp = tt_path(tt_fixtures_dir(), "../data/tok_hard_cases.txt");
    tt_lines tl;
    int ok = tt_read_lines(hp, &tl, (size_t)-1);
    TT_CHECK(ok, "cannot read %s", hp);
    free(hp);
    const cJSON *hard = jget(v, "hard"), *hdec = jget(v, "hard_decode_hex");
    TT_CHECK(ok && (int)tl.n == cJSON_GetArraySize(hard), "%s: %zu hard-case lines, expected.json has %d", label, tl.n,
             cJSON_GetArraySize(hard));
    size_t compared = 0;
    for (size_t i = 0; ok && i < tl.n && (int)i < cJSON_GetArraySize(hard); i++) {
        compared++;
        size_t n;
        int32_t *ids = enc(t, tl.line[i], tl.line_len[i], 0, &n);
        if (!TT_CHECK(tt_ids_equal(ids, n, cJSON_GetArrayItem(hard, (int)i)), "%s: hard case line %zu \"%.40s\" differs from HF",
                      label, i, tl.line[i]) && bad++ < 3) {
            tt_print_ids("taper", ids, n);
            char *w = cJSON_PrintUnformatted(cJSON_GetArrayItem(hard, (int)i));
            fprintf(stderr, "      HF: %.300s\n", w);
            free(w);
        }
        tokens += n;
        const cJSON *dh = cJSON_GetArrayItem(hdec, (int)i);
        if (check_decode && (cJSON_IsString(dh) || cJSON_IsNull(dh))) {
            char *d;
            size_t dl, wl = tl.line_len[i];
            unsigned char *w = NULL;
            if (cJSON_IsString(dh)) w = tt_unhex(dh->valuestring, &wl);
            else { /* null: HF decodes to the line itself */
                w = malloc(wl + 1);
                if (!w) abort();
                memcpy(w, tl.line[i], wl);
            }
            tp_status rc = tp_tok_decode(t, ids, n, 0, &d, &dl);
            TT_CHECK(rc == TP_OK && dl == wl && memcmp(d, w, wl) == 0, "%s: decode of hard case %zu differs from HF's",
                     label, i);
            if (!rc) free(d);
            free(w);
        }
        free(ids);
    }
    if (ok) tt_free_lines(&tl);
    TT_CHECK(compared == SPM_HARD_LINES, "%s: compared %zu hard-case lines (expected %d)", label, compared,
             SPM_HARD_LINES);
    size_t k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, jget(v, "extras")) {
        size_t bl, n, n2;
        unsigned char *b = tt_unhex(jget(e, "hex")->valuestring, &bl);
        int32_t *ids = enc(t, (const char *)b, bl, 0, &n);
        if (!TT_CHECK(tt_ids_equal(ids, n, jget(e, "ids")), "%s: extra %zu (hex %.30s) differs from HF", label, k,
                      jget(e, "hex")->valuestring))
            tt_print_ids("taper", ids, n);
        int32_t *ids2 = enc(t, (const char *)b, bl, TP_TOK_ADD_SPECIAL, &n2);
        TT_CHECK(tt_ids_equal(ids2, n2, jget(e, "ids_special")), "%s: extra %zu with special tokens differs from HF", label, k);
        tokens += n + n2;
        for (int skip = 0; check_decode && skip < 2; skip++) {
            char *d;
            size_t dl, wl;
            unsigned char *w = tt_unhex(jget(e, skip ? "decode_skip_hex" : "decode_hex")->valuestring, &wl);
            tp_status rc = tp_tok_decode(t, ids, n, skip, &d, &dl);
            if (!TT_CHECK(rc == TP_OK && dl == wl && memcmp(d, w, wl) == 0, "%s: extra %zu decode (skip=%d) differs from HF",
                          label, k, skip) && rc == TP_OK)
                fprintf(stderr, "      taper \"%.*s\" HF \"%.*s\"\n", (int)dl, d, (int)wl, (const char *)w);
            if (!rc) free(d);
            free(w);
        }
        free(ids);
        free(ids2);
        free(b);
        k++;
    }
    TT_CHECK(k == SPM_EXTRAS, "%s: compared %zu extra cases (expected %d)", label, k, SPM_EXTRAS);
    const cJSON *df;
    int n_files = 0;
    cJSON_ArrayForEach(df, jget(v, "data")) {
        n_files++;
        char *p = tt_path(tt_data_dir(), df->string);
        if (access(p, R_OK) != 0) {
            spm_data_missing = 1;
            tt_skip("%s: data file %s not found (TAPER_DATA); the hard cases and extras were compared", label, p);
            free(p);
            continue;
        }
        tt_lines dl;
        size_t want_lines = (size_t)jget(df, "lines")->valuedouble, chunk = (size_t)jget(df, "chunk")->valuedouble;
        tt_read_lines(p, &dl, want_lines);
        TT_CHECK(dl.n == want_lines, "%s: %s has %zu lines, expected %zu", label, df->string, dl.n, want_lines);
        TT_CHECK(want_lines == SPM_DATA_LINES, "%s: expected.json has %zu lines of %s (expected %d)", label,
                 want_lines, df->string, SPM_DATA_LINES);
        uint64_t h = TT_FNV0;
        size_t total = 0, ci = 0, bad_chunks = 0;
        for (size_t i = 0; i < dl.n; i++) {
            size_t n;
            int32_t *ids = enc(t, dl.line[i], dl.line_len[i], 0, &n);
            h = tt_fnv_ids(ids, n, h);
            total += n;
            free(ids);
            if ((i + 1) % chunk == 0 || i + 1 == dl.n) {
                char hx[17];
                snprintf(hx, sizeof hx, "%016llx", (unsigned long long)h);
                const cJSON *w = cJSON_GetArrayItem(jget(df, "fnv"), (int)ci++);
                bad_chunks += !(cJSON_IsString(w) && strcmp(w->valuestring, hx) == 0);
                h = TT_FNV0;
            }
        }
        TT_CHECK(bad_chunks == 0 && total == (size_t)jget(df, "tokens")->valuedouble,
                 "%s: %s: %zu of %zu chunks differ from HF, %zu tokens (HF %d)", label, df->string, bad_chunks, ci, total,
                 (int)jget(df, "tokens")->valuedouble);
        TT_CHECK(ci == SPM_DATA_CHUNKS && cJSON_GetArraySize(jget(df, "fnv")) == SPM_DATA_CHUNKS,
                 "%s: %s: compared %zu chunks, fnv has %d (expected %d)", label, df->string, ci,
                 cJSON_GetArraySize(jget(df, "fnv")), SPM_DATA_CHUNKS);
        tokens += total;
        tt_free_lines(&dl);
        free(p);
    }
    TT_CHECK(n_files == SPM_DATA_FILES, "%s: compared %d data files (expected %d)", label, n_files, SPM_DATA_FILES);
    return tokens;
}

TT_TEST(tok_spm_json_variants_vs_hf) {
    cJSON *exp = tt_fixture_json("tok/spm/expected.json");
    cJSON *bases[2] = {base_json("llama-spm"), base_json("smollm2")};
    const cJSON *v;
    int nv = 0;
    const cJSON *vars = exp ? jget(exp, "variants") : NULL;
    cJSON_ArrayForEach(v, vars) {
        const char *name = jget(v, "name")->valuestring;
        const cJSON *base = bases[strcmp(jget(v, "base")->valuestring, "smollm2") == 0];
        if (!base) continue;
        char *path = write_variant(base, v);
        tp_tokenizer *t = NULL;
        tp_status rc = tp_tok_load_json(path, &t);
        TT_CHECK(rc == TP_OK, "%s: %s", name, tp_errmsg());
        if (!rc) {
            size_t n = check_expected(t, v, name, 1);
            tt_note("variant %-16s kind %-19s %zu tokens compared", name, tp_tok_kind(t), n);
            /* the hard cases and extras alone are about 3,200-4,000 tokens a variant */
            TT_CHECK(n > (spm_data_missing ? 3000u : 40000u), "%s: only %zu tokens compared", name, n);
            nv++;
            /* written back as tokenizer.json and reloaded: the same ids */
            char dir[512];
            snprintf(dir, sizeof dir, "%s/saved-%s", tt_tmp_dir(), name);
            rc = tp_tok_save_hf(t, dir);
            TT_CHECK(rc == TP_OK, "%s: tp_tok_save_hf: %s", name, tp_errmsg());
            char *sp = tt_path(dir, "tokenizer.json");
            tp_tokenizer *r = NULL;
            if (!rc) {
                rc = tp_tok_load_json(sp, &r);
                TT_CHECK(rc == TP_OK, "%s: reload of the saved tokenizer.json: %s", name, tp_errmsg());
            }
            if (r) check_expected(r, v, "saved", 1);
            tp_tok_free(r);
            free(sp);
            /* GGUF: only byte-level tokenizers with a llama.cpp name; the others are refused */
            tp_gguf_writer *w = NULL;
            if (tp_gguf_writer_new(&w) == TP_OK) {
                rc = tp_tok_to_gguf(t, w);
                if (strcmp(tp_tok_kind(t), "byte-level BPE") != 0 || strcmp(name, "nfd_lower") == 0)
                    TT_CHECK(rc == TP_ERR_UNSUPPORTED && strstr(tp_errmsg(), "not") != NULL,
                             "%s: tp_tok_to_gguf should refuse, got %s (%s)", name, tp_status_name(rc), rc ? tp_errmsg() : "");
                tp_gguf_writer_free(w);
            }
        }
        tp_tok_free(t);
        free(path);
    }
    TT_CHECK(nv == 7, "%d variants checked, expected 7", nv);
    cJSON_Delete(bases[0]);
    cJSON_Delete(bases[1]);
    cJSON_Delete(exp);
}

/* ---- GGUF ---- */

/* t written as a GGUF's tokenizer keys (tmp/name) and read back; NULL after a failed check. */
static tp_tokenizer *gguf_round_trip(const tp_tokenizer *t, const char *name, const char *what) {
    tp_gguf_writer *w = NULL;
    tp_gguf *g = NULL;
    tp_tokenizer *r = NULL;
    char *path = tt_path(tt_tmp_dir(), name);
    tp_status rc = tp_gguf_writer_new(&w);
    if (!rc) rc = tp_tok_to_gguf(t, w);
    TT_CHECK(rc == TP_OK, "tp_tok_to_gguf (%s): %s", what, tp_errmsg());
    if (!rc) rc = tp_gguf_write(w, path);
    tp_gguf_writer_free(w);
    if (!rc) rc = tp_gguf_open(path, &g);
    if (!rc) rc = tp_tok_load_gguf(g, &r);
    TT_CHECK(rc == TP_OK, "%s GGUF written and reloaded: %s", what, tp_errmsg());
    tp_gguf_close(g);
    free(path);
    return r;
}

static char *models_dir(void) {
    char *src = tt_llama_cpp_src(), *d = src ? tt_path(src, "models") : NULL;
    free(src);
    return d;
}

static tp_tokenizer *load_vocab_gguf(const char *name, tp_gguf **g) {
    char *dir = models_dir(), path[4300];
    snprintf(path, sizeof path, "%s/ggml-vocab-%s.gguf", dir, name);
    free(dir);
    *g = NULL;
    if (access(path, R_OK) != 0) {
        tt_skip("%s not found: llama.cpp's vocabularies come with `make deps` (or set TAPER_LLAMA_CPP_SRC)", path);
        return NULL;
    }
    tp_status rc = tp_gguf_open(path, g);
    TT_CHECK(rc == TP_OK, "tp_gguf_open(%s): %s", path, tp_errmsg());
    tp_tokenizer *t = NULL;
    if (!rc) rc = tp_tok_load_gguf(*g, &t);
    TT_CHECK(rc == TP_OK, "tp_tok_load_gguf(%s): %s", path, tp_errmsg());
    return t;
}

/* llama.cpp's score-based SPM (GGUF) against HF's rank-based BPE with the legacy Prepend/Replace
 * normalizer (the pipeline that adds a prefix space to every piece, as llama.cpp does) on the
 * same texts: expected to agree exactly; decoding too. Then the GGUF round trip. */
TT_TEST(tok_spm_gguf_llama_vs_hf) {
    tp_gguf *g;
    tp_tokenizer *t = load_vocab_gguf("llama-spm", &g);
    cJSON *exp = t ? tt_fixture_json("tok/spm/expected.json") : NULL;
    const cJSON *v, *legacy = NULL;
    const cJSON *vars = exp ? jget(exp, "variants") : NULL;
    cJSON_ArrayForEach(v, vars) if (strcmp(jget(v, "name")->valuestring, "legacy_prepend") == 0) legacy = v;
    if (t) TT_CHECK(legacy != NULL, "tok/spm/expected.json has no variant legacy_prepend");
    if (t && legacy) {
        TT_CHECK(strcmp(tp_tok_kind(t), "SPM (scores)") == 0 && tp_tok_adds_bos(t) && tp_tok_bos(t) == 1 &&
                     tp_tok_eos(t) == 2 && tp_tok_unk(t) == 0,
                 "llama-spm: kind %s, adds_bos %d, bos %d eos %d unk %d", tp_tok_kind(t), tp_tok_adds_bos(t),
                 (int)tp_tok_bos(t), (int)tp_tok_eos(t), (int)tp_tok_unk(t));
        size_t n = check_expected(t, legacy, "gguf llama-spm vs HF legacy", 1);
        tt_note("GGUF llama-spm (llama.cpp SPM by score) vs HF legacy_prepend: %zu tokens compared", n);
        /* HF would write it only by rank: refused, not approximated */
        char dir[512];
        snprintf(dir, sizeof dir, "%s/spm-save", tt_tmp_dir());
        tp_status rc = tp_tok_save_hf(t, dir);
        TT_CHECK(rc == TP_ERR_UNSUPPORTED && strstr(tp_errmsg(), "score"), "save_hf of SPM: %s (%s)", tp_status_name(rc),
                 tp_errmsg());
        /* GGUF round trip: the same tokenizer back */
        tp_tokenizer *r = gguf_round_trip(t, "spm-rt.gguf", "SPM");
        if (r) check_expected(r, legacy, "gguf llama-spm rewritten", 1);
        tp_tok_free(r);
    }
    cJSON_Delete(exp);
    tp_tok_free(t);
    tp_gguf_close(g);
}

/* Gemma 4's GGUF (model "gemma4"): BPE by rank on U+2581-escaped text, BOS always added,
 * decoding back; the GGUF round trip keeps it; tokenizer.json refuses. */
TT_TEST(tok_spm_gguf_gemma4) {
    tp_gguf *g;
    tp_tokenizer *t = load_vocab_gguf("gemma-4", &g);
    if (t) {
        static const struct { const char *text; const char *want; } cases[] = {
            {"Hello world", "2 9259 1902"}, /* from llama.cpp's .out: "Hello world" -> 9259 1902 */
        };
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            size_t n;
            int32_t *ids = enc(t, cases[i].text, strlen(cases[i].text), TP_TOK_ADD_SPECIAL, &n);
            char got[256] = "";
            for (size_t j = 0; j < n; j++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d", j ? " " : "", (int)ids[j]);
            TT_CHECK(strcmp(got, cases[i].want) == 0, "gemma4 \"%s\": %s, want %s", cases[i].text, got, cases[i].want);
            char *d;
            size_t dl;
            tp_status rc = tp_tok_decode(t, ids, n, 1, &d, &dl);
            TT_CHECK(rc == TP_OK && strcmp(d, cases[i].text) == 0, "gemma4 decode: \"%s\"", rc ? "" : d);
            if (!rc) free(d);
            free(ids);
        }
        const char *s = "  two spaces, tabs\t\tand \xf0\x9f\x98\x80 bytes\n\n\nend";
        size_t n;
        int32_t *ids = enc(t, s, strlen(s), 0, &n);
        char *d;
        size_t dl;
        tp_status rc = tp_tok_decode(t, ids, n, 0, &d, &dl);
        TT_CHECK(rc == TP_OK && dl == strlen(s) && memcmp(d, s, dl) == 0, "gemma4 decode(encode(s)) != s: \"%s\"", rc ? "" : d);
        if (!rc) free(d);
        char dir[512];
        snprintf(dir, sizeof dir, "%s/gemma-save", tt_tmp_dir());
        rc = tp_tok_save_hf(t, dir);
        TT_CHECK(rc == TP_ERR_UNSUPPORTED, "save_hf of gemma4: %s", tp_status_name(rc));
        tp_tokenizer *r = gguf_round_trip(t, "gemma4-rt.gguf", "gemma4");
        if (r) {
            size_t n2;
            int32_t *ids2 = enc(r, s, strlen(s), 0, &n2);
            TT_CHECK(n2 == n && memcmp(ids, ids2, n * sizeof *ids) == 0, "gemma4 rewritten GGUF tokenizes differently");
            free(ids2);
        }
        free(ids);
        tp_tok_free(r);
    }
    tp_tok_free(t);
    tp_gguf_close(g);
}

/* ---- malformed metadata on the new paths ---- */

enum { BAD_OK_LLAMA, BAD_OK_GEMMA4, BAD_NO_SCORES, BAD_SCORES_LEN, BAD_SCORES_TYPE, BAD_SCORES_NAN, BAD_TYPE_VALUE,
       BAD_TYPE_LEN, BAD_GEMMA4_NO_MERGES, BAD_MODEL_BERT, BAD_ADD_PREFIX_TYPE, BAD_N };

static void write_bad(int which, const char *path) {
    tp_gguf_writer *w;
    if (tp_gguf_writer_new(&w)) return;
    const char *toks[] = {"<unk>", "<s>", "</s>", "<0x41>", "\xe2\x96\x81", "a", "b", "ab", "\xe2\x96\x81" "ab"};
    int32_t types[] = {2, 3, 3, 6, 1, 1, 1, 1, which == BAD_TYPE_VALUE ? 9 : 1};
    float scores[] = {0, 0, 0, 0, -1, -2, -3, -1.5f, which == BAD_SCORES_NAN ? 0.0f / 0.0f : -0.5f};
    const char *merges[] = {"a b", "\xe2\x96\x81 ab"};
    int gemma = which == BAD_OK_GEMMA4 || which == BAD_GEMMA4_NO_MERGES;
    tp_gguf_set_str(w, "tokenizer.ggml.model", which == BAD_MODEL_BERT ? "bert" : gemma ? "gemma4" : "llama");
    tp_gguf_set_str_arr(w, "tokenizer.ggml.tokens", toks, 9);
    tp_gguf_set_arr(w, "tokenizer.ggml.token_type", TP_GGUF_INT32, types, which == BAD_TYPE_LEN ? 8 : 9);
    if (which == BAD_SCORES_TYPE) tp_gguf_set_arr(w, "tokenizer.ggml.scores", TP_GGUF_INT32, types, 9);
    else if (which != BAD_NO_SCORES) tp_gguf_set_arr(w, "tokenizer.ggml.scores", TP_GGUF_FLOAT32, scores, which == BAD_SCORES_LEN ? 7 : 9);
    if (gemma && which != BAD_GEMMA4_NO_MERGES) tp_gguf_set_str_arr(w, "tokenizer.ggml.merges", merges, 2);
    if (which == BAD_ADD_PREFIX_TYPE) tp_gguf_set_u32(w, "tokenizer.ggml.add_space_prefix", 1);
    tp_gguf_write(w, path);
    tp_gguf_writer_free(w);
}

TT_TEST(tok_spm_malformed_gguf) {
    static const struct { int which; tp_status want; const char *needle; } cases[] = {
        {BAD_OK_LLAMA, TP_OK, NULL},
        {BAD_OK_GEMMA4, TP_OK, NULL},
        {BAD_NO_SCORES, TP_ERR_FORMAT, "tokenizer.ggml.scores"},
        {BAD_SCORES_LEN, TP_ERR_FORMAT, "tokenizer.ggml.scores has 7 entries"},
        {BAD_SCORES_TYPE, TP_ERR_FORMAT, "tokenizer.ggml.scores is not an array of"},
        {BAD_SCORES_NAN, TP_ERR_FORMAT, "tokenizer.ggml.scores[8] is NaN"},
        {BAD_TYPE_VALUE, TP_ERR_FORMAT, "tokenizer.ggml.token_type[8] = 9"},
        {BAD_TYPE_LEN, TP_ERR_FORMAT, "tokenizer.ggml.token_type has 8 entries"},
        {BAD_GEMMA4_NO_MERGES, TP_ERR_FORMAT, "tokenizer.ggml.merges"},
        {BAD_MODEL_BERT, TP_ERR_UNSUPPORTED, "tokenizer.ggml.model \"bert\""},
        {BAD_ADD_PREFIX_TYPE, TP_ERR_FORMAT, "tokenizer.ggml.add_space_prefix"},
    };
    TT_CHECK(sizeof cases / sizeof *cases == BAD_N, "every case listed");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char name[32];
        snprintf(name, sizeof name, "spm-bad%zu.gguf", i);
        char *path = tt_path(tt_tmp_dir(), name);
        write_bad(cases[i].which, path);
        tp_gguf *g = NULL;
        tp_status rc = tp_gguf_open(path, &g);
        TT_CHECK(rc == TP_OK, "case %zu: the GGUF itself should open: %s", i, tp_errmsg());
        if (!rc) {
            tp_tokenizer *t = NULL;
            tp_clear_error();
            rc = tp_tok_load_gguf(g, &t);
            TT_CHECK(rc == cases[i].want, "case %zu: got %s (%s), want %s", i, tp_status_name(rc), rc ? tp_errmsg() : "",
                     tp_status_name(cases[i].want));
            if (rc && cases[i].needle)
                TT_CHECK(strstr(tp_errmsg(), cases[i].needle) && strstr(tp_errmsg(), name),
                         "case %zu: message \"%s\" lacks \"%s\" or the file name", i, tp_errmsg(), cases[i].needle);
            TT_CHECK((rc == TP_OK) == (t != NULL), "case %zu: *out set iff ok", i);
            if (t) {
                /* "ab ab": SPM -> ▁ab ▁ab (ids 8 8); gemma4 (no prefix space): a b merged = ab, ▁ab */
                size_t n;
                int32_t *ids = enc(t, "ab ab", 5, 0, &n);
                if (cases[i].which == BAD_OK_LLAMA)
                    TT_CHECK(n == 2 && ids[0] == 8 && ids[1] == 8, "tiny SPM: %zu ids", n);
                else TT_CHECK(n == 2 && ids[0] == 7 && ids[1] == 8, "tiny gemma4: %zu ids", n);
                free(ids);
                /* a character with no piece: byte fallback (A -> <0x41>), other bytes -> unk / dropped */
                ids = enc(t, "AZ", 2, 0, &n);
                if (cases[i].which == BAD_OK_LLAMA)
                    TT_CHECK(n == 3 && ids[0] == 4 && ids[1] == 3 && ids[2] == 0, "tiny SPM bytes: %zu ids", n);
                else TT_CHECK(n == 1 && ids[0] == 3, "tiny gemma4 bytes: %zu ids", n);
                free(ids);
            }
            tp_tok_free(t);
        }
        tp_gguf_close(g);
        free(path);
    }
}

#define M "\"model\":{\"type\":\"BPE\",\"vocab\":{\"<unk>\":0,\"<0x41>\":1,\"\xe2\x96\x81\":2,\"a\":3,\"b\":4,\"ab\":5," \
          "\"\xe2\x96\x81" "ab\":6},\"merges\":[\"a b\",\"\xe2\x96\x81 ab\"],\"byte_fallback\":true,\"unk_token\":\"<unk>\"}"

TT_TEST(tok_spm_malformed_json) {
    static const struct { const char *name, *text; tp_status want; const char *needle; } cases[] = {
        {"ok_meta.json", "{" M ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\xe2\x96\x81\","
                         "\"prepend_scheme\":\"always\",\"split\":false}}", TP_OK, NULL},
        {"ok_norm.json", "{" M ",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":"
                         "\"\xe2\x96\x81\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xe2\x96\x81\"}]},"
                         "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":"
                         "\"\xe2\x96\x81\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":"
                         "\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]}}", TP_OK, NULL},
        {"meta_rep.json", "{" M ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"ab\"}}", TP_ERR_FORMAT,
         "replacement"},
        {"meta_scheme.json", "{" M ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"_\",\"prepend_scheme\":"
                             "\"sometimes\"}}", TP_ERR_FORMAT, "prepend_scheme"},
        {"meta_split.json", "{" M ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"_\",\"split\":1}}",
         TP_ERR_FORMAT, "split"},
        {"norm_regex.json", "{" M ",\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"Regex\":\" +\"},\"content\":\" \"}}",
         TP_ERR_UNSUPPORTED, "Regex"},
        {"norm_content.json", "{" M ",\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"}}}", TP_ERR_FORMAT,
         "content"},
        {"norm_prepend.json", "{" M ",\"normalizer\":{\"type\":\"Prepend\"}}", TP_ERR_FORMAT, "prepend"},
        {"norm_unknown.json", "{" M ",\"normalizer\":{\"type\":\"BertNormalizer\"}}", TP_ERR_UNSUPPORTED, "BertNormalizer"},
        {"norm_notype.json", "{" M ",\"normalizer\":{}}", TP_ERR_FORMAT, "normalizer"},
        {"norm_seq.json", "{" M ",\"normalizer\":{\"type\":\"Sequence\"}}", TP_ERR_FORMAT, "normalizers"},
        {"norm_strip.json", "{" M ",\"normalizer\":{\"type\":\"Strip\",\"strip_left\":\"yes\"}}", TP_ERR_FORMAT,
         "strip_left"},
        {"dec_strip.json", "{" M ",\"decoder\":{\"type\":\"Strip\",\"content\":\" \",\"start\":-1,\"stop\":0}}",
         TP_ERR_FORMAT, "start"},
        {"dec_strip_content.json", "{" M ",\"decoder\":{\"type\":\"Strip\",\"content\":\"ab\",\"start\":1,\"stop\":0}}",
         TP_ERR_FORMAT, "content"},
        {"dec_unknown.json", "{" M ",\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"CTC\"}]}}",
         TP_ERR_UNSUPPORTED, "CTC"},
        {"dec_seq.json", "{" M ",\"decoder\":{\"type\":\"Sequence\"}}", TP_ERR_FORMAT, "decoders"},
        {"dec_replace.json", "{" M ",\"decoder\":{\"type\":\"Replace\",\"pattern\":{\"String\":\"x\"},\"content\":3}}",
         TP_ERR_FORMAT, "content"},
        {"punct_behavior.json", "{" M ",\"pre_tokenizer\":{\"type\":\"Punctuation\",\"behavior\":\"Sideways\"}}",
         TP_ERR_FORMAT, "behavior"},
        {"fallback_bytelevel.json", "{" M ",\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}", TP_ERR_UNSUPPORTED,
         "byte_fallback"},
        {"fallback_bool.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],\"byte_fallback\":\"on\"}}",
         TP_ERR_FORMAT, "byte_fallback"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tp_tokenizer *t = NULL;
        tp_clear_error();
        tp_status rc = tt_tok_load_text("spm-bad", cases[i].name, cases[i].text, &t);
        TT_CHECK(rc == cases[i].want, "%s: got %s (%s), want %s", cases[i].name, tp_status_name(rc), rc ? tp_errmsg() : "",
                 tp_status_name(cases[i].want));
        if (rc && cases[i].needle)
            TT_CHECK(strstr(tp_errmsg(), cases[i].needle) != NULL, "%s: message \"%s\" lacks \"%s\"", cases[i].name,
                     tp_errmsg(), cases[i].needle);
        TT_CHECK((rc == TP_OK) == (t != NULL), "%s: *out set iff ok", cases[i].name);
        if (t) {
            /* "ab abA": ▁ab ▁ab <0x41> in both shapes; decode gives the text back */
            size_t n;
            int32_t *ids = enc(t, "ab abA", 6, 0, &n);
            TT_CHECK(n == 3 && ids[0] == 6 && ids[1] == 6 && ids[2] == 1, "%s: tiny tokenizer: %zu ids", cases[i].name, n);
            char *d;
            size_t dl;
            if (!strcmp(cases[i].name, "ok_norm.json")) {
                tp_status r2 = tp_tok_decode(t, ids, n, 0, &d, &dl);
                TT_CHECK(r2 == TP_OK && strcmp(d, "ab abA") == 0, "%s: decode \"%s\"", cases[i].name, r2 ? "" : d);
                if (!r2) free(d);
            }
            free(ids);
        }
        tp_tok_free(t);
    }
}

/* Random text (invalid UTF-8, control bytes, multi-byte characters, spaces and newlines) through
 * the byte-fallback kinds: encoding never fails, every id is in range, and the decoded text
 * encodes to the same ids again (for texts that do not start with a space, which HF's Metaspace /
 * Strip decoders drop). */
static void random_roundtrips(const tp_tokenizer *t, const char *label) {
    static const char *const atoms[] = {"a", "b", "Z", "0", " ", "  ", "\n", "\t", "\r\n", ".", ",", "'", "\xc3\xa9",
                                        "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xcc\x81", "\x80", "\xff", "\xe4\xb8",
                                        "\x01", "the", "ing", "\xd0\xbf\xd1\x80\xd0\xb8"};
    uint64_t s = 0x9E3779B97F4A7C15ull;
    size_t ok = 0, cases = 400;
    for (size_t k = 0; k < cases; k++) {
        char text[512];
        size_t n = 0;
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        size_t len = (size_t)(s >> 58);
        for (size_t j = 0; j < len; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            const char *a = atoms[(s >> 33) % (sizeof atoms / sizeof *atoms)];
            size_t al = strlen(a);
            memcpy(text + n, a, al);
            n += al;
        }
        if (n && text[0] == ' ') text[0] = 'x';
        size_t nid;
        int32_t *ids = enc(t, text, n, 0, &nid);
        int in_range = 1;
        for (size_t j = 0; j < nid; j++) in_range &= ids[j] >= 0 && ids[j] < tp_tok_vocab_size(t);
        char *d = NULL;
        size_t dl = 0;
        tp_status rc = tp_tok_decode(t, ids, nid, 0, &d, &dl);
        int same = 0;
        if (!rc) {
            int32_t *ids2;
            size_t n2;
            if (tp_tok_encode(t, d, dl, 0, &ids2, &n2) == TP_OK) {
                same = n2 == nid && memcmp(ids, ids2, nid * sizeof *ids) == 0;
                free(ids2);
            }
        }
        TT_CHECK(in_range && rc == TP_OK, "%s: random case %zu: ids out of range or decode failed", label, k);
        ok += same;
        free(d);
        free(ids);
    }
    /* decode(encode(x)) re-encodes to the same ids: the decoder inverts the model exactly */
    TT_CHECK(ok == cases, "%s: %zu of %zu random texts round-trip through decode and encode", label, ok, cases);
}

TT_TEST(tok_spm_random_text) {
    cJSON *base = base_json("llama-spm");
    if (base) {
        char *text = cJSON_PrintUnformatted(base);
        char *path = tt_path(tt_tmp_dir(), "spm-random.json");
        TT_CHECK(text && tt_write_text(path, text, strlen(text)), "write %s", path);
        tp_tokenizer *t = NULL;
        TT_CHECK(tp_tok_load_json(path, &t) == TP_OK, "%s", tp_errmsg());
        if (t) random_roundtrips(t, "tokenizer.json metaspace");
        tp_tok_free(t);
        free(text);
        free(path);
        cJSON_Delete(base);
    }
    static const char *vocabs[] = {"llama-spm", "gemma-4"};
    for (int i = 0; i < 2; i++) {
        tp_gguf *g;
        tp_tokenizer *t = load_vocab_gguf(vocabs[i], &g);
        if (t) random_roundtrips(t, vocabs[i]);
        tp_tok_free(t);
        tp_gguf_close(g);
    }
}
