/* Activation-based importance (Minitron): one forward pass with hooks over the calibration
 * samples accumulates per-sample sequence aggregates of head-output norms, MLP activations and
 * RMSNorm outputs into batch aggregates (all 3x3 pairs at once, in double), and Block Influence
 * per layer; then layer-removal losses (single layers, contiguous blocks, an optional downstream
 * metric). Calibration-file reading and the LM loss live here too. The score file is in
 * scores.c; pruning in prune.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "taper/compress.h"
#include "taper/eval.h"
#include "taper/tokenizer.h"
#include "core/internal.h"

/* ------------------------------------------------------------------------------------------ */
/* aggregation names */

static const char *const agg_names[TP_AGG_COUNT] = {"mean", "l2", "var"};

const char *tp_agg_name(tp_agg a) { return (unsigned)a < TP_AGG_COUNT ? agg_names[a] : "?"; }

static int agg_from(const char *s, size_t n) {
    for (int a = 0; a < TP_AGG_COUNT; a++)
        if (strlen(agg_names[a]) == n && strncmp(s, agg_names[a], n) == 0) return a;
    if (n == 8 && strncmp(s, "mean_abs", 8) == 0) return TP_AGG_MEAN;
    return -1;
}

tp_status tp_agg_pair_parse(const char *s, int *pair) {
    const char *comma = s ? strchr(s, ',') : NULL;
    int b = comma ? agg_from(s, (size_t)(comma - s)) : -1;
    int q = comma ? agg_from(comma + 1, strlen(comma + 1)) : -1;
    if (b < 0 || q < 0)
        return tp_fail(TP_ERR_ARG, "aggregation \"%s\" is not BATCH,SEQ with each of mean, l2, var "
                       "(e.g. l2,mean)", s ? s : "(null)");
    *pair = b * 3 + q;
    return TP_OK;
}

const char *tp_agg_pair_name(int pair) {
    static const char *const names[TP_AGG_PAIRS] = {
        "batch=mean,seq=mean", "batch=mean,seq=l2", "batch=mean,seq=var",
        "batch=l2,seq=mean",   "batch=l2,seq=l2",   "batch=l2,seq=var",
        "batch=var,seq=mean",  "batch=var,seq=l2",  "batch=var,seq=var"};
    return pair >= 0 && pair < TP_AGG_PAIRS ? names[pair] : "?";
}

/* ------------------------------------------------------------------------------------------ */
/* calibration data */

