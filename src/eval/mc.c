/* Scoring of tasks (tasks.h) as lm-evaluation-harness's HFLM scores them: each request is
 * encoded with _encode_pair, truncated on the left to max_length + 1 tokens, and the
 * continuation's log-likelihood is summed from the log-softmax of the logits, with a greedy flag;
 * documents are scored in the harness's rolling windows. Then acc / acc_norm (argmax, first on
 * ties), standard errors and perplexities as its metrics compute them.
 *
 * Work is shared: the requests of an item share their common token prefix, which is run once
 * into a KV cache and copied to one cache row per distinct tail; only the tails are run per
 * request, the requests of a few items in one batched forward. Loaders are in tasks.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels.h"
#include "taper/tasks.h"

/* ---------------- tokenization (HFLM) ---------------- */

/* The harness's tok_encode(): add_special_tokens left at the tokenizer's default (True), except
 * when the text already starts with the prefix (BOS) token's text. */
static tp_status hf_encode(const tp_tokenizer *tok, const char *text, size_t n, int32_t prefix, int32_t **ids,
                           size_t *n_ids) {
    int add = 1;
    if (prefix >= 0) {
        char *bos = NULL;
        size_t bl = 0;
        if (tp_tok_decode(tok, &prefix, 1, 0, &bos, &bl) == TP_OK && bl > 0 && bl <= n && !memcmp(text, bos, bl))
            add = 0;
        free(bos);
    }
    return tp_tok_encode(tok, text, n, add, ids, n_ids);
}

static int32_t prefix_token(const tp_tokenizer *tok) {
    int32_t b = tp_tok_bos(tok);
    return b >= 0 ? b : tp_tok_eos(tok);
}

