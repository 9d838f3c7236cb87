/* Evaluation tests: the harness's string semantics (HellaSwag preprocess, WikiText detokenizer and
 * document split, capitalize, word counts), every task's prompts against the strings
 * lm-evaluation-harness built (fixtures from tests/ref/eval_ref.py: verbatim for the first items,
 * hashed for all of them), log-likelihoods and chosen answers against the harness's for a few
 * dozen items per task (all of them with TAPER_LONG=1), missing/malformed data errors, and the
 * generic --task-file format through the library and the CLI, and the tp_ppl_job / tp_eval_job calls
 * behind `taper ppl` / `taper eval` (JSON written vs results returned, precision restored). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "taper/eval.h"
#include "taper/model.h"
#include "taper/tasks.h"
#include "taper/util.h"
#include "tt.h"

#define FAST_ITEMS 24   /* items per task compared with the model in `make test` */
#define LL_TOL 1e-3     /* |taper - harness| per request log-likelihood */


static int long_mode(void) {
    const char *e = getenv("TAPER_LONG");
    return e && *e && *e != '0';
}

static cJSON *fixture(const char *task) {
    char rel[96];
    snprintf(rel, sizeof rel, "eval/%s.json", task);
    return tt_fixture_json(rel);
}

static uint64_t fnv_add(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001B3ULL;
    return h;
}