static tp_status jsonl_texts(const char *path, const char *data, size_t len, char **out, size_t *out_len) {
    size_t cap = len + 1, n = 0;
    char *buf = malloc(cap), *line = NULL;
    if (!buf) return tp_fail(TP_ERR_NOMEM, "out of memory");
    size_t pos = 0, lineno = 0;
    while (pos < len) {
        size_t end = pos;
        while (end < len && data[end] != '\n') end++;
        lineno++;
        size_t ll = end - pos;
        const char *p = data + pos;
        pos = end + 1;
        while (ll && (p[ll - 1] == '\r' || p[ll - 1] == ' ' || p[ll - 1] == '\t')) ll--;
        if (ll == 0) continue;
        free(line);
        line = malloc(ll + 1);
        if (!line) { free(buf); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
        memcpy(line, p, ll);
        line[ll] = 0;
        cJSON *j = cJSON_Parse(line);
        if (!j && tp_json_valid(line, ll)) {
            free(line);
            free(buf);
            return tp_fail(TP_ERR_NOMEM, "%s: out of memory at line %zu", path, lineno);
        }
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        if (!cJSON_IsString(t)) {
            cJSON_Delete(j);
            free(line);
            free(buf);
            return tp_fail(TP_ERR_FORMAT, "%s: line %zu is not a JSON object with a string field \"text\"",
                           path, lineno);
        }
        size_t tl = strlen(t->valuestring);
        if (n + tl + 3 > cap) {
            cap = 2 * (n + tl + 3);
            char *nb = realloc(buf, cap);
            if (!nb) { cJSON_Delete(j); free(line); free(buf); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
            buf = nb;
        }
        if (n) { buf[n++] = '\n'; buf[n++] = '\n'; }
        memcpy(buf + n, t->valuestring, tl);
        n += tl;
        cJSON_Delete(j);
    }
    free(line);
    buf[n] = 0;
    *out = buf;
    *out_len = n;
    return TP_OK;
}

tp_status tp_calib_load(const tp_tokenizer *tok, const char *path, int seq_len, int32_t **ids,
                        size_t *n_samples) {
    *ids = NULL;
    *n_samples = 0;
    if (!tok) return tp_fail(TP_ERR_ARG, "calibration data %s: the model has no tokenizer", path);
    if (seq_len < 2) return tp_fail(TP_ERR_ARG, "calibration sequence length %d must be >= 2", seq_len);
    char *text = NULL;
    size_t len = 0;
    tp_status s = tp_read_file(path, &text, &len);
    if (s) return tp_fail_ctx(s, "calibration data: ");
    size_t pl = strlen(path);
    if (pl >= 6 && strcmp(path + pl - 6, ".jsonl") == 0) {
        char *joined = NULL;
        size_t jl = 0;
        s = jsonl_texts(path, text, len, &joined, &jl);
        free(text);
        if (s) return s;
        text = joined;
        len = jl;
    }
    int32_t *all = NULL;
    size_t n = 0;
    s = tp_tok_encode(tok, text, len, 0, &all, &n);
    free(text);
    if (s) return tp_fail_ctx(s, "tokenizing calibration data %s: ", path);
    size_t k = n / (size_t)seq_len;
    if (k == 0) {
        free(all);
        return tp_fail(TP_ERR_ARG, "calibration data %s has %zu tokens, fewer than one sample of %d", path, n,
                       seq_len);
    }
    *ids = all; /* the first k*seq_len ids are the samples */
    *n_samples = k;
    return TP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* LM loss */

size_t tp_lm_loss_batch(int seq_len, int vocab) {
    size_t per = (size_t)seq_len * (size_t)vocab * sizeof(float);
    size_t b = ((size_t)256 << 20) / (per ? per : 1);
    return b < 1 ? 1 : b > 16 ? 16 : b;
}

tp_status tp_lm_loss(const tp_model *m, const int32_t *ids, size_t n, int seq_len,
                     const unsigned char *skip, tp_progress *progress, double *loss) {
    *loss = NAN;
    if (n == 0 || seq_len < 2) return tp_fail(TP_ERR_ARG, "LM loss: need >= 1 sample of >= 2 tokens");
    size_t V = (size_t)m->cfg.vocab, T = (size_t)seq_len, B = tp_lm_loss_batch(seq_len, m->cfg.vocab);
    if (B > n) B = n;
    float *logits = malloc(B * T * V * sizeof(float));
    double *nll = malloc(T * sizeof(double));
    if (!logits || !nll) {
        free(logits);
        free(nll);
        return tp_fail(TP_ERR_NOMEM, "LM loss: out of memory for %zu x %zu logits", B * T, V);
    }
    tp_forward_opts fo = {NULL, NULL, skip};
    double sum = 0, done0 = progress ? progress->done : 0;
    tp_status s = TP_OK;
    for (size_t i = 0; i < n && !s; i += B) {
        size_t b = n - i < B ? n - i : B;
        s = tp_forward_ex(m, ids + i * T, (int)b, (int)T, NULL, logits, 0, &fo);
        for (size_t j = 0; j < b && !s; j++) {
            /* each sample on its own: positions 0..T-2 predict tokens 1..T-1 */
            tp_nll_rows(logits + j * T * V, ids + (i + j) * T + 1, T - 1, V, nll);
            for (size_t t = 0; t + 1 < T; t++) sum += nll[t];
        }
        if (progress) tp_progress_update(progress, done0 + (double)((i + b) * T));
    }
    free(logits);
    free(nll);
    if (!s) *loss = sum / ((double)n * (double)(T - 1));
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* the importance pass */

/* Work (elements touched) below which a loop stays on one thread, as TP_PAR_MIN_WORK in the
 * model's kernels: a parallel region costs a barrier, slow on shared cores. */
#define PAR_MIN_WORK 65536

/* Per channel and sequence aggregate k, batch accumulators: sum|a|, sum a^2, Welford mean, M2. */
#define ACC 4
#define ACC_PER_CH (TP_AGG_COUNT * ACC)

typedef struct {
    const tp_model *m;
    int neuron_point;   /* TP_HOOK_MLP_ACT or TP_HOOK_MLP_GATE */
    size_t sample0;     /* global index of the batch's first sample */
    double *acc_heads;  /* (L, nh, ACC_PER_CH) */
    double *acc_neur;   /* (L, ff, ACC_PER_CH) */
    double *acc_norm;   /* (2L+1, d, ACC_PER_CH) */
    float *layer_in;    /* (B*T, d) copy of the layer input for Block Influence */
    double *bi_sum;     /* (L) sum of cosines */
    double *bi_cnt;     /* (L) positions */
    double *head_norm;  /* (B*T, nh) per-position head-output norms */
    double *seq_tmp;    /* (3, max width) per-sample sequence aggregates */
} imp_state;

/* Sequence aggregates of one sample: x is (T, W) row-major; out[k*W + c] for k = mean, l2, var.
 * Two passes (mean, then squared deviations) in double; one twin per input type. */
#define SEQ_AGGREGATES(NAME, TYPE)                                                   \
    static void NAME(const TYPE *x, int T, int W, double *out) {                     \
        _Pragma("omp parallel for schedule(static) if ((size_t)T * W >= PAR_MIN_WORK)") \
        for (int c0 = 0; c0 < W; c0 += 64) {                                         \
            int c1 = c0 + 64 < W ? c0 + 64 : W, nc = c1 - c0;                        \
            double s[64], sa[64], sq[64], m2[64], mean[64];                          \
            for (int c = 0; c < nc; c++) s[c] = sa[c] = sq[c] = m2[c] = 0;           \
            for (int t = 0; t < T; t++) {                                            \
                const TYPE *r = x + (size_t)t * W + c0;                              \
                for (int c = 0; c < nc; c++) {                                       \
                    double v = r[c];                                                 \
                    s[c] += v;                                                       \
                    sa[c] += fabs(v);                                                \
                    sq[c] += v * v;                                                  \
                }                                                                    \
            }                                                                        \
            for (int c = 0; c < nc; c++) mean[c] = s[c] / T;                         \
            for (int t = 0; t < T; t++) {                                            \
                const TYPE *r = x + (size_t)t * W + c0;                              \
                for (int c = 0; c < nc; c++) {                                       \
                    double dv = (double)r[c] - mean[c];                              \
                    m2[c] += dv * dv;                                                \
                }                                                                    \
            }                                                                        \
            for (int c = 0; c < nc; c++) {                                           \
                out[c0 + c] = sa[c] / T;                                             \
                out[W + c0 + c] = sqrt(sq[c]);                                       \
                out[2 * W + c0 + c] = m2[c] / T;                                     \
            }                                                                        \
        }                                                                            \
    }
SEQ_AGGREGATES(seq_aggregates_f, float)
SEQ_AGGREGATES(seq_aggregates_d, double)

/* Adds one sample's sequence aggregates a (3, W) to the batch accumulators acc (W, ACC_PER_CH);
 * count is the number of samples including this one. */
static void batch_update(double *acc, const double *a, int W, double count) {
#pragma omp parallel for schedule(static) if ((size_t)W * ACC_PER_CH >= PAR_MIN_WORK)
    for (int c = 0; c < W; c++)
        for (int k = 0; k < TP_AGG_COUNT; k++) {
            double v = a[(size_t)k * W + c], *A = acc + ((size_t)c * TP_AGG_COUNT + k) * ACC;
            A[0] += fabs(v);
            A[1] += v * v;
            double delta = v - A[2];
            A[2] += delta / count;
            A[3] += delta * (v - A[2]);
        }
}

/* x: (B*T, W) floats, or xd: the same in double (head norms). */
static void observe(imp_state *st, double *acc, const float *x, const double *xd, int B, int T, int W) {
    for (int b = 0; b < B; b++) {
        if (xd) seq_aggregates_d(xd + (size_t)b * T * W, T, W, st->seq_tmp);
        else seq_aggregates_f(x + (size_t)b * T * W, T, W, st->seq_tmp);
        batch_update(acc, st->seq_tmp, W, (double)(st->sample0 + (size_t)b + 1));
    }
}

static void imp_hook(void *user, tp_hook_point p, int layer, const float *x, int B, int T, int width) {
    imp_state *st = user;
    const tp_config *c = &st->m->cfg;
    size_t N = (size_t)B * T, d = (size_t)c->d_model;
    switch (p) {
    case TP_HOOK_LAYER_IN: memcpy(st->layer_in, x, N * d * sizeof(float)); break;
    case TP_HOOK_LAYER_OUT: {
        double sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum) if (N * d >= PAR_MIN_WORK)
        for (size_t i = 0; i < N; i++) {
            const float *a = st->layer_in + i * d, *o = x + i * d;
            double dot = 0, na = 0, no = 0;
            for (size_t j = 0; j < d; j++) {
                dot += (double)a[j] * o[j];
                na += (double)a[j] * a[j];
                no += (double)o[j] * o[j];
            }
            double den = sqrt(na) * sqrt(no);
            sum += dot / (den > 1e-300 ? den : 1e-300);
        }
        st->bi_sum[layer] += sum;
        st->bi_cnt[layer] += (double)N;
        break;
    }
    case TP_HOOK_ATTN_OUT: {
        int nh = c->n_heads, hd = c->head_dim;
#pragma omp parallel for schedule(static) if (N * (size_t)width >= PAR_MIN_WORK)
        for (size_t i = 0; i < N; i++)
            for (int h = 0; h < nh; h++) {
                const float *v = x + i * (size_t)width + (size_t)h * hd;
                double s = 0;
                for (int j = 0; j < hd; j++) s += (double)v[j] * v[j];
                st->head_norm[i * nh + h] = sqrt(s);
            }
        observe(st, st->acc_heads + (size_t)layer * nh * ACC_PER_CH, NULL, st->head_norm, B, T, nh);
        break;
    }
    case TP_HOOK_ATTN_NORM:
    case TP_HOOK_MLP_NORM:
    case TP_HOOK_FINAL_NORM: {
        size_t point = p == TP_HOOK_FINAL_NORM ? 2 * (size_t)c->n_layers
                                               : 2 * (size_t)layer + (p == TP_HOOK_MLP_NORM);
        observe(st, st->acc_norm + point * d * ACC_PER_CH, x, NULL, B, T, width);
        break;
    }
    default:
        if ((int)p == st->neuron_point)
            observe(st, st->acc_neur + (size_t)layer * c->d_ff * ACC_PER_CH, x, NULL, B, T, width);
        break;
    }
}

/* Several ranks: merges the accumulators (groups of ACC: sum |v|, sum v^2, running mean, running
 * sum of squared deviations) of n_local samples per rank into those of n_all samples, on every
 * rank: the sums added in rank order, the variance by Chan et al.'s pairwise rule written as two
 * sums, mean = sum n_r mean_r / n and M2 = sum (M2_r + n_r (mean_r - mean)^2). */
static tp_status merge_acc(tp_comm *cm, double *acc, size_t groups, double n_local, double n_all) {
    double *x = malloc(3 * groups * sizeof(double)), *y = malloc(groups * sizeof(double));
    tp_status s = x && y ? TP_OK : tp_fail(TP_ERR_NOMEM, "importance: out of memory merging the ranks' statistics");
    for (size_t g = 0; g < groups && !s; g++) {
        x[3 * g] = acc[g * ACC];
        x[3 * g + 1] = acc[g * ACC + 1];
        x[3 * g + 2] = n_local * acc[g * ACC + 2];
    }
    if (!s) s = tp_comm_sum_f64(cm, x, 3 * groups);
    for (size_t g = 0; g < groups && !s; g++) {
        double mean = x[3 * g + 2] / n_all, dm = acc[g * ACC + 2] - mean;
        y[g] = acc[g * ACC + 3] + n_local * dm * dm;
        acc[g * ACC] = x[3 * g];
        acc[g * ACC + 1] = x[3 * g + 1];
        acc[g * ACC + 2] = mean;
    }
    if (!s) s = tp_comm_sum_f64(cm, y, groups);
    for (size_t g = 0; g < groups && !s; g++) acc[g * ACC + 3] = y[g];
    free(x);
    free(y);
    return s;
}

static tp_comm *comm_of(const tp_importance_opts *o) { return o->comm ? o->comm : tp_comm_world(); }

/* Batch aggregate j of accumulator A over n samples. */
static double batch_final(const double *A, int j, double n) {
    switch (j) {
    case TP_AGG_MEAN: return A[0] / n;
    case TP_AGG_L2: return sqrt(A[1]);
    default: return A[3] / n;
    }
}

/* Writes scores (TP_AGG_PAIRS, groups, W) from accumulators (groups, W, ACC_PER_CH). */
static void finalize(const double *acc, size_t groups, size_t W, double n, double *scores) {
    for (int bj = 0; bj < TP_AGG_COUNT; bj++)
        for (int sk = 0; sk < TP_AGG_COUNT; sk++) {
            double *out = scores + (size_t)(bj * 3 + sk) * groups * W;
            for (size_t i = 0; i < groups * W; i++)
                out[i] = batch_final(acc + (i * TP_AGG_COUNT + (size_t)sk) * ACC, bj, n);
        }
}

void tp_importance_opts_default(tp_importance_opts *o) {
    memset(o, 0, sizeof *o);
    o->batch = 4;
    o->neuron_source = TP_NEURON_ACT;
    o->depth_samples = 64;
}

void tp_importance_free(tp_importance *imp) {
    if (!imp) return;
    free(imp->model);
    free(imp->data);
    free(imp->heads);
    free(imp->kv_groups);
    free(imp->neurons);
    free(imp->channels);
    free(imp->block_influence);
    free(imp->layer_loss);
    free(imp->block_loss);
    free(imp->block_metric_name);
    free(imp->block_metric);
    free(imp);
}

static void free_state(imp_state *st) {
    free(st->acc_heads);
    free(st->acc_neur);
    free(st->acc_norm);
    free(st->layer_in);
    free(st->bi_sum);
    free(st->bi_cnt);
    free(st->head_norm);
    free(st->seq_tmp);
}

/* ---- the streamed model: everything layer-major, each layer read once ----
 * The importance stream (all n samples) goes through layer l in batches of B with the hooks, as
 * tp_forward_ex would take each batch through it. The layer-removal losses keep one residual
 * stream of the depth samples per variant (the full model, each layer removed, each block
 * removed): a variant's stream is a copy of the full model's at the first layer it skips, and it
 * goes through every later layer it keeps in batches of the size tp_lm_loss uses, so each
 * variant's numbers are the ones tp_lm_loss computes on the loaded model. */
typedef struct {
    float *x;        /* (depth_samples, T, d) residual stream; NULL until the variant diverges */
    int first, last; /* the layers it skips (first = -1: none) */
    double *loss;    /* where its loss goes */
} depth_variant;

static tp_status streamed_pass(const tp_model *m, const int32_t *ids, size_t n, int T, size_t B,
                               const tp_importance_opts *o, imp_state *st, tp_importance *imp) {
    const tp_config *c = &m->cfg;
    size_t L = (size_t)c->n_layers, d = (size_t)c->d_model, V = (size_t)c->vocab, Td = (size_t)T * d;
    size_t ds = (size_t)imp->depth_samples, bs = (size_t)imp->block_size, nb = bs > 0 ? L - bs + 1 : 0;
    size_t nv = ds ? 1 + L + nb : 0, Bl = tp_lm_loss_batch(T, c->vocab);
    if (Bl > ds) Bl = ds;
    tp_forward_opts fo = {imp_hook, st, NULL};
    double total = o->progress ? o->progress->total : 0, t_depth = 0;
    float *x = malloc(n * Td * sizeof(float));
    depth_variant *v = calloc(nv ? nv : 1, sizeof *v);
    if (!x || !v) {
        free(x);
        free(v);
        return tp_fail(TP_ERR_NOMEM, "importance: out of memory for the residual stream of %zu x %d tokens", n, T);
    }
    for (size_t k = 0; k < nv; k++) {
        v[k].first = k == 0 ? -1 : k <= L ? (int)(k - 1) : (int)(k - 1 - L);
        v[k].last = k == 0 ? -1 : k <= L ? v[k].first : v[k].first + (int)bs - 1;
        v[k].loss = k == 0 ? &imp->base_loss : k <= L ? &imp->layer_loss[k - 1] : &imp->block_loss[k - 1 - L];
    }
    tp_status s = tp_model_embed_any(m, ids, n * (size_t)T, x);
    if (!s && nv) {
        if (!(v[0].x = malloc(ds * Td * sizeof(float)))) s = tp_fail(TP_ERR_NOMEM, "importance: out of memory");
        else memcpy(v[0].x, x, ds * Td * sizeof(float)); /* the depth samples are the first ones */
    }
    for (size_t l = 0; l < L && !s; l++) {
        s = tp_model_layer_ready(m, (int)l);
        for (size_t i = 0; i < n && !s; i += B) {
            size_t b = n - i < B ? n - i : B;
            st->sample0 = i;
            s = tp_forward_layer(m, (int)l, x + i * Td, (int)b, T, &fo);
        }
        double t0 = tp_time_s();
        for (size_t k = 1; k < nv && !s; k++)
            if (v[k].first == (int)l) {
                if (!(v[k].x = malloc(ds * Td * sizeof(float))))
                    s = tp_fail(TP_ERR_NOMEM, "importance: out of memory for the layer-removal streams (%zu x %zu "
                                "floats); use fewer depth samples", nv, ds * Td);
                else memcpy(v[k].x, v[0].x, ds * Td * sizeof(float));
            }
        for (size_t k = 0; k < nv && !s; k++) {
            if (!v[k].x || (v[k].first <= (int)l && (int)l <= v[k].last)) continue;
            for (size_t j = 0; j < ds && !s; j += Bl)
                s = tp_forward_layer(m, (int)l, v[k].x + j * Td, (int)(ds - j < Bl ? ds - j : Bl), T, NULL);
        }
        t_depth += tp_time_s() - t0;
        if (o->progress) tp_progress_update(o->progress, total * 0.95 * (double)(l + 1) / (double)L);
    }
    /* the final norm of the importance stream */
    float *h = s ? NULL : malloc((B > Bl ? B : Bl) * Td * sizeof(float));
    if (!s && !h) s = tp_fail(TP_ERR_NOMEM, "importance: out of memory");
    for (size_t i = 0; i < n && !s; i += B) {
        size_t b = n - i < B ? n - i : B;
        st->sample0 = i;
        s = tp_forward_final(m, x + i * Td, b * (size_t)T, h, NULL);
        if (!s) imp_hook(st, TP_HOOK_FINAL_NORM, (int)L, h, (int)b, T, (int)d);
    }
    free(x);
    /* the losses of the variants, as tp_lm_loss sums them */
    double t0 = tp_time_s();
    float *logits = NULL;
    double *nll = NULL;
    if (!s && nv) {
        s = tp_model_stream_head(m);
        logits = malloc(Bl * (size_t)T * V * sizeof(float));
        nll = malloc((size_t)T * sizeof(double));
        if (!s && (!logits || !nll))
            s = tp_fail(TP_ERR_NOMEM, "importance: out of memory for %zu x %d logits", Bl * (size_t)T, c->vocab);
    }
    for (size_t k = 0; k < nv && !s; k++) {
        double sum = 0;
        for (size_t j = 0; j < ds && !s; j += Bl) {
            size_t b = ds - j < Bl ? ds - j : Bl;
            s = tp_forward_final(m, v[k].x + j * Td, b * (size_t)T, h, logits);
            for (size_t q = 0; q < b && !s; q++) {
                tp_nll_rows(logits + q * (size_t)T * V, ids + (j + q) * (size_t)T + 1, (size_t)T - 1, V, nll);
                for (size_t t = 0; t + 1 < (size_t)T; t++) sum += nll[t];
            }
        }
        if (!s) *v[k].loss = sum / ((double)ds * (double)(T - 1));
        free(v[k].x);
        v[k].x = NULL;
    }
    tp_model_stream_head_release(m);
    for (size_t k = 0; k < nv; k++) free(v[k].x);
    free(v);
    free(h);
    free(logits);
    free(nll);
    imp->depth_seconds = t_depth + (tp_time_s() - t0);
    if (o->progress && !s) tp_progress_update(o->progress, total);
    return s;
}

/* The forward pass with hooks over every sample; fills the width scores and Block Influence. */
static tp_status importance_pass(const tp_model *m, const int32_t *ids, size_t n, size_t n_all, int T,
                                 const tp_importance_opts *o, tp_importance *imp) {
    const tp_config *c = &m->cfg;
    size_t L = (size_t)c->n_layers, d = (size_t)c->d_model, nh = (size_t)c->n_heads, ff = (size_t)c->d_ff;
    size_t B = o->batch > 0 ? (size_t)o->batch : 1;
    if (B > n) B = n;
    size_t maxw = d > ff ? d : ff;
    if (nh > maxw) maxw = nh;
    imp_state st = {0};
    st.m = m;
    st.neuron_point = o->neuron_source == TP_NEURON_GATE ? TP_HOOK_MLP_GATE : TP_HOOK_MLP_ACT;
    st.acc_heads = calloc(L * nh * ACC_PER_CH, sizeof(double));
    st.acc_neur = calloc(L * ff * ACC_PER_CH, sizeof(double));
    st.acc_norm = calloc((2 * L + 1) * d * ACC_PER_CH, sizeof(double));
    st.layer_in = malloc(B * (size_t)T * d * sizeof(float));
    st.bi_sum = calloc(L, sizeof(double));
    st.bi_cnt = calloc(L, sizeof(double));
    st.head_norm = malloc(B * (size_t)T * nh * sizeof(double));
    st.seq_tmp = malloc(3 * maxw * sizeof(double));
    if (!st.acc_heads || !st.acc_neur || !st.acc_norm || !st.layer_in || !st.bi_sum || !st.bi_cnt ||
        !st.head_norm || !st.seq_tmp) {
        free_state(&st);
        return tp_fail(TP_ERR_NOMEM, "importance: out of memory");
    }
    tp_forward_opts fo = {imp_hook, &st, NULL};
    tp_status s = TP_OK;
    double t0 = tp_time_s();
    if (m->stream) s = streamed_pass(m, ids, n, T, B, o, &st, imp);
    for (size_t i = 0; i < n && !s && !m->stream; i += B) {
        size_t b = n - i < B ? n - i : B;
        st.sample0 = i;
        s = tp_forward_ex(m, ids + i * (size_t)T, (int)b, T, NULL, NULL, 0, &fo);
        if (o->progress) tp_progress_update(o->progress, (double)((i + b) * (size_t)T));
    }
    imp->seconds = tp_time_s() - t0 - imp->depth_seconds;
    imp->tokens_per_s = imp->seconds > 0 ? (double)(n * (size_t)T) / imp->seconds : 0;
    tp_comm *cm = comm_of(o);
    if (!s && tp_comm_size(cm) > 1) {
        double nl = (double)n, na = (double)n_all;
        if (!(s = merge_acc(cm, st.acc_heads, L * nh * TP_AGG_COUNT, nl, na)) &&
            !(s = merge_acc(cm, st.acc_neur, L * ff * TP_AGG_COUNT, nl, na)) &&
            !(s = merge_acc(cm, st.acc_norm, (2 * L + 1) * d * TP_AGG_COUNT, nl, na)) &&
            !(s = tp_comm_sum_f64(cm, st.bi_sum, L)))
            s = tp_comm_sum_f64(cm, st.bi_cnt, L);
        if (s) s = tp_fail_ctx(s, "importance: merging the ranks' statistics: ");
    }
    if (!s) {
        double dn = (double)n_all;
        finalize(st.acc_heads, L, nh, dn, imp->heads);
        finalize(st.acc_neur, L, ff, dn, imp->neurons);
        /* channels: finalize each norm point, then sum the 2L+1 points */
        double *pts = malloc(TP_AGG_PAIRS * (2 * L + 1) * d * sizeof(double));
        if (!pts) s = tp_fail(TP_ERR_NOMEM, "importance: out of memory");
        else {
            finalize(st.acc_norm, 2 * L + 1, d, dn, pts);
            for (int q = 0; q < TP_AGG_PAIRS; q++)
                for (size_t ch = 0; ch < d; ch++) {
                    double sum = 0;
                    for (size_t p = 0; p < 2 * L + 1; p++) sum += pts[((size_t)q * (2 * L + 1) + p) * d + ch];
                    imp->channels[(size_t)q * d + ch] = sum;
                }
            free(pts);
        }
        size_t rep = nh / (size_t)c->n_kv_heads;
        for (size_t q = 0; q < TP_AGG_PAIRS; q++)
            for (size_t l = 0; l < L; l++)
                for (size_t g = 0; g < (size_t)c->n_kv_heads; g++) {
                    double sum = 0;
                    for (size_t j = 0; j < rep; j++) sum += imp->heads[(q * L + l) * nh + g * rep + j];
                    imp->kv_groups[(q * L + l) * (size_t)c->n_kv_heads + g] = sum;
                }
        for (size_t l = 0; l < L; l++)
            imp->block_influence[l] = st.bi_cnt[l] > 0 ? 1.0 - st.bi_sum[l] / st.bi_cnt[l] : NAN;
    }
    free_state(&st);
    return s;
}

/* Layer-removal losses (and the downstream block metric) on the first depth_samples samples. */
static tp_status depth_pass(const tp_model *m, const int32_t *ids, int T, const tp_importance_opts *o,
                            tp_importance *imp) {
    int L = m->cfg.n_layers, nb = imp->block_size > 0 ? L - imp->block_size + 1 : 0;
    size_t ds = (size_t)imp->depth_samples;
    unsigned char *skip = calloc((size_t)L, 1);
    if (!skip) return tp_fail(TP_ERR_NOMEM, "out of memory");
    double t0 = tp_time_s();
    tp_status s = tp_lm_loss(m, ids, ds, T, NULL, o->progress, &imp->base_loss);
    for (int l = 0; l < L && !s; l++) {
        skip[l] = 1;
        s = tp_lm_loss(m, ids, ds, T, skip, o->progress, &imp->layer_loss[l]);
        skip[l] = 0;
    }
    for (int i = 0; i < nb && !s; i++) {
        memset(skip + i, 1, (size_t)imp->block_size);
        s = tp_lm_loss(m, ids, ds, T, skip, o->progress, &imp->block_loss[i]);
        if (!s && o->block_metric) {
            s = o->block_metric->fn(o->block_metric->user, m, skip, &imp->block_metric[i]);
            if (s) tp_fail_ctx(s, "block metric %s, layers %d-%d: ", o->block_metric->name, i, i + imp->block_size - 1);
        }
        memset(skip + i, 0, (size_t)imp->block_size);
    }
    if (!s && o->block_metric && nb > 0) {
        s = o->block_metric->fn(o->block_metric->user, m, NULL, &imp->block_metric_base);
        if (s) tp_fail_ctx(s, "block metric %s of the full model: ", o->block_metric->name);
    }
    imp->depth_seconds = tp_time_s() - t0;
    free(skip);
    return s;
}

tp_status tp_importance_compute(const tp_model *m, const int32_t *ids, size_t n, int seq_len,
                                const tp_importance_opts *o, tp_importance **out) {
    *out = NULL;
    tp_importance_opts def;
    if (!o) {
        tp_importance_opts_default(&def);
        o = &def;
    }
    const tp_config *c = &m->cfg;
    if (c->hetero)
        return tp_fail(TP_ERR_UNSUPPORTED, "importance: scoring a model with per-layer widths is not supported yet "
                       "(score the uniform model it was pruned from)");
    if (n == 0 || seq_len < 2) return tp_fail(TP_ERR_ARG, "importance: need >= 1 sample of >= 2 tokens");
    if (o->depth_samples < 0 || (size_t)o->depth_samples > n)
        return tp_fail(TP_ERR_ARG, "importance: depth samples %d must be in [0, %zu] (the calibration samples)",
                       o->depth_samples, n);
    if (o->block_size < 0 || o->block_size >= c->n_layers)
        return tp_fail(TP_ERR_ARG, "importance: block size %d must be in [0, %d) (the model has %d layers)",
                       o->block_size, c->n_layers, c->n_layers);
    if (o->block_size > 0 && o->depth_samples == 0)
        return tp_fail(TP_ERR_ARG, "importance: scoring layer blocks needs depth samples > 0");
    if (o->block_metric && m->stream)
        return tp_fail(TP_ERR_UNSUPPORTED, "importance: a downstream block metric needs the model loaded, not streamed");
    if (o->block_metric && (!o->block_metric->fn || !o->block_metric->name))
        return tp_fail(TP_ERR_ARG, "importance: block metric without a name or function");
    tp_importance *imp = calloc(1, sizeof *imp);
    if (!imp) return tp_fail(TP_ERR_NOMEM, "out of memory");
    size_t L = (size_t)c->n_layers;
    imp->n_layers = c->n_layers;
    imp->d_model = c->d_model;
    imp->n_heads = c->n_heads;
    imp->n_kv_heads = c->n_kv_heads;
    imp->head_dim = c->head_dim;
    imp->d_ff = c->d_ff;
    imp->n_samples = (int)n;
    imp->seq_len = seq_len;
    imp->batch = o->batch > 0 ? o->batch : 1;
    imp->depth_samples = o->depth_samples;
    imp->block_size = o->depth_samples > 0 ? o->block_size : 0;
    imp->neuron_source = o->neuron_source;
    imp->default_pair = TP_AGG_DEFAULT_PAIR;
    imp->base_loss = NAN;
    imp->block_metric_base = NAN;
    imp->heads = calloc(TP_AGG_PAIRS * L * (size_t)c->n_heads, sizeof(double));
    imp->kv_groups = calloc(TP_AGG_PAIRS * L * (size_t)c->n_kv_heads, sizeof(double));
    imp->neurons = calloc(TP_AGG_PAIRS * L * (size_t)c->d_ff, sizeof(double));
    imp->channels = calloc(TP_AGG_PAIRS * (size_t)c->d_model, sizeof(double));
    imp->block_influence = calloc(L, sizeof(double));
    int ok = imp->heads && imp->kv_groups && imp->neurons && imp->channels && imp->block_influence;
    size_t nb = imp->block_size > 0 ? L - (size_t)imp->block_size + 1 : 0;
    if (o->depth_samples > 0) ok = ok && (imp->layer_loss = calloc(L, sizeof(double)));
    if (nb) ok = ok && (imp->block_loss = calloc(nb, sizeof(double)));
    if (nb && o->block_metric) {
        ok = ok && (imp->block_metric = calloc(nb, sizeof(double))) &&
             (imp->block_metric_name = strdup(o->block_metric->name));
        imp->block_metric_higher_is_better = o->block_metric->higher_is_better;
    }
    if (!ok) {
        tp_importance_free(imp);
        return tp_fail(TP_ERR_NOMEM, "importance: out of memory");
    }
    /* Several ranks: rank r scores its share of the depth samples followed by its share of the
     * others (the passes want the depth samples first), and the results are merged. */
    tp_comm *cm = comm_of(o);
    int R = tp_comm_size(cm), r = tp_comm_rank(cm);
    size_t ds = (size_t)o->depth_samples, dlo = 0, dhi = ds, lo = 0, hi = n - ds, n_loc = n;
    int32_t *local = NULL;
    const int32_t *use = ids;
    tp_importance_opts lo_opts = *o;
    if (R > 1) {
        if (n < (size_t)R || (ds > 0 && ds < (size_t)R)) {
            tp_importance_free(imp);
            return tp_fail(TP_ERR_ARG, "importance over %d ranks needs at least %d samples and 0 or at least %d depth "
                                       "samples (got %zu and %zu)", R, R, R, n, ds);
        }
        tp_comm_share(ds, r, R, &dlo, &dhi);
        tp_comm_share(n - ds, r, R, &lo, &hi);
        n_loc = (dhi - dlo) + (hi - lo);
        local = malloc(n_loc * (size_t)seq_len * sizeof(int32_t));
        if (!local) {
            tp_importance_free(imp);
            return tp_fail(TP_ERR_NOMEM, "importance: out of memory");
        }
        memcpy(local, ids + dlo * (size_t)seq_len, (dhi - dlo) * (size_t)seq_len * sizeof(int32_t));
        memcpy(local + (dhi - dlo) * (size_t)seq_len, ids + (ds + lo) * (size_t)seq_len,
               (hi - lo) * (size_t)seq_len * sizeof(int32_t));
        use = local;
        lo_opts.depth_samples = (int)(dhi - dlo);
        imp->depth_samples = lo_opts.depth_samples; /* the passes read it; set back below */
    }
    if (o->progress) {
        o->progress->total = (double)(n_loc * (size_t)seq_len) +
                             (double)((dhi - dlo) * (size_t)seq_len) * (double)(1 + L + nb);
        o->progress->done = 0;
    }
    tp_status s = importance_pass(m, use, n_loc, n, seq_len, &lo_opts, imp);
    if (!s && ds > 0 && !m->stream) s = depth_pass(m, use, seq_len, &lo_opts, imp);
    imp->depth_samples = o->depth_samples;
    if (!s && R > 1 && ds > 0) { /* each rank's mean losses, weighted by its samples */
        size_t nl = 2 + L + nb;
        double *v = calloc(nl, sizeof(double)), w = (double)(dhi - dlo) / (double)ds;
        if (!v) s = tp_fail(TP_ERR_NOMEM, "out of memory");
        for (size_t i = 0; !s && i < nl; i++) {
            double x = i == 0 ? imp->base_loss : i <= L ? imp->layer_loss[i - 1] : i <= L + nb ? imp->block_loss[i - 1 - L] : 0;
            v[i] = x * w;
        }
        if (!s) s = tp_comm_sum_f64(cm, v, nl);
        for (size_t i = 0; !s && i < L + nb + 1; i++) {
            if (i == 0) imp->base_loss = v[0];
            else if (i <= L) imp->layer_loss[i - 1] = v[i];
            else imp->block_loss[i - 1 - L] = v[i];
        }
        free(v);
    }
    free(local);
    if (s) {
        tp_importance_free(imp);
        return s;
    }
    *out = imp;
    return TP_OK;
}