tp_status tp_encode_pair(const tp_tokenizer *tok, const char *ctx, const char *cont, int32_t **ctx_ids,
                         size_t *n_ctx, int32_t **cont_ids, size_t *n_cont) {
    *ctx_ids = *cont_ids = NULL;
    *n_ctx = *n_cont = 0;
    int32_t prefix = prefix_token(tok);
    size_t cl = strlen(ctx), kl = strlen(cont), keep = tp_py_rstrip_len(ctx, cl);
    tp_status s;
    if (keep == 0) {
        /* empty context: [prefix] + encode(cont, add_special_tokens=False), unless the continuation
         * itself starts with the prefix token (then that token is the context). A context of
         * whitespace only is treated alike (the harness would assert). */
        if (prefix < 0) return tp_fail(TP_ERR_ARG, "empty context but the tokenizer has neither BOS nor EOS");
        int32_t *c = NULL;
        size_t nc = 0;
        char *full = malloc(cl + kl + 1);
        if (!full) return tp_fail(TP_ERR_NOMEM, "out of memory");
        memcpy(full, ctx, cl);
        memcpy(full + cl, cont, kl + 1);
        s = tp_tok_encode(tok, full, cl + kl, 0, &c, &nc);
        free(full);
        if (s) return s;
        int32_t *x = malloc(sizeof *x);
        if (!x) {
            free(c);
            return tp_fail(TP_ERR_NOMEM, "out of memory");
        }
        if (nc > 0 && c[0] == prefix) {
            x[0] = c[0];
            memmove(c, c + 1, (nc - 1) * sizeof *c);
            nc--;
        } else {
            x[0] = prefix;
        }
        *ctx_ids = x;
        *n_ctx = 1;
        *cont_ids = c;
        *n_cont = nc;
        return TP_OK;
    }
    /* trailing whitespace of the context moves to the continuation; whole = encode(ctx + cont) */
    int32_t *whole = NULL, *c = NULL;
    size_t nw = 0, nc = 0;
    char *full = malloc(cl + kl + 1);
    if (!full) return tp_fail(TP_ERR_NOMEM, "out of memory");
    memcpy(full, ctx, cl);
    memcpy(full + cl, cont, kl + 1);
    if ((s = hf_encode(tok, full, cl + kl, prefix, &whole, &nw)) || (s = hf_encode(tok, full, keep, prefix, &c, &nc))) {
        free(full);
        free(whole);
        free(c);
        return s;
    }
    free(full);
    size_t tail = nw > nc ? nw - nc : 0;
    int32_t *t = malloc((tail ? tail : 1) * sizeof *t);
    if (!t) {
        free(whole);
        free(c);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    if (tail) memcpy(t, whole + nc, tail * sizeof *t);
    free(whole);
    *ctx_ids = c;
    *n_ctx = nc;
    *cont_ids = t;
    *n_cont = tail;
    return TP_OK;
}

/* ---------------- work units ---------------- */

/* A token sequence whose last n_cont tokens are scored: toks[first..len) given toks[0..first). */
typedef struct {
    int32_t *toks;
    int len, first;
    double ll;
    int greedy;
} seq_t;

/* What one forward batch handles: one item's requests, or one rolling window of a document. */
typedef struct {
    size_t item;     /* item index */
    int req0, n_seq; /* ROLLING: the window's seq adds into request 0 */
    seq_t *seq;      /* (n_seq) */
    int shared;      /* tokens run once for all seqs (common prefix, before every scored token) */
    int longest;     /* max len */
    int rows;        /* distinct tails (forward rows) */
} unit_t;

static void units_free(unit_t *u, size_t n) {
    for (size_t i = 0; u && i < n; i++) {
        for (int k = 0; k < u[i].n_seq; k++) free(u[i].seq[k].toks);
        free(u[i].seq);
    }
    free(u);
}

/* The tail a seq runs: toks[shared .. len-1) (its last token is only predicted). */
static int tail_len(const unit_t *u, const seq_t *q) { return q->len - 1 - u->shared; }

/* Whether seq a's tail input is a prefix of seq b's: then b's row gives a's logits too (causal). */
static int tail_prefix_of(const unit_t *u, const seq_t *a, const seq_t *b) {
    int la = tail_len(u, a), lb = tail_len(u, b);
    return la <= lb && !memcmp(a->toks + u->shared, b->toks + u->shared, (size_t)la * sizeof(int32_t));
}

/* Sets shared = length of the common prefix of all seqs, capped so that it ends before the first
 * scored token of each, minus one: the last shared token goes with the tails so that its logits
 * (which predict the first continuation token) come out of the batched tail forward. */
static void unit_prefix(unit_t *u) {
    int l = u->seq[0].first, mx = 0;
    for (int k = 0; k < u->n_seq; k++) {
        seq_t *s = &u->seq[k];
        if (s->first < l) l = s->first;
        int c = 0;
        while (c < l && c < s->len && s->toks[c] == u->seq[0].toks[c]) c++;
        l = c;
        if (s->len > mx) mx = s->len;
    }
    u->shared = l > 0 ? l - 1 : 0;
    u->longest = mx;
    /* rows as run_units forms them: a seq needs no row of its own when its tail is a prefix of
     * another's (ties broken by index) */
    u->rows = 0;
    for (int a = 0; a < u->n_seq; a++) {
        int own = 1;
        for (int b = 0; b < u->n_seq && own; b++) {
            if (b == a || !tail_prefix_of(u, &u->seq[a], &u->seq[b])) continue;
            if (tail_len(u, &u->seq[b]) > tail_len(u, &u->seq[a]) || b < a) own = 0;
        }
        u->rows += own;
    }
}

/* The harness's truncation: keep the last max_len + 1 tokens of ctx + cont. */
static tp_status make_seq(seq_t *s, const int32_t *ctx, size_t nc, const int32_t *cont, size_t nk, int max_len) {
    if (nk > (size_t)max_len)
        return tp_fail(TP_ERR_ARG, "a continuation of %zu tokens does not fit the max length %d", nk, max_len);
    size_t tot = nc + nk, drop = tot > (size_t)max_len + 1 ? tot - (size_t)max_len - 1 : 0;
    s->len = (int)(tot - drop);
    s->first = (int)(nc - drop);
    s->toks = malloc((size_t)s->len * sizeof(int32_t));
    if (!s->toks) return tp_fail(TP_ERR_NOMEM, "out of memory");
    memcpy(s->toks, ctx + drop, (nc - drop) * sizeof(int32_t));
    memcpy(s->toks + (nc - drop), cont, nk * sizeof(int32_t));
    return TP_OK;
}

static tp_status grow_units(unit_t **u, size_t *cap, size_t n) {
    if (n < *cap) return TP_OK;
    size_t c = *cap ? 2 * *cap : 256;
    unit_t *q = realloc(*u, c * sizeof *q);
    if (!q) return tp_fail(TP_ERR_NOMEM, "out of memory");
    *u = q;
    *cap = c;
    return TP_OK;
}

/* Units of an MC / LL item: one seq per request. */
static tp_status item_units(const tp_tokenizer *tok, const tp_task_item *it, size_t idx, int max_len, unit_t *u,
                            int *n_ctx_tokens, int *n_cont_tokens) {
    memset(u, 0, sizeof *u);
    u->item = idx;
    u->seq = calloc((size_t)it->n, sizeof *u->seq);
    if (!u->seq) return tp_fail(TP_ERR_NOMEM, "out of memory");
    u->n_seq = it->n;
    *n_cont_tokens = 0;
    for (int k = 0; k < it->n; k++) {
        int32_t *c = NULL, *t = NULL;
        size_t nc = 0, nt = 0;
        tp_status s = tp_encode_pair(tok, it->ctx[k], it->cont[k], &c, &nc, &t, &nt);
        if (!s) s = make_seq(&u->seq[k], c, nc, t, nt, max_len);
        free(c);
        free(t);
        if (s) return tp_fail_ctx(s, "item %zu, request %d: ", idx, k);
        if (k == 0) *n_ctx_tokens = (int)nc;
        *n_cont_tokens += (int)nt;
    }
    unit_prefix(u);
    return TP_OK;
}

/* Rolling windows of a document (lm_eval get_rolling_token_windows with context_len 1, then
 * make_disjoint_window): the first window is [prefix] + tokens[0 .. L-1) predicting tokens[0..L);
 * each next one predicts up to max_len more tokens with the max_len tokens before them as input. */
static tp_status doc_units(const tp_tokenizer *tok, const char *text, size_t idx, int max_len, unit_t **units,
                           size_t *n, size_t *cap, int *n_tokens) {
    int32_t prefix = prefix_token(tok), *ids = NULL;
    size_t nt = 0;
    if (prefix < 0) return tp_fail(TP_ERR_ARG, "rolling log-likelihood needs a BOS or EOS token");
    tp_status s = hf_encode(tok, text, strlen(text), prefix, &ids, &nt);
    if (s) return s;
    *n_tokens = (int)nt;
    size_t done = 0;
    while (!s && done < nt) {
        if ((s = grow_units(units, cap, *n))) break;
        unit_t *u = &(*units)[*n];
        memset(u, 0, sizeof *u);
        u->item = idx;
        u->n_seq = 1;
        if (!(u->seq = calloc(1, sizeof *u->seq))) {
            s = tp_fail(TP_ERR_NOMEM, "out of memory");
            break;
        }
        (*n)++;
        seq_t *q = &u->seq[0];
        size_t pred = nt - done < (size_t)max_len ? nt - done : (size_t)max_len, end = done + pred;
        if (done == 0) {
            q->len = (int)pred + 1;
            q->first = 1;
            if (!(q->toks = malloc((size_t)q->len * sizeof(int32_t)))) {
                s = tp_fail(TP_ERR_NOMEM, "out of memory");
                break;
            }
            q->toks[0] = prefix;
            memcpy(q->toks + 1, ids, pred * sizeof(int32_t));
        } else {
            size_t start = end - (size_t)max_len - 1;
            q->len = max_len + 1;
            q->first = (int)(end - pred - start);
            if (!(q->toks = malloc((size_t)q->len * sizeof(int32_t)))) {
                s = tp_fail(TP_ERR_NOMEM, "out of memory");
                break;
            }
            memcpy(q->toks, ids + start, (size_t)q->len * sizeof(int32_t));
        }
        unit_prefix(u);
        done = end;
    }
    free(ids);
    return s;
}

/* ---------------- batched scoring ---------------- */

/* A KV cache of any (B, cap) up to the floats allocated: the tp_kvcache is a view of one buffer,
 * so batches of different shapes reuse the memory (every batch fills its rows afresh). */
typedef struct {
    float *k, *v;
    int *len;
    size_t floats, lens;
    tp_kvcache view;
} cache_buf;

static tp_status cache_view(const tp_config *c, cache_buf *cb, int B, int cap) {
    size_t kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim, need;
    if (tp_mul_overflow((size_t)c->n_layers * (size_t)B, (size_t)cap * kvd, &need))
        return tp_fail(TP_ERR_NOMEM, "KV cache of %d x %d positions is too large", B, cap);
    if (need > cb->floats) {
        free(cb->k);
        free(cb->v);
        cb->k = malloc(need * sizeof(float));
        cb->v = malloc(need * sizeof(float));
        cb->floats = need;
        if (!cb->k || !cb->v) {
            free(cb->k);
            free(cb->v);
            cb->k = cb->v = NULL;
            cb->floats = 0;
            return tp_fail(TP_ERR_NOMEM, "KV cache: cannot allocate 2 x %zu floats", need);
        }
    }
    if ((size_t)B > cb->lens) {
        int *l = realloc(cb->len, (size_t)B * sizeof *l);
        if (!l) return tp_fail(TP_ERR_NOMEM, "out of memory");
        cb->len = l;
        cb->lens = (size_t)B;
    }
    cb->view = (tp_kvcache){.B = B, .cap = cap, .n_layers = c->n_layers, .kv_dim = (int)kvd, .head_dim = c->head_dim, .len = cb->len,
                            .k = cb->k, .v = cb->v};
    return TP_OK;
}

static void cache_free(cache_buf *cb) {
    free(cb->k);
    free(cb->v);
    free(cb->len);
}

typedef struct {
    const tp_model *m;
    int chunk;
    cache_buf pc, sc;    /* prefix cache (B = units), tails cache (B = seqs) */
    float *logits;       /* (logits_cap, vocab) */
    size_t logits_cap;   /* rows */
    int32_t *tok;
    size_t tok_cap;
    size_t tokens;       /* run through the model */
} engine;

static tp_status ensure_tok(engine *e, size_t n) {
    if (n <= e->tok_cap) return TP_OK;
    int32_t *t = realloc(e->tok, n * sizeof *t);
    if (!t) return tp_fail(TP_ERR_NOMEM, "out of memory");
    e->tok = t;
    e->tok_cap = n;
    return TP_OK;
}

/* Scores position p (predicting target) of one logits row: NLL in double, greedy = argmax
 * (first maximum, as torch) equals target. */
static void score_row(const float *r, size_t V, int32_t target, double *nll, int *greedy) {
    float mx = r[0];
    size_t am = 0;
    for (size_t j = 1; j < V; j++)
        if (r[j] > mx) {
            mx = r[j];
            am = j;
        }
    double sum = tp_exp_shift_sum_f64(r, mx, V);
    *nll = (double)mx + log(sum) - (double)r[target];
    *greedy = am == (size_t)target;
}

/* The rows of a group of units: one per distinct tail (a seq whose tail input is a prefix of
 * another's shares that seq's row, e.g. MMLU's " A"/" B"/" C"/" D"). */
typedef struct {
    int nseq, nrow;
    seq_t **sq;      /* (nseq) every seq of the group */
    int *sq_unit;    /* (nseq) its unit */
    int *sq_row;     /* (nseq) the row giving its logits */
    int *row_unit;   /* (nrow) */
    seq_t **row_seq; /* (nrow) the seq whose tokens the row runs */
    double *nll;     /* (nseq * chunk) scratch */
    unsigned char *grd;
} rows_t;

static void rows_free(rows_t *r) {
    free(r->sq);
    free(r->sq_unit);
    free(r->sq_row);
    free(r->row_unit);
    free(r->row_seq);
    free(r->nll);
    free(r->grd);
}

static tp_status rows_build(unit_t *u, int nu, int chunk, rows_t *r) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < nu; i++) r->nseq += u[i].n_seq;
    size_t n = (size_t)r->nseq;
    r->sq = malloc(n * sizeof *r->sq);
    r->sq_unit = malloc(n * sizeof *r->sq_unit);
    r->sq_row = malloc(n * sizeof *r->sq_row);
    r->row_unit = malloc(n * sizeof *r->row_unit);
    r->row_seq = malloc(n * sizeof *r->row_seq);
    r->nll = malloc(n * (size_t)chunk * sizeof *r->nll);
    r->grd = malloc(n * (size_t)chunk);
    if (!r->sq || !r->sq_unit || !r->sq_row || !r->row_unit || !r->row_seq || !r->nll || !r->grd)
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (int i = 0, j = 0; i < nu; i++) {
        int j0 = j;
        for (int k = 0; k < u[i].n_seq; k++, j++) {
            r->sq[j] = &u[i].seq[k];
            r->sq_unit[j] = i;
            r->sq[j]->ll = 0;
            r->sq[j]->greedy = 1;
        }
        for (int a = j0 + 1; a < j; a++) /* insertion sort by tail length, longest first */
            for (int b = a; b > j0 && tail_len(&u[i], r->sq[b]) > tail_len(&u[i], r->sq[b - 1]); b--) {
                seq_t *t = r->sq[b];
                r->sq[b] = r->sq[b - 1];
                r->sq[b - 1] = t;
            }
        int r0 = r->nrow;
        for (int a = j0; a < j; a++) {
            int x = r0;
            while (x < r->nrow && !tail_prefix_of(&u[i], r->sq[a], r->row_seq[x])) x++;
            if (x == r->nrow) {
                r->row_seq[r->nrow] = r->sq[a];
                r->row_unit[r->nrow++] = i;
            }
            r->sq_row[a] = x;
        }
    }
    return TP_OK;
}