/* The hash eval_ref.py stores: FNV-1a 64 of ctx \0 cont \1 for each request. */
static void item_hash(const tp_task_item *it, char out[17]) {
    uint64_t h = 0xCBF29CE484222325ULL;
    for (int k = 0; k < it->n; k++) {
        h = fnv_add(h, it->ctx[k], strlen(it->ctx[k]));
        h = fnv_add(h, "\0", 1);
        h = fnv_add(h, it->cont[k], strlen(it->cont[k]));
        h = fnv_add(h, "\1", 1);
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static void text_hash(const char *s, char out[17]) {
    snprintf(out, 17, "%016llx", (unsigned long long)fnv_add(0xCBF29CE484222325ULL, s, strlen(s)));
}

/* The fixture's limit for a task (items per task; per subject for MMLU; 0 = all). */
static size_t fixture_limit(const cJSON *fx) {
    const cJSON *set = cJSON_GetObjectItem(fx, "settings");
    const cJSON *l = set ? cJSON_GetObjectItem(set, "limit") : NULL;
    return cJSON_IsNumber(l) ? (size_t)l->valuedouble : 0;
}

static const char *const MC_TASKS[] = {"arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu"};
#define N_MC (sizeof MC_TASKS / sizeof MC_TASKS[0])

/* How many items tests/ref/eval_ref.py writes per fixture (its defaults: --limit 500, --mmlu-limit 9
 * per subject = 57 x 9, --wikitext-limit 20 documents), and N_VERBATIM items kept verbatim: every
 * loop over a fixture asserts it compared exactly these, so a short fixture cannot pass. */
#define FX_VERBATIM 3
#define FX_WIKITEXT_DOCS 20
static size_t fixture_items(const char *task) {
    if (!strcmp(task, "mmlu")) return 57 * 9;
    if (!strcmp(task, "wikitext")) return FX_WIKITEXT_DOCS;
    return 500;
}

/* Keeps the first n items of t. */
static void truncate_task(tp_task *t, size_t n) {
    while (t->n_items > n) {
        tp_task_item *it = &t->items[--t->n_items];
        for (int k = 0; k < it->n; k++) {
            free(it->ctx[k]);
            free(it->cont[k]);
        }
        free(it->ctx);
        free(it->cont);
        free(it->norm_len);
    }
}

/* ---------------- string semantics (expected values from the harness's own functions) ---------------- */

static void check_str(char *got, const char *want, const char *what) {
    TT_CHECK(got && !strcmp(got, want), "%s: got \"%s\", want \"%s\"", what, got ? got : "(null)", want);
    free(got);
}

TT_TEST(eval_hellaswag_preprocess) {
    check_str(tp_hellaswag_preprocess(" [header] How to make a sling [title] Find a piece of fabric. [step] Cut  it  "
                                      "[substeps] now.  "),
              " How to make a sling. Find a piece of fabric. Cut it  now.", "tags");
    check_str(tp_hellaswag_preprocess("a [b] c [unclosed"), "a c [unclosed", "unclosed tag");
    check_str(tp_hellaswag_preprocess("x   y"), "x  y", "one pass of double spaces");
    check_str(tp_hellaswag_preprocess("[title] Start here [title]end"), " Start here. end", "title");
    check_str(tp_py_capitalize("the lady Named Bob"), "The lady named bob", "capitalize");
    check_str(tp_py_capitalize(""), "", "capitalize empty");
    check_str(tp_py_capitalize("\xC3\xA9lan VITAL"), "\xC3\x89lan vital", "capitalize latin-1");
}

TT_TEST(eval_wikitext_detokenize) {
    const char *in =
        " = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . He had a guest "
        "@-@ starring role on the television series The Bill in 2000 . This was followed by a \" starring role \" in "
        "the play Herons ( written by Simon Stephens ) , which was performed in 2001 at the Royal Court Theatre . \n \n"
        " = = Career = = \n \n The 1990s ' s ; 3 @,@ 000 km N [ a ] 20 \xC2\xB0 C ; { x } it 's the actors ' parts 's \n";
    const char *want =
        " = Robert Boulter =\n\nRobert Boulter is an English film, television and theatre actor. He had a "
        "guest-starring role on the television series The Bill in 2000. This was followed by a \"starring role\" in "
        "the play Herons (written by Simon Stephens), which was performed in 2001 at the Royal Court Theatre.\n\n== "
        "Career ==\n\nThe 1990s's; 3,000 km 1 [a] 20\xC2\xB0" "C; {x} it's the actors'parts's\n";
    char *out = NULL;
    TT_CHECK(tp_wikitext_detokenize(in, &out) == TP_OK, "%s", tp_errmsg());
    check_str(out, want, "detokenize");
    TT_CHECK(tp_py_count_words(in) == 97, "words %zu (re.split(r\"\\s+\") gives 97)", tp_py_count_words(in));
    TT_CHECK(tp_py_count_words("") == 1 && tp_py_count_words(" a  b ") == 4, "word count edge cases");
    TT_CHECK(tp_utf8_chars("a\xC3\xA9\xE2\x82\xAC") == 3, "chars");
}

TT_TEST(eval_wikitext_pages) {
    const char *t = " \n = A = \n \n a text \n = = Sec = = \n more \n \n = B = \n b \n = C = \n";
    char **p = NULL;
    size_t n = 0;
    TT_CHECK(tp_wikitext_pages(t, strlen(t), &p, &n) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(n == 3, "pages %zu, want 3", n);
    if (n == 3) {
        TT_CHECK(!strcmp(p[0], " = A = \n \n a text \n = = Sec = = \n more \n "), "page 0 \"%s\"", p[0]);
        TT_CHECK(!strcmp(p[1], " = B = \n b "), "page 1 \"%s\"", p[1]);
        TT_CHECK(!strcmp(p[2], " = C = \n"), "page 2 \"%s\"", p[2]);
    }
    for (size_t i = 0; i < n; i++) free(p[i]);
    free(p);
}

/* HFLM._encode_pair: trailing context whitespace moves onto the continuation; an empty context
 * is the prefix (BOS) token. */
TT_TEST(eval_encode_pair) {
    tp_model *m = tt_model();
    if (!m) {
        tt_skip("default model not found (make deps)");
        return;
    }
    int32_t *a = NULL, *b = NULL, *c = NULL, *d = NULL, *w = NULL;
    size_t na, nb, nc, nd, nw;
    TT_CHECK(tp_encode_pair(m->tok, "Question: is it?\nAnswer: ", "yes", &a, &na, &b, &nb) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(tp_encode_pair(m->tok, "Question: is it?\nAnswer:", " yes", &c, &nc, &d, &nd) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(na == nc && nb == nd && !memcmp(a, c, na * 4) && !memcmp(b, d, nb * 4), "trailing space moves");
    TT_CHECK(tp_tok_encode(m->tok, " yes", 4, 0, &w, &nw) == TP_OK && nw == nd && !memcmp(w, d, nw * 4),
             "continuation tokens = encode(\" yes\")");
    free(a);
    free(b);
    free(c);
    free(d);
    free(w);
    TT_CHECK(tp_encode_pair(m->tok, "", "Hello", &a, &na, &b, &nb) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(na == 1 && a[0] == tp_tok_bos(m->tok) && nb >= 1, "empty context -> [BOS]");
    free(a);
    free(b);
}

/* ---------------- prompts vs the harness ---------------- */

/* After tp_task_load failed with s: skips the test (returns 1) only when the data file it names
 * does not exist (TAPER_DATA points elsewhere); an unreadable or malformed file is a failure. */
static int skip_if_absent(const char *task, tp_status s) {
    const char *m = tp_errmsg(), *e = strstr(m, "(expected ");
    char path[1024] = "";
    if (e && sscanf(e + 10, "%1023[^;)]", path) != 1) path[0] = 0;
    if (s == TP_ERR_IO && path[0] && access(path, F_OK) != 0) {
        tt_skip("%s not found (TAPER_DATA)", path);
        return 1;
    }
    TT_CHECK(0, "task %s: loading failed for another reason than a missing file: %s", task, m);
    return 0;
}

/* The exact strings of the first items and the hash of every item's strings. */
static void check_formats(const char *name) {
    cJSON *fx = fixture(name);
    if (!fx) {
        tt_skip("fixture eval/%s.json missing (run tests/ref/eval_ref.py)", name);
        return;
    }
    tp_task *t = NULL;
    tp_status s = tp_task_load(name, tt_data_dir(), fixture_limit(fx), &t);
    if (s && skip_if_absent(name, s)) {
        cJSON_Delete(fx);
        return;
    }
    TT_CHECK(s == TP_OK, "%s: %s", name, tp_errmsg());
    const cJSON *items = cJSON_GetObjectItem(fx, "items");
    size_t n = (size_t)cJSON_GetArraySize(items), bad = 0, verbatim = 0, compared = 0;
    TT_CHECK(n == fixture_items(name), "%s: fixture has %zu items (expected %zu)", name, n, fixture_items(name));
    TT_CHECK(t && t->n_items == n, "%s: %zu items, fixture has %zu", name, t ? t->n_items : 0, n);
    for (size_t i = 0; t && i < n && i < t->n_items; i++) {
        compared++;
        const cJSON *x = cJSON_GetArrayItem(items, (int)i);
        const tp_task_item *it = &t->items[i];
        const cJSON *req = cJSON_GetObjectItem(x, "requests");
        if (req) {
            verbatim++;
            TT_CHECK(cJSON_GetArraySize(req) == it->n, "%s item %zu: %d requests, harness %d", name, i, it->n,
                     cJSON_GetArraySize(req));
            for (int k = 0; k < it->n && k < cJSON_GetArraySize(req); k++) {
                const cJSON *pr = cJSON_GetArrayItem(req, k);
                const char *c = cJSON_GetArrayItem(pr, 0)->valuestring, *d = cJSON_GetArrayItem(pr, 1)->valuestring;
                TT_CHECK(!strcmp(it->ctx[k], c), "%s item %zu req %d context:\n  taper   \"%s\"\n  harness \"%s\"",
                         name, i, k, it->ctx[k], c);
                TT_CHECK(!strcmp(it->cont[k], d), "%s item %zu req %d continuation: \"%s\" vs \"%s\"", name, i, k,
                         it->cont[k], d);
            }
        }
        char h[17];
        item_hash(it, h);
        if (strcmp(h, cJSON_GetObjectItem(x, "hash")->valuestring)) {
            if (bad < 3) TT_CHECK(0, "%s item %zu: prompt strings differ from the harness's", name, i);
            bad++;
        }
        const cJSON *g = cJSON_GetObjectItem(x, "gold");
        TT_CHECK(cJSON_IsNumber(g) && it->gold == (int)g->valuedouble, "%s item %zu: gold %d vs %g", name, i,
                 it->gold, cJSON_IsNumber(g) ? g->valuedouble : -1.0);
    }
    TT_CHECK(bad == 0, "%s: %zu of %zu items' prompts differ", name, bad, n);
    TT_CHECK(compared == fixture_items(name), "%s: compared %zu items (expected %zu)", name, compared,
             fixture_items(name));
    TT_CHECK(verbatim == FX_VERBATIM, "%s: %zu verbatim items in the fixture (expected %d)", name, verbatim,
             FX_VERBATIM);
    tt_note("%s: %zu items' prompts equal the harness's (%zu verbatim, the rest by hash)", name, n - bad, verbatim);
    tp_task_free(t);
    cJSON_Delete(fx);
}

TT_TEST(eval_format_arc_easy) { check_formats("arc_easy"); }
TT_TEST(eval_format_arc_challenge) { check_formats("arc_challenge"); }
TT_TEST(eval_format_hellaswag) { check_formats("hellaswag"); }
TT_TEST(eval_format_piqa) { check_formats("piqa"); }
TT_TEST(eval_format_winogrande) { check_formats("winogrande"); }
TT_TEST(eval_format_mmlu) { check_formats("mmlu"); }

TT_TEST(eval_format_wikitext) {
    cJSON *fx = fixture("wikitext");
    if (!fx) {
        tt_skip("fixture eval/wikitext.json missing (run tests/ref/eval_ref.py)");
        return;
    }
    tp_task *t = NULL;
    tp_status s = tp_task_load("wikitext", tt_data_dir(), fixture_limit(fx), &t);
    if (s && skip_if_absent("wikitext", s)) {
        cJSON_Delete(fx);
        return;
    }
    TT_CHECK(s == TP_OK, "%s", tp_errmsg());
    const cJSON *docs = cJSON_GetObjectItem(fx, "docs");
    size_t n = (size_t)cJSON_GetArraySize(docs), bad = 0, compared = 0;
    TT_CHECK(n == FX_WIKITEXT_DOCS, "fixture has %zu documents (expected %d)", n, FX_WIKITEXT_DOCS);
    TT_CHECK(t && t->n_items == n, "%zu documents, harness %zu", t ? t->n_items : 0, n);
    for (size_t i = 0; t && i < n && i < t->n_items; i++) {
        compared++;
        const cJSON *d = cJSON_GetArrayItem(docs, (int)i);
        char h[17];
        text_hash(t->items[i].cont[0], h);
        int ok = !strcmp(h, cJSON_GetObjectItem(d, "hash")->valuestring) &&
                 t->items[i].words == (size_t)cJSON_GetObjectItem(d, "words")->valuedouble &&
                 t->items[i].bytes == (size_t)cJSON_GetObjectItem(d, "bytes")->valuedouble;
        if (!ok && bad++ < 3)
            TT_CHECK(0, "document %zu: text/words/bytes differ (%zu words, %zu bytes)", i, t->items[i].words,
                     t->items[i].bytes);
    }
    TT_CHECK(compared == FX_WIKITEXT_DOCS, "compared %zu documents (expected %d)", compared, FX_WIKITEXT_DOCS);
    TT_CHECK(bad == 0, "%zu of %zu documents differ from the harness's", bad, n);
    tt_note("wikitext: %zu documents' text, words and bytes equal the harness's", n - bad);
    tp_task_free(t);
    cJSON_Delete(fx);
}

/* ---------------- scores vs the harness ---------------- */

typedef struct {
    size_t n, agree, agree_norm, ll_bad;
    double max_diff, acc, acc_norm;   /* taper - harness */
    double se, se_ref, se_norm, se_norm_ref; /* standard errors, taper and harness (NAN if absent) */
} cmp_stats;

/* The harness's metric key of a task's fixture (MMLU: its group "mmlu"), NAN if absent. */
static double fixture_metric(const cJSON *fx, const char *task, const char *key) {
    const cJSON *m = cJSON_GetObjectItem(fx, "metrics");
    if (m && !strcmp(task, "mmlu")) m = cJSON_GetObjectItem(m, "mmlu");
    const cJSON *v = m ? cJSON_GetObjectItem(m, key) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Runs task name on its first n_items fixture items (all if 0) and compares with the harness;
 * st->n stays 0 (with a note saying why) when the model, fixture or data is missing. */
static void compare_scores(const char *name, size_t n_items, cmp_stats *st) {
    memset(st, 0, sizeof *st);
    tp_model *m = tt_model();
    if (!m) {
        tt_note("%s: default model not found (make deps)", name);
        return;
    }
    cJSON *fx = fixture(name);
    if (!fx) {
        tt_note("%s: fixture eval/%s.json missing (tests/ref/eval_ref.py)", name, name);
        return;
    }
    tp_task *t = NULL;
    tp_status s = tp_task_load(name, tt_data_dir(), fixture_limit(fx), &t);
    if (s == TP_ERR_IO) {
        tt_note("%s", tp_errmsg());
        cJSON_Delete(fx);
        return;
    }
    TT_CHECK(s == TP_OK, "%s", tp_errmsg());
    const cJSON *items = cJSON_GetObjectItem(fx, "items");
    TT_CHECK((size_t)cJSON_GetArraySize(items) == fixture_items(name), "%s: fixture has %d items (expected %zu)", name,
             cJSON_GetArraySize(items), fixture_items(name));
    if (!t || (size_t)cJSON_GetArraySize(items) != t->n_items) {
        TT_CHECK(0, "%s: item count differs from the fixture", name);
        tp_task_free(t);
        cJSON_Delete(fx);
        return;
    }
    if (n_items && n_items < t->n_items) truncate_task(t, n_items);
    tp_task_result r;
    s = tp_task_run(m, t, NULL, NULL, &r);
    TT_CHECK(s == TP_OK, "%s: %s", name, tp_errmsg());
    if (s) {
        tp_task_free(t);
        cJSON_Delete(fx);
        return;
    }
    double acc = 0, accn = 0;
    for (size_t i = 0; i < t->n_items; i++) {
        const cJSON *x = cJSON_GetArrayItem(items, (int)i);
        const cJSON *ll = cJSON_GetObjectItem(x, "ll");
        for (int k = 0; k < t->items[i].n; k++) {
            double d = fabs(r.items[i].ll[k] - cJSON_GetArrayItem(ll, k)->valuedouble);
            if (d > st->max_diff) st->max_diff = d;
            if (d > LL_TOL) st->ll_bad++;
        }
        int pred = cJSON_GetObjectItem(x, "pred")->valueint;
        int gold = cJSON_GetObjectItem(x, "gold")->valueint;
        st->agree += r.items[i].pred == pred;
        acc += pred == gold;
        const cJSON *pn = cJSON_GetObjectItem(x, "pred_norm");
        if (pn) {
            st->agree_norm += r.items[i].pred_norm == pn->valueint;
            accn += pn->valueint == gold;
        } else {
            st->agree_norm++;
        }
    }
    st->n = t->n_items;
    st->se = r.acc_stderr;
    st->se_norm = r.acc_norm_stderr;
    st->se_ref = fixture_metric(fx, name, "acc_stderr");
    st->se_norm_ref = fixture_metric(fx, name, "acc_norm_stderr");
    st->acc = r.acc - acc / (double)t->n_items;
    st->acc_norm = t->has_acc_norm ? r.acc_norm - accn / (double)t->n_items : 0;
    tt_note("%s: %zu items in %.1f s, acc %.4f (harness %.4f), per-item agreement %zu/%zu (acc_norm %zu/%zu), "
            "max |ll diff| %.2e",
            name, st->n, r.seconds, r.acc, acc / (double)t->n_items, st->agree, st->n, st->agree_norm, st->n,
            st->max_diff);
    tp_task_result_free(&r);
    tp_task_free(t);
    cJSON_Delete(fx);
}

TT_TEST(eval_scores_vs_harness) {
    int ran = 0;
    for (size_t k = 0; k < N_MC; k++) {
        cmp_stats st;
        compare_scores(MC_TASKS[k], FAST_ITEMS, &st);
        if (!st.n) continue;
        ran++;
        TT_CHECK(st.n == FAST_ITEMS, "%s: compared %zu items (expected %d)", MC_TASKS[k], st.n, FAST_ITEMS);
        TT_CHECK(st.ll_bad == 0, "%s: %zu log-likelihoods differ by more than %g (max %.2e)", MC_TASKS[k], st.ll_bad,
                 LL_TOL, st.max_diff);
        TT_CHECK(st.agree == st.n && st.agree_norm == st.n, "%s: chosen answers differ (%zu, %zu of %zu agree)",
                 MC_TASKS[k], st.agree, st.agree_norm, st.n);
    }
    if (!ran) tt_skip("no task could run: fixtures, model or data missing (see the notes)");
    else if (ran != (int)N_MC) tt_skip("%d of %d tasks could not run (see the notes)", (int)N_MC - ran, (int)N_MC);
}

/* The shortest WikiText documents through the rolling windows (all 20 of the fixture with TAPER_LONG). */
static void wikitext_vs_harness(int all) {
    tp_model *m = tt_model();
    cJSON *fx = fixture("wikitext");
    if (!m || !fx) {
        tt_skip("model or fixture eval/wikitext.json missing");
        cJSON_Delete(fx);
        return;
    }
    tp_task *t = NULL;
    tp_status s = tp_task_load("wikitext", tt_data_dir(), fixture_limit(fx), &t);
    if (s && skip_if_absent("wikitext", s)) {
        cJSON_Delete(fx);
        return;
    }
    TT_CHECK(s == TP_OK, "%s", tp_errmsg());
    const cJSON *docs = cJSON_GetObjectItem(fx, "docs");
    TT_CHECK(cJSON_GetArraySize(docs) == FX_WIKITEXT_DOCS, "wikitext: fixture has %d documents (expected %d)",
             cJSON_GetArraySize(docs), FX_WIKITEXT_DOCS);
    if (!t || (size_t)cJSON_GetArraySize(docs) != t->n_items) {
        TT_CHECK(0, "wikitext: document count differs from the fixture");
        tp_task_free(t);
        cJSON_Delete(fx);
        return;
    }
    /* fast: the two shortest documents, moved to the front (fidx: their fixture indices) */
    size_t *fidx = malloc(t->n_items * sizeof *fidx), keep = t->n_items;
    for (size_t i = 0; i < t->n_items; i++) fidx[i] = i;
    if (!all) {
        keep = t->n_items < 2 ? t->n_items : 2;
        for (size_t k = 0; k < keep; k++) {
            size_t best = k;
            for (size_t i = k; i < t->n_items; i++)
                if (t->items[i].bytes < t->items[best].bytes) best = i;
            tp_task_item tmp = t->items[k];
            t->items[k] = t->items[best];
            t->items[best] = tmp;
            size_t f = fidx[k];
            fidx[k] = fidx[best];
            fidx[best] = f;
        }
    }
    truncate_task(t, keep);
    tp_task_result r;
    s = tp_task_run(m, t, NULL, NULL, &r);
    TT_CHECK(s == TP_OK, "%s", tp_errmsg());
    if (!s) {
        double ll = 0, max_rel = 0;
        size_t words = 0, compared = 0, want = all ? FX_WIKITEXT_DOCS : 2;
        for (size_t i = 0; i < t->n_items; i++) {
            compared++;
            const cJSON *d = cJSON_GetArrayItem(docs, (int)fidx[i]);
            double ref = cJSON_GetObjectItem(d, "ll")->valuedouble;
            double rel = fabs(r.items[i].ll[0] - ref) / fabs(ref);
            if (rel > max_rel) max_rel = rel;
            TT_CHECK(rel < 1e-5 || fabs(r.items[i].ll[0] - ref) < LL_TOL, "document %zu: ll %.4f vs harness %.4f",
                     fidx[i], r.items[i].ll[0], ref);
            ll += ref;
            words += t->items[i].words;
        }
        TT_CHECK(compared == want, "wikitext: compared %zu documents (expected %zu, %s)", compared, want,
                 all ? "TAPER_LONG: all" : "the two shortest");
        double wp = exp(-ll / (double)words);
        tt_note("wikitext: %zu documents in %.1f s, word_perplexity %.4f (harness, same docs, %.4f), max rel ll diff "
                "%.1e",
                t->n_items, r.seconds, r.word_perplexity, wp, max_rel);
        TT_NEAR(r.word_perplexity, wp, 0, 1e-4);
        if (all) {
            const cJSON *mt = cJSON_GetObjectItem(fx, "metrics");
            TT_NEAR(r.word_perplexity, cJSON_GetObjectItem(mt, "word_perplexity")->valuedouble, 0, 1e-4);
            TT_NEAR(r.byte_perplexity, cJSON_GetObjectItem(mt, "byte_perplexity")->valuedouble, 0, 1e-5);
            TT_NEAR(r.bits_per_byte, cJSON_GetObjectItem(mt, "bits_per_byte")->valuedouble, 0, 1e-4);
        }
        tp_task_result_free(&r);
    }
    free(fidx);
    tp_task_free(t);
    cJSON_Delete(fx);
}

TT_TEST(eval_wikitext_vs_harness) { wikitext_vs_harness(0); }

/* TAPER_LONG: every fixture item (>= 500 per task): acc/acc_norm within 0.2 points of the
 * harness's, >= 99 % of chosen answers identical. */
TT_TEST(eval_long_vs_harness) {
    if (!long_mode()) {
        tt_skip_optional("set TAPER_LONG=1 (make test-long) to score every fixture item");
        return;
    }
    int ran = 0;
    for (size_t k = 0; k < N_MC; k++) {
        cmp_stats st;
        compare_scores(MC_TASKS[k], 0, &st);
        if (!st.n) continue;
        ran++;
        TT_CHECK(st.n == fixture_items(MC_TASKS[k]), "%s: compared %zu items (expected %zu, TAPER_LONG: all)",
                 MC_TASKS[k], st.n, fixture_items(MC_TASKS[k]));
        TT_CHECK(fabs(st.acc) <= 0.002, "%s: acc differs from the harness's by %.4f", MC_TASKS[k], st.acc);
        TT_CHECK(fabs(st.acc_norm) <= 0.002, "%s: acc_norm differs from the harness's by %.4f", MC_TASKS[k],
                 st.acc_norm);
        TT_CHECK(st.agree * 100 >= st.n * 99 && st.agree_norm * 100 >= st.n * 99,
                 "%s: chosen answers agree on %zu (acc_norm %zu) of %zu items, want >= 99 %%", MC_TASKS[k], st.agree,
                 st.agree_norm, st.n);
        TT_CHECK(st.max_diff < 1e-2, "%s: max log-likelihood difference %.2e", MC_TASKS[k], st.max_diff);
        /* with the same answers, the standard errors are the harness's formulas to the digit */
        if (st.agree == st.n) TT_NEAR(st.se, st.se_ref, 1e-9, 1e-9);
        if (st.agree_norm == st.n && !isnan(st.se_norm_ref)) TT_NEAR(st.se_norm, st.se_norm_ref, 1e-9, 1e-9);
    }
    if (!ran) tt_note("no multiple-choice task could run (see the notes)");
    else if (ran != (int)N_MC) tt_skip("%d of %d tasks could not run (see the notes)", (int)N_MC - ran, (int)N_MC);
    wikitext_vs_harness(1);
}

/* ---------------- errors ---------------- */

static char *write_tmp(const char *name, const char *text) {
    char *p = tt_path(tt_tmp_dir(), name);
    FILE *f = fopen(p, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return p;
}

/* A data dir under tmp with one file of task's layout holding text. */
static char *data_dir_with(const char *sub, const char *file, const char *text) {
    char *root = tt_path(tt_tmp_dir(), "data_bad");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s/%s'", root, root, sub);
    if (system(cmd) != 0) TT_CHECK(0, "mkdir %s", root);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", root, sub, file);
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return root;
}

static void expect_fail(const char *task, const char *dir, tp_status want, const char *needle) {
    tp_task *t = NULL;
    tp_status s = tp_task_load(task, dir, 0, &t);
    TT_CHECK(s == want && !t, "%s: status %s, want %s", task, tp_status_name(s), tp_status_name(want));
    TT_CHECK(strstr(tp_errmsg(), needle) != NULL, "%s: message \"%s\" should mention \"%s\"", task, tp_errmsg(),
             needle);
    tp_task_free(t);
}

TT_TEST(eval_missing_and_malformed_data) {
    char *none = tt_path(tt_tmp_dir(), "no_such_data");
    expect_fail("arc_easy", none, TP_ERR_IO, "no_such_data/arc_easy/arc_easy.jsonl");
    expect_fail("hellaswag", none, TP_ERR_IO, "hellaswag/hellaswag_val_full.txt");
    expect_fail("piqa", none, TP_ERR_IO, "piqa/valid.jsonl");
    expect_fail("winogrande", none, TP_ERR_IO, "winogrande/winogrande.jsonl");
    expect_fail("mmlu", none, TP_ERR_IO, "mmlu/test");
    expect_fail("wikitext", none, TP_ERR_IO, "wikitext2/wiki.test.raw");
    expect_fail("boolq", none, TP_ERR_ARG, "unknown task");
    free(none);
    char *d;
    d = data_dir_with("arc_easy", "arc_easy.jsonl",
                      "{\"query\": \"Question: q\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n"
                      "{\"query\": \"Question: q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n");
    expect_fail("arc_easy", d, TP_ERR_FORMAT, "line 2");
    free(d);
    d = data_dir_with("arc_easy", "arc_easy.jsonl", "{\"query\": \"Question: q\", \"choices\": [\"a\", \"b\"]\n");
    expect_fail("arc_easy", d, TP_ERR_FORMAT, "line 1");
    free(d);
    d = data_dir_with("hellaswag", "hellaswag_val_full.txt", "Label: ctx\n1\na\nb\nc\n");
    expect_fail("hellaswag", d, TP_ERR_FORMAT, "5 of its 6 lines");
    free(d);
    d = data_dir_with("hellaswag", "hellaswag_val_full.txt", "no colon here\n1\na\nb\nc\nd\n");
    expect_fail("hellaswag", d, TP_ERR_FORMAT, "line 1");
    free(d);
    d = data_dir_with("winogrande", "winogrande.jsonl", "{\"context_options\": [\"a\"], \"continuation\": \"b\", "
                                                        "\"gold\": 0}\n");
    expect_fail("winogrande", d, TP_ERR_FORMAT, "context_options");
    free(d);
    d = data_dir_with("mmlu/test", "anatomy_test.csv",
                      "question,choice0,choice1,choice2,choice3,answer\n\"q\",a,b,c,d,7\n");
    expect_fail("mmlu", d, TP_ERR_FORMAT, "anatomy_test.csv row 2");
    free(d);
    d = data_dir_with("mmlu/test", "anatomy_test.csv",
                      "question,choice0,choice1,choice2,choice3,answer\n\"unterminated,a,b,c,d,1\n");
    expect_fail("mmlu", d, TP_ERR_FORMAT, "anatomy_test.csv");
    free(d);
    /* PIQA: fewer labels than items */
    d = data_dir_with("piqa", "valid.jsonl", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n"
                                             "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n");
    char lp[4096];
    snprintf(lp, sizeof lp, "%s/piqa/valid-labels.lst", d);
    FILE *f = fopen(lp, "w");
    if (f) {
        fputs("1\n", f);
        fclose(f);
    }
    expect_fail("piqa", d, TP_ERR_FORMAT, "valid-labels.lst");
    free(d);
}

TT_TEST(eval_mmlu_csv_quoting) {
    char *d = data_dir_with("mmlu/test", "college_physics_test.csv",
                            "question,choice0,choice1,choice2,choice3,answer\r\n"
                            "\"  A \"\"quoted\"\", multi\nline question \",\"x, y\",2,\"\",0.50,3\r\n");
    tp_task *t = NULL;
    TT_CHECK(tp_task_load("mmlu", d, 0, &t) == TP_OK, "%s", tp_errmsg());
    if (t) {
        TT_CHECK(t->n_items == 1 && t->n_groups == 1 && !strcmp(t->group_cat[0], "stem"), "one stem item");
        const char *want = "The following are multiple choice questions (with answers) about college physics.\n\n"
                           "A \"quoted\", multi\nline question\nA. x, y\nB. 2\nC. \nD. 0.50\nAnswer:";
        TT_CHECK(t->n_items == 1 && !strcmp(t->items[0].ctx[0], want), "context \"%s\"",
                 t->n_items ? t->items[0].ctx[0] : "");
        TT_CHECK(t->n_items == 1 && !strcmp(t->items[0].cont[3], " D") && t->items[0].gold == 3, "choice D gold");
    }
    tp_task_free(t);
    free(d);
}

/* ---------------- generic task files ---------------- */

static const char TINY_MC[] =
    "{\"context\": \"Question: Which statement best explains why photosynthesis is the foundation of most food "
    "webs?\\nAnswer:\", \"choices\": [\"Sunlight is the source of energy for nearly all ecosystems.\", \"Most "
    "ecosystems are found on land instead of in water.\", \"Carbon dioxide is more available than other gases.\", "
    "\"The producers in all ecosystems are plants.\"], \"gold\": 0}\n"
    "\n"
    "{\"query\": \"The capital of France is\", \"choices\": [\"Paris\", \"a small town in Italy\"], \"gold\": 0}\n"
    "{\"contexts\": [\"The cat chased the mouse, so the cat\", \"The cat chased the mouse, so the mouse\"], "
    "\"continuation\": \"ran away.\", \"gold\": 1}\n";

static const char TINY_LL[] = "{\"context\": \"One, two, three, four,\", \"continuation\": \"five\"}\n"
                              "{\"context\": \"The capital of France is\", \"continuation\": \"Paris\", "
                              "\"target_delimiter\": \" \"}\n";

TT_TEST(eval_task_file) {
    char *p = write_tmp("tiny_mc.jsonl", TINY_MC);
    tp_task *t = NULL;
    TT_CHECK(tp_task_load_file(p, 0, &t) == TP_OK, "%s", tp_errmsg());
    if (t) {
        TT_CHECK(t->kind == TP_TASK_MC && t->n_items == 3 && !t->has_acc_norm, "3 MC items, acc_norm off (per-choice "
                                                                               "contexts)");
        TT_CHECK(!strcmp(t->name, "tiny_mc"), "name %s", t->name);
        TT_CHECK(t->n_items == 3 && !strcmp(t->items[1].cont[0], " Paris") && t->items[1].norm_len[0] == 5,
                 "choice with delimiter");
        TT_CHECK(t->n_items == 3 && !strcmp(t->items[2].cont[1], " ran away.") && t->items[2].gold == 1,
                 "per-choice contexts");
    }
    tp_model *m = tt_model();
    if (m && t) {
        tp_task_result r;
        TT_CHECK(tp_task_run(m, t, NULL, NULL, &r) == TP_OK, "%s", tp_errmsg());
        /* item 0 is ARC-Easy's first item: the harness's log-likelihoods */
        const double want[4] = {-23.5434, -34.063, -32.4486, -29.2241};
        for (int k = 0; k < 4; k++) TT_NEAR(r.items[0].ll[k], want[k], LL_TOL, 0);
        TT_CHECK(r.items[0].pred == 0 && r.items[1].pred == 0, "preds %d %d", r.items[0].pred, r.items[1].pred);
        tp_task_result_free(&r);
    }
    tp_task_free(t);
    free(p);
    /* continuation items: log-likelihood and greedy exact match */
    p = write_tmp("tiny_ll.jsonl", TINY_LL);
    TT_CHECK(tp_task_load_file(p, 0, &t) == TP_OK, "%s", tp_errmsg());
    if (t && m) {
        TT_CHECK(t->kind == TP_TASK_LL && t->n_items == 2, "LL kind");
        tp_task_result r;
        TT_CHECK(tp_task_run(m, t, NULL, NULL, &r) == TP_OK, "%s", tp_errmsg());
        TT_CHECK(r.items[0].greedy[0] == 1, "\" five\" should be the greedy continuation (ll %.4f)", r.items[0].ll[0]);
        TT_CHECK(r.items[0].ll[0] < 0 && r.items[0].ll[0] > -3, "ll of \" five\" = %.4f", r.items[0].ll[0]);
        TT_NEAR(r.perplexity, exp(-(r.items[0].ll[0] + r.items[1].ll[0]) / 2), 1e-9, 1e-9);
        tp_task_result_free(&r);
    }
    tp_task_free(t);
    free(p);
    /* malformed files */
    static const struct {
        const char *text, *needle;
    } bad[] = {
        {"{\"context\": \"a\", \"choices\": [\"x\"], \"gold\": 3}\n", "\"gold\" must be an index"},
        {"{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0}\n{\"context\": \"a\", \"continuation\": "
         "\"b\"}\n",
         "different kinds"},
        {"[1, 2]\n", "not a JSON object"},
        {"{\"choices\": [\"x\"], \"gold\": 0}\n", "expected one of"},
        {"\n\n", "no items"},
        {"{\"context\": \"a\", \"continuation\": \"b\", \"target_delimiter\": 3}\n", "target_delimiter"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        p = write_tmp("bad.jsonl", bad[k].text);
        t = NULL;
        tp_status s = tp_task_load_file(p, 0, &t);
        TT_CHECK(s == TP_ERR_FORMAT && !t && strstr(tp_errmsg(), bad[k].needle), "bad file %zu: %s: %s", k,
                 tp_status_name(s), tp_errmsg());
        tp_task_free(t);
        free(p);
    }
}

/* ---------------- the jobs behind `taper ppl` / `taper eval` ---------------- */

static cJSON *read_json_file(const char *path) {
    char *text = NULL;
    cJSON *j = NULL;
    if (tp_read_file(path, &text, NULL) == TP_OK) j = cJSON_Parse(text);
    free(text);
    return j;
}

static double json_num(const cJSON *root, const char *path) {
    const cJSON *x = tp_json_at(root, path);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

TT_TEST(eval_ppl_job) {
    const char *mp = tt_model_path(), *lic = "/usr/share/common-licenses/GPL-3";
    FILE *f = fopen(lic, "rb");
    if (!mp || !f) {
        if (f) fclose(f);
        tt_skip("the default model or %s is missing", lic);
        return;
    }
    fclose(f);
    char *js = tt_path(tt_tmp_dir(), "ppl_job.json");
    tp_ppl_job job;
    tp_ppl_job_default(&job);
    TT_CHECK(job.ctx == 512 && job.max_chunks == 0 && !job.precision && !job.json_path, "the CLI's defaults");
    job.model = mp;
    job.data = lic;
    job.ctx = 64;
    job.max_chunks = 2;
    job.json_path = js;
    tp_ppl_job_result r;
    TT_CHECK(tp_ppl_job_run(&job, &r) == TP_OK, "%s", tp_errmsg());
    TT_CHECK(r.ctx == 64 && r.r[0].n_chunks == 2 && r.r[1].n_chunks == 2 && r.bytes > 30000 && r.tokens > 128,
             "ctx %d, chunks %zu/%zu, %zu bytes, %zu tokens", r.ctx, r.r[0].n_chunks, r.r[1].n_chunks, r.bytes,
             r.tokens);
    /* the JSON written holds the numbers returned (cJSON prints 15 significant digits when they read
     * back within an ulp or so, hence the tolerance) */
    cJSON *j = read_json_file(js);
    TT_CHECK(j && json_num(j, "tokens") == (double)r.tokens && json_num(j, "ctx") == 64 &&
                 json_num(j, "results.0.scored_tokens") == (double)r.r[0].n_scored,
             "JSON %s: tokens, ctx, scored tokens", js);
    TT_NEAR(json_num(j, "results.0.ppl"), r.r[0].ppl, 0, 1e-14);
    TT_NEAR(json_num(j, "results.1.ppl"), r.r[1].ppl, 0, 1e-14);
    TT_NEAR(json_num(j, "results.0.nll_sum"), r.r[0].nll_sum, 0, 1e-14);
    const cJSON *prec = tp_json_at(j, "results.0.precision");
    TT_CHECK(cJSON_IsString(prec) && !strcmp(prec->valuestring, "fp32"), "precision fp32 in the JSON");
    cJSON_Delete(j);
    /* and the same numbers as tp_perplexity on the same tokens */
    tp_model *m = tt_model();
    char *text = NULL;
    size_t len = 0, n = 0;
    int32_t *ids = NULL;
    if (m && tp_read_file(lic, &text, &len) == TP_OK && tp_tok_encode(m->tok, text, len, 0, &ids, &n) == TP_OK) {
        tp_ppl_result ref[2];
        int32_t bos = tp_tok_adds_bos(m->tok) ? tp_tok_bos(m->tok) : -1;
        TT_CHECK(tp_perplexity(m, ids, n, 64, bos, 2, NULL, ref) == TP_OK, "%s", tp_errmsg());
        TT_CHECK(n == r.tokens && len == r.bytes, "tokens %zu vs %zu", n, r.tokens);
        for (int p = 0; p < 2; p++) {
            TT_NEAR(r.r[p].ppl, ref[p].ppl, 0, 1e-12);
            TT_CHECK(r.r[p].n_scored == ref[p].n_scored, "scored %zu vs %zu", r.r[p].n_scored, ref[p].n_scored);
        }
    }
    free(ids);
    free(text);
    /* the job's precision holds for its duration only; errors name the job's fields */
    const char *before = tp_precision_name();
    job.precision = "bf16";
    job.max_chunks = 1;
    TT_CHECK(tp_ppl_job_run(&job, &r) == TP_OK && !strcmp(r.precision, "bf16"), "bf16 run: %s", tp_errmsg());
    TT_CHECK(!strcmp(tp_precision_name(), before), "precision restored to %s, is %s", before, tp_precision_name());
    j = read_json_file(js);
    prec = tp_json_at(j, "results.1.precision");
    TT_CHECK(cJSON_IsString(prec) && !strcmp(prec->valuestring, "bf16"), "precision bf16 in the JSON");
    cJSON_Delete(j);
    job.data = "/nonexistent/taper.txt";
    TT_CHECK(tp_ppl_job_run(&job, &r) == TP_ERR_IO && strstr(tp_errmsg(), "/nonexistent/taper.txt"), "%s",
             tp_errmsg());
    TT_CHECK(!strcmp(tp_precision_name(), before), "precision restored after a failure");
    job.ctx = 2;
    TT_CHECK(tp_ppl_job_run(&job, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "ctx"), "%s", tp_errmsg());
    job.precision = "fp8";
    TT_CHECK(tp_ppl_job_run(&job, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "fp8"), "%s", tp_errmsg());
    free(js);
}

TT_TEST(eval_eval_job) {
    const char *mp = tt_model_path();
    if (!mp) {
        tt_skip("the default model is missing");
        return;
    }
    char *p = write_tmp("job_mc.jsonl", TINY_MC), *js = tt_path(tt_tmp_dir(), "eval_job.json");
    const char *files[1] = {p};
    tp_eval_job job;
    tp_eval_job_default(&job);
    TT_CHECK(job.batch == 8 && !job.tasks && !job.limit && !job.max_length, "the CLI's defaults");
    job.model = mp;
    job.task_files = files;
    job.n_task_files = 1;
    job.json_path = js;
    tp_eval_job_result r;
    TT_CHECK(tp_eval_job_run(&job, &r) == TP_OK, "%s", tp_errmsg());
    if (r.n_tasks == 1) {
        /* item 0 is ARC-Easy's first item: the harness's log-likelihoods */
        const double want[4] = {-23.5434, -34.063, -32.4486, -29.2241};
        for (int k = 0; k < 4; k++) TT_NEAR(r.results[0].items[0].ll[k], want[k], LL_TOL, 0);
        TT_CHECK(r.max_length == 8192, "max_length %d: SmolLM2's context", r.max_length);
        cJSON *j = read_json_file(js);
        TT_CHECK(j && json_num(j, "settings.max_length") == r.max_length && !tp_json_at(j, "macro_average") &&
                     cJSON_GetArraySize(tp_json_at(j, "tasks.0.samples")) == 3,
                 "JSON %s: settings, 3 samples, no macro average for one task", js);
        TT_NEAR(json_num(j, "tasks.0.metrics.acc"), r.results[0].acc, 0, 1e-14);
        TT_NEAR(json_num(j, "tasks.0.samples.0.ll.1"), r.results[0].items[0].ll[1], 0, 1e-14);
        cJSON_Delete(j);
    } else {
        TT_CHECK(0, "one task, got %d", r.n_tasks);
    }
    tp_eval_job_result_free(&r);
    /* bad task lists fail before the model is loaded, naming the task */
    job.tasks = "arc_easy,boolq";
    job.data_dir = "/nonexistent/taper";
    TT_CHECK(tp_eval_job_run(&job, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "'boolq'") && r.n_tasks == 0, "%s",
             tp_errmsg());
    job.tasks = "arc_easy";
    TT_CHECK(tp_eval_job_run(&job, &r) == TP_ERR_IO && strstr(tp_errmsg(), "/nonexistent/taper"), "%s",
             tp_errmsg());
    job.data_dir = NULL;
    TT_CHECK(tp_eval_job_run(&job, &r) == TP_ERR_ARG && strstr(tp_errmsg(), "data_dir"), "%s", tp_errmsg());
    const char *names[8];
    int n = 0;
    TT_CHECK(tp_task_list_parse("piqa,,all", names, 8, &n) == TP_OK && n == 8 && !strcmp(names[0], "piqa") &&
                 !strcmp(names[1], "arc_easy"),
             "list: %d names", n);
    TT_CHECK(tp_task_list_parse("piqa,arc_easy", names, 1, &n) == TP_ERR_ARG, "too many");
    free(p);
    free(js);
}

/* ---------------- CLI ---------------- */

static int run_cli(const char *args) {
    const char *bin = getenv("TAPER_BIN");
    if (!bin) return -1;
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "TAPER_PROGRESS=0 '%s' %s >/dev/null 2>&1", bin, args);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TT_TEST(eval_cli) {
    const char *mp = tt_model_path();
    if (!getenv("TAPER_BIN") || !mp) {
        tt_skip("TAPER_BIN or the default model not set");
        return;
    }
    char *p = write_tmp("cli_mc.jsonl", TINY_MC), *js = tt_path(tt_tmp_dir(), "cli_out.json");
    char args[8192];
    snprintf(args, sizeof args, "eval '%s' --task-file '%s' --json '%s'", mp, p, js);
    TT_CHECK(run_cli(args) == 0, "taper %s", args);
    char *text = NULL;
    cJSON *j = NULL;
    if (tp_read_file(js, &text, NULL) == TP_OK) j = cJSON_Parse(text);
    const cJSON *tasks = j ? cJSON_GetObjectItem(j, "tasks") : NULL;
    const cJSON *t0 = tasks ? cJSON_GetArrayItem(tasks, 0) : NULL;
    TT_CHECK(t0 && cJSON_GetObjectItem(t0, "metrics") && cJSON_GetArraySize(cJSON_GetObjectItem(t0, "samples")) == 3,
             "JSON with metrics and 3 samples");
    TT_CHECK(j && cJSON_GetObjectItem(cJSON_GetObjectItem(j, "settings"), "max_length"), "settings in the JSON");
    cJSON_Delete(j);
    free(text);
    snprintf(args, sizeof args, "eval '%s' --tasks arc_easy --data-dir /nonexistent/taper", mp);
    TT_CHECK(run_cli(args) == 1, "missing data: exit 1");
    snprintf(args, sizeof args, "eval '%s' --tasks boolq", mp);
    TT_CHECK(run_cli(args) == 2, "unknown task: exit 2");
    snprintf(args, sizeof args, "eval '%s' --limit x", mp);
    TT_CHECK(run_cli(args) == 2, "bad --limit: exit 2");
    TT_CHECK(run_cli("eval --help") == 0, "--help");
    free(p);
    free(js);
}


/* Inputs the fuzzer found (tests/fuzz/crashes/tasks): an item with both multiple-choice forms is
 * refused (it read a NULL context), a file of {"text"} documents loads (its text was read after
 * the line's JSON was freed), and wikitext text with stray UTF-8 continuation bytes inside
 * brackets loads (the strip stepped back past its start). */
TT_TEST(eval_task_file_fuzz_regressions) {
    char *dir = tt_path(tt_tmp_dir(), "task_fuzz"), *f1 = tt_path(dir, "both.jsonl"), *f2 = tt_path(dir, "docs.jsonl");
    tt_sh("mkdir -p '%s'", dir);
    const char *both = "{\"contexts\":[\"a\"],\"continuation\":\"b\",\"choices\":[\"c\"],\"gold\":0}\n";
    const char *docs = "{\"text\": \"first document\"}\n{\"text\": \"second one\"}\n";
    TT_CHECK(tt_write_text(f1, both, strlen(both)) && tt_write_text(f2, docs, strlen(docs)), "writing the files");
    tp_task *t = NULL;
    TT_CHECK(tp_task_load_file(f1, 0, &t) == TP_ERR_FORMAT && strstr(tp_errmsg(), "line 1: expected one of"),
             "contexts + choices refused: %s", tp_errmsg());
    tp_task_free(t);
    t = NULL;
    tp_status s = tp_task_load_file(f2, 0, &t);
    TT_CHECK(s == TP_OK && t && t->n_items == 2, "two documents: %s", s ? tp_errmsg() : "ok");
    tp_task_free(t);
    char *wt = tt_path(dir, "wikitext2"), *raw = tt_path(wt, "wiki.test.raw");
    tt_sh("mkdir -p '%s'", wt);
    const char *page = " = T = \n \n a ( \xA0\x93 ) b \" \xA0\x93 \" c \n";
    TT_CHECK(tt_write_text(raw, page, strlen(page)), "writing %s", raw);
    t = NULL;
    s = tp_task_load("wikitext", dir, 0, &t);
    TT_CHECK(s == TP_OK && t && t->n_items == 1, "wikitext with stray continuation bytes: %s", s ? tp_errmsg() : "ok");
    tp_task_free(t);
    free(dir), free(f1), free(f2), free(wt), free(raw);
}