/* Runs rows ids[0..nb) as one padded batch in kv, row ids[b] in slot b (its prefix already there
 * and kv->len[b] = its unit's shared length), chunked along time; adds the log-likelihood of
 * every seq whose row is among them. */
static tp_status run_rows(engine *e, unit_t *u, rows_t *R, const int *ids, int nb, tp_kvcache *kv) {
    const tp_model *m = e->m;
    size_t V = (size_t)m->cfg.vocab;
    tp_status s;
    int maxt = 0;
    for (int b = 0; b < nb; b++) {
        int t = tail_len(&u[R->row_unit[ids[b]]], R->row_seq[ids[b]]);
        if (t > maxt) maxt = t;
    }
    /* the seqs scored from these rows, and the slot of each */
    int *js = malloc((size_t)R->nseq * sizeof *js), *slot = malloc((size_t)R->nseq * sizeof *slot), nj = 0;
    if (!js || !slot) {
        free(js);
        free(slot);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    for (int j = 0; j < R->nseq; j++)
        for (int b = 0; b < nb; b++)
            if (R->sq_row[j] == ids[b]) {
                js[nj] = j;
                slot[nj++] = b;
                break;
            }
    int step = e->chunk / nb > 0 ? e->chunk / nb : 1;
    s = ensure_tok(e, (size_t)nb * (size_t)step);
    if (!s && (size_t)nb * (size_t)step > e->logits_cap) {
        free(e->logits);
        e->logits_cap = (size_t)nb * (size_t)step;
        e->logits = malloc(e->logits_cap * V * sizeof(float));
        if (!e->logits) {
            e->logits_cap = 0;
            s = tp_fail(TP_ERR_NOMEM, "out of memory for %d x %d logits rows", nb, step);
        }
    }
    for (int t0 = 0; !s && t0 < maxt; t0 += step) {
        int T = maxt - t0 < step ? maxt - t0 : step;
        for (int b = 0; b < nb; b++) {
            const unit_t *ur = &u[R->row_unit[ids[b]]];
            const seq_t *q = R->row_seq[ids[b]];
            for (int t = 0; t < T; t++) {
                int p = ur->shared + t0 + t; /* absolute position */
                e->tok[(size_t)b * T + t] = p < q->len - 1 ? q->toks[p] : 0;
            }
        }
        if ((s = tp_forward(m, e->tok, nb, T, kv, e->logits, 0))) break;
        int n_pairs = nj * T;
        double *nll = R->nll;
        unsigned char *grd = R->grd;
#pragma omp parallel for schedule(dynamic, 4)
        for (int x = 0; x < n_pairs; x++) {
            int c = x / T, t = x % T, j = js[c];
            const seq_t *q = R->sq[j];
            int p = u[R->sq_unit[j]].shared + t0 + t;
            grd[x] = 2; /* not a scored position */
            if (p + 1 < q->first || p + 1 >= q->len) continue;
            int g;
            score_row(e->logits + ((size_t)slot[c] * T + t) * V, V, q->toks[p + 1], &nll[x], &g);
            grd[x] = (unsigned char)g;
        }
        for (int x = 0; x < n_pairs; x++) {
            if (grd[x] == 2) continue;
            seq_t *q = R->sq[js[x / T]];
            q->ll -= nll[x];
            if (!grd[x]) q->greedy = 0;
        }
    }
    for (int b = 0; !s && b < nb; b++) e->tokens += (size_t)tail_len(&u[R->row_unit[ids[b]]], R->row_seq[ids[b]]);
    free(js);
    free(slot);
    return s;
}

/* The fewest context positions a forward of run_units' shared prefixes takes at once. */
#define PREFIX_STEP 64

/* Runs the units u[0..nu) together and sets each seq's ll and greedy flag. Their shared prefixes
 * go as one padded batch without logits. When every unit has a single row, the tails continue
 * in that same cache as one batch. Otherwise the rows, longest tail first, go in batches of at
 * most `chunk` tokens (padding only up to the longest tail of each batch), each row starting from
 * a copy of its unit's prefix cache. */
static tp_status run_units(engine *e, unit_t *u, int nu) {
    const tp_model *m = e->m;
    tp_status s;
    rows_t R;
    int *ids = NULL;
    if ((s = rows_build(u, nu, e->chunk, &R))) goto done;
    int maxp = 0, maxt = 0;
    for (int i = 0; i < nu; i++)
        if (u[i].shared > maxp) maxp = u[i].shared;
    for (int r = 0; r < R.nrow; r++)
        if (tail_len(&u[R.row_unit[r]], R.row_seq[r]) > maxt) maxt = tail_len(&u[R.row_unit[r]], R.row_seq[r]);
    int in_place = R.nrow == nu;
    /* 1. shared prefixes, no logits */
    if (maxp > 0 || in_place) {
        if ((s = cache_view(&m->cfg, &e->pc, nu, maxp + (in_place ? maxt : 0)))) goto done;
        for (int i = 0; i < nu; i++) e->pc.len[i] = 0;
        /* at least PREFIX_STEP positions per forward: thinner slices of many units make many
         * small products and attention calls (MMLU at --batch 32: 1.25x slower than at 8) */
        int step = e->chunk / nu > PREFIX_STEP ? e->chunk / nu : PREFIX_STEP;
        if ((s = ensure_tok(e, (size_t)nu * (size_t)step))) goto done;
        for (int t0 = 0; t0 < maxp; t0 += step) {
            int T = maxp - t0 < step ? maxp - t0 : step;
            for (int i = 0; i < nu; i++)
                for (int t = 0; t < T; t++) {
                    int p = t0 + t;
                    e->tok[(size_t)i * T + t] = p < u[i].shared ? u[i].seq[0].toks[p] : 0;
                }
            if ((s = tp_forward(m, e->tok, nu, T, &e->pc.view, NULL, 0))) goto done;
        }
        for (int i = 0; i < nu; i++) e->tokens += (size_t)u[i].shared;
    }
    if (maxt <= 0) goto done;
    if (!(ids = malloc((size_t)R.nrow * sizeof *ids))) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (in_place) { /* row i is unit i's only row: continue in the prefix cache */
        for (int i = 0; i < nu; i++) { /* rows are made unit by unit: row i belongs to unit i */
            e->pc.len[i] = u[i].shared;
            ids[i] = i;
        }
        s = run_rows(e, u, &R, ids, nu, &e->pc.view);
        goto done;
    }
    /* 2. rows by tail length, longest first, in batches of about chunk tokens */
    for (int r = 0; r < R.nrow; r++) ids[r] = r;
    for (int a = 1; a < R.nrow; a++)
        for (int b = a; b > 0 && tail_len(&u[R.row_unit[ids[b]]], R.row_seq[ids[b]]) >
                                     tail_len(&u[R.row_unit[ids[b - 1]]], R.row_seq[ids[b - 1]]);
             b--) {
            int t = ids[b];
            ids[b] = ids[b - 1];
            ids[b - 1] = t;
        }
    tp_kvcache *pc = &e->pc.view;
    for (int r0 = 0; r0 < R.nrow && !s;) {
        int tb = tail_len(&u[R.row_unit[ids[r0]]], R.row_seq[ids[r0]]), nb = 1;
        while (r0 + nb < R.nrow && (nb + 1) * tb <= e->chunk) nb++;
        int cap = 0;
        for (int b = 0; b < nb; b++)
            if (u[R.row_unit[ids[r0 + b]]].shared + tb > cap) cap = u[R.row_unit[ids[r0 + b]]].shared + tb;
        if ((s = cache_view(&m->cfg, &e->sc, nb, cap))) break;
        tp_kvcache *kv = &e->sc.view;
        size_t hd = (size_t)kv->head_dim;
        for (int b = 0; b < nb; b++) {
            int i = R.row_unit[ids[r0 + b]], L = u[i].shared;
            kv->len[b] = L;
            for (int l = 0; L > 0 && l < m->cfg.n_layers; l++)
                for (int g = 0; g < m->cfg.n_kv_heads; g++) {
                    size_t src = tp_kvcache_at(pc, l, i, g, 0), dst = tp_kvcache_at(kv, l, b, g, 0);
                    memcpy(kv->k + dst, pc->k + src, (size_t)L * hd * sizeof(float));
                    memcpy(kv->v + dst, pc->v + src, (size_t)L * hd * sizeof(float));
                }
        }
        s = run_rows(e, u, &R, ids + r0, nb, kv);
        r0 += nb;
    }
done:
    free(ids);
    rows_free(&R);
    return s;
}

/* ---------------- metrics ---------------- */

/* numpy.argmax: the first NaN if any, else the first maximum. */
static int argmax(const double *x, int n) {
    int b = 0;
    for (int k = 0; k < n; k++)
        if (isnan(x[k])) return k;
    for (int k = 1; k < n; k++)
        if (x[k] > x[b]) b = k;
    return b;
}

/* Sample standard error of the mean of n values with s = sum, s2 = sum of squared deviations. */
static double mean_stderr(double ss, size_t n) { return n > 1 ? sqrt(ss / (double)(n - 1)) / sqrt((double)n) : NAN; }

/* lm_eval pooled_sample_stderr over subtasks (size-weighted groups). */
static double pooled_stderr(const tp_group_result *g, int n, int norm) {
    double num = 0;
    size_t tot = 0;
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (!g[i].n) continue;
        double se = norm ? g[i].acc_norm_stderr : g[i].acc_stderr;
        num += ((double)g[i].n - 1) * se * se * (double)g[i].n;
        tot += g[i].n;
        k++;
    }
    if (tot <= (size_t)k) return NAN;
    return sqrt(num / (double)(tot - (size_t)k) / (double)tot);
}

/* acc / acc_norm of the items with group g (g < 0: all) into *out. */
static void group_stats(const tp_task *t, const tp_task_result *r, int g, tp_group_result *out) {
    size_t n = 0;
    double a = 0, an = 0;
    for (size_t i = 0; i < t->n_items; i++) {
        if (g >= 0 && t->items[i].group != g) continue;
        n++;
        a += r->items[i].pred == t->items[i].gold;
        an += r->items[i].pred_norm == t->items[i].gold;
    }
    out->n = n;
    out->acc = n ? a / (double)n : NAN;
    out->acc_norm = n ? an / (double)n : NAN;
    double s = 0, sn = 0;
    for (size_t i = 0; i < t->n_items; i++) {
        if (g >= 0 && t->items[i].group != g) continue;
        double x = (r->items[i].pred == t->items[i].gold) - out->acc;
        double y = (r->items[i].pred_norm == t->items[i].gold) - out->acc_norm;
        s += x * x;
        sn += y * y;
    }
    out->acc_stderr = mean_stderr(s, n);
    out->acc_norm_stderr = mean_stderr(sn, n);
}

static tp_status aggregate(const tp_task *t, tp_task_result *r) {
    if (t->kind == TP_TASK_MC) {
        for (size_t i = 0; i < t->n_items; i++) {
            const tp_task_item *it = &t->items[i];
            tp_item_result *x = &r->items[i];
            double *v = malloc((size_t)it->n * sizeof *v);
            if (!v) return tp_fail(TP_ERR_NOMEM, "out of memory");
            x->pred = argmax(x->ll, it->n);
            for (int k = 0; k < it->n; k++) v[k] = x->ll[k] / it->norm_len[k];
            x->pred_norm = argmax(v, it->n);
            free(v);
        }
        tp_group_result all;
        group_stats(t, r, -1, &all);
        r->acc = all.acc;
        r->acc_norm = all.acc_norm;
        r->acc_stderr = all.acc_stderr;
        r->acc_norm_stderr = all.acc_norm_stderr;
        if (t->n_groups > 0) {
            r->groups = calloc((size_t)t->n_groups, sizeof *r->groups);
            if (!r->groups) return tp_fail(TP_ERR_NOMEM, "out of memory");
            r->n_groups = t->n_groups;
            for (int g = 0; g < t->n_groups; g++) {
                group_stats(t, r, g, &r->groups[g]);
                r->groups[g].name = strdup(t->groups[g]);
            }
            /* as lm_eval groups: size-weighted means (= the mean over items), pooled stderr */
            r->acc_stderr = pooled_stderr(r->groups, r->n_groups, 0);
            r->acc_norm_stderr = pooled_stderr(r->groups, r->n_groups, 1);
            if (t->group_cat) {
                r->cats = calloc((size_t)t->n_groups, sizeof *r->cats);
                tp_group_result *tmp = calloc((size_t)t->n_groups, sizeof *tmp);
                if (!r->cats || !tmp) {
                    free(tmp);
                    return tp_fail(TP_ERR_NOMEM, "out of memory");
                }
                for (int g = 0; g < t->n_groups; g++) {
                    int c = 0;
                    while (c < r->n_cats && strcmp(r->cats[c].name, t->group_cat[g])) c++;
                    if (c == r->n_cats) r->cats[r->n_cats++].name = strdup(t->group_cat[g]);
                }
                for (int c = 0; c < r->n_cats; c++) {
                    int nt = 0;
                    double a = 0, an = 0;
                    size_t n = 0;
                    for (int g = 0; g < t->n_groups; g++)
                        if (!strcmp(t->group_cat[g], r->cats[c].name) && r->groups[g].n) {
                            tmp[nt++] = r->groups[g];
                            a += r->groups[g].acc * (double)r->groups[g].n;
                            an += r->groups[g].acc_norm * (double)r->groups[g].n;
                            n += r->groups[g].n;
                        }
                    r->cats[c].n = n;
                    r->cats[c].acc = n ? a / (double)n : NAN;
                    r->cats[c].acc_norm = n ? an / (double)n : NAN;
                    r->cats[c].acc_stderr = pooled_stderr(tmp, nt, 0);
                    r->cats[c].acc_norm_stderr = pooled_stderr(tmp, nt, 1);
                }
                free(tmp);
            }
        }
    } else if (t->kind == TP_TASK_LL) {
        double s = 0, g = 0;
        for (size_t i = 0; i < t->n_items; i++) {
            s += r->items[i].ll[0];
            g += r->items[i].greedy[0];
            r->items[i].pred = r->items[i].pred_norm = -1;
        }
        r->ll_mean = s / (double)t->n_items;
        r->perplexity = exp(-r->ll_mean);
        r->acc = g / (double)t->n_items;
        double ss = 0;
        for (size_t i = 0; i < t->n_items; i++) {
            double d = r->items[i].greedy[0] - r->acc;
            ss += d * d;
        }
        r->acc_stderr = mean_stderr(ss, t->n_items);
        r->acc_norm = r->acc_norm_stderr = NAN;
    } else {
        for (size_t i = 0; i < t->n_items; i++) {
            r->ll_sum += r->items[i].ll[0];
            r->words += t->items[i].words;
            r->bytes += t->items[i].bytes;
            r->items[i].pred = r->items[i].pred_norm = -1;
        }
        r->word_perplexity = exp(-r->ll_sum / (double)r->words);
        r->byte_perplexity = exp(-r->ll_sum / (double)r->bytes);
        r->bits_per_byte = -r->ll_sum / (double)r->bytes / log(2.0);
        r->acc = r->acc_stderr = r->acc_norm = r->acc_norm_stderr = NAN;
    }
    if (!t->has_acc_norm) r->acc_norm = r->acc_norm_stderr = NAN;
    return TP_OK;
}

void tp_task_result_free(tp_task_result *r) {
    if (!r) return;
    for (size_t i = 0; r->items && i < r->n_items; i++) {
        free(r->items[i].ll);
        free(r->items[i].greedy);
    }
    free(r->items);
    for (int g = 0; g < r->n_groups; g++) free(r->groups[g].name);
    free(r->groups);
    for (int c = 0; c < r->n_cats; c++) free(r->cats[c].name);
    free(r->cats);
    memset(r, 0, sizeof *r);
}

/* ---------------- driver ---------------- */

static int cmp_unit_len(const void *a, const void *b) {
    const unit_t *x = *(unit_t *const *)a, *y = *(unit_t *const *)b;
    if (x->longest != y->longest) return x->longest > y->longest ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* KV-cache positions (prefix rows + tail rows) a group of units needs. */
static size_t group_slots(unit_t *const *u, int n) {
    int maxp = 0, maxt = 0, nrow = 0;
    for (int i = 0; i < n; i++) {
        if (u[i]->shared > maxp) maxp = u[i]->shared;
        if (u[i]->longest - 1 - u[i]->shared > maxt) maxt = u[i]->longest - 1 - u[i]->shared;
        nrow += u[i]->rows;
    }
    if (nrow == n) return (size_t)n * (size_t)(maxp + maxt); /* tails run in the prefix cache */
    return (size_t)n * (size_t)maxp + (size_t)nrow * (size_t)(maxp + maxt);
}

tp_status tp_task_run(const tp_model *m, const tp_task *t, const tp_eval_opts *opts, tp_progress *progress,
                      tp_task_result *out) {
    memset(out, 0, sizeof *out);
    if (!m->tok) return tp_fail(TP_ERR_ARG, "the model has no tokenizer");
    if (t->n_items == 0) return tp_fail(TP_ERR_ARG, "task %s has no items", t->name);
    int max_len = opts && opts->max_length > 0 ? opts->max_length : m->cfg.max_pos > 0 ? m->cfg.max_pos : 2048;
    int batch = opts && opts->batch > 0 ? opts->batch : 8;
    int chunk = opts && opts->chunk > 0 ? opts->chunk : 512;
    /* KV positions held at once: enough for one full-length window, or batch short items */
    size_t slot_budget = (size_t)max_len + 1 > 8192 ? (size_t)max_len + 1 : 8192;
    double t0 = tp_time_s();
    tp_status s = TP_OK;
    out->n_items = t->n_items;
    out->items = calloc(t->n_items, sizeof *out->items);
    if (!out->items) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < t->n_items; i++) {
        int n = t->items[i].n;
        out->items[i].ll = calloc((size_t)n, sizeof(double));
        out->items[i].greedy = calloc((size_t)n, 1);
        if (!out->items[i].ll || !out->items[i].greedy) {
            tp_task_result_free(out);
            return tp_fail(TP_ERR_NOMEM, "out of memory");
        }
        for (int k = 0; k < n; k++) out->items[i].greedy[k] = 1;
    }
    /* 1. tokenize everything into units */
    unit_t *units = NULL;
    unit_t **order = NULL;
    size_t nu = 0, cap = 0;
    double total = 0;
    for (size_t i = 0; !s && i < t->n_items; i++) {
        const tp_task_item *it = &t->items[i];
        if (t->kind == TP_TASK_ROLLING) {
            int ntok = 0;
            s = doc_units(m->tok, it->cont[0], i, max_len, &units, &nu, &cap, &ntok);
            out->items[i].n_cont_tokens = ntok;
        } else if (!(s = grow_units(&units, &cap, nu))) {
            s = item_units(m->tok, it, i, max_len, &units[nu], &out->items[i].n_ctx_tokens,
                           &out->items[i].n_cont_tokens);
            nu++;
        }
    }
    if (!s && !(order = malloc((nu ? nu : 1) * sizeof *order))) s = tp_fail(TP_ERR_NOMEM, "out of memory");
    if (s) goto done;
    for (size_t i = 0; i < nu; i++) {
        order[i] = &units[i];
        for (int k = 0; k < units[i].n_seq; k++) total += units[i].seq[k].len - 1 - units[i].shared;
        total += units[i].shared;
    }
    /* longest first, as the harness orders its requests: similar lengths share a batch */
    qsort(order, nu, sizeof *order, cmp_unit_len);
    /* 2. score in groups of up to batch units within the cache budget */
    engine e = {.m = m, .chunk = chunk};
    double done_tok = 0;
    if (progress) progress->total = total;
    unit_t **grp = malloc((size_t)batch * sizeof *grp);
    if (!grp) {
        s = tp_fail(TP_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t a = 0; a < nu && !s;) {
        int n = 0;
        while (a + (size_t)n < nu && n < batch) {
            grp[n] = order[a + (size_t)n];
            if (n > 0 && group_slots(grp, n + 1) > slot_budget) break;
            n++;
        }
        /* run_units wants the units of a group contiguous: score them through a copy */
        unit_t *tmp = malloc((size_t)n * sizeof *tmp);
        if (!tmp) {
            s = tp_fail(TP_ERR_NOMEM, "out of memory");
            break;
        }
        for (int i = 0; i < n; i++) tmp[i] = *grp[i];
        s = run_units(&e, tmp, n);
        for (int i = 0; i < n && !s; i++) {
            unit_t *u = &tmp[i];
            tp_item_result *x = &out->items[u->item];
            for (int k = 0; k < u->n_seq; k++) {
                int rq = t->kind == TP_TASK_ROLLING ? 0 : k;
                x->ll[rq] += u->seq[k].ll;
                if (!u->seq[k].greedy) x->greedy[rq] = 0;
                done_tok += u->seq[k].len - 1 - u->shared;
            }
            done_tok += u->shared;
        }
        free(tmp);
        a += (size_t)n;
        if (progress) tp_progress_update(progress, done_tok);
    }
    free(grp);
    out->tokens = e.tokens;
    cache_free(&e.pc);
    cache_free(&e.sc);
    free(e.logits);
    free(e.tok);
    if (!s) s = aggregate(t, out);
done:
    units_free(units, nu);
    free(order);
    out->seconds = tp_time_s() - t0;
    if (s) tp_task_result_free(out);
    return s;
}
