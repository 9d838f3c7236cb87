/* Distillation losses (include/taper/distill.h): KL / reverse KL / JSD between softmax
 * distributions over the full vocabulary or over the teacher's top-k plus a "rest" bin, and
 * cosine / MSE between hidden states with an optional projection.
 *
 * All divergences are written as a loss over bins b (single tokens, or the top-k tokens and the
 * rest) with teacher masses P_b and student masses Q_b = sum of q_j in the bin. With g_b = dL/dQ_b,
 * the gradient with respect to the student's tempered logits z_j is
 *     dL/dz_j = q_j g_bin(j) - q_j S,   S = sum_b Q_b g_b,
 * (softmax backward), and d/ds = d/dz / tau. Per-row work is done in double where it sums. */
#include <math.h>
#include <stdlib.h>
#include <string.h>


#include "taper/distill.h"
#include "model/kernels.h"

#define REST_FLOOR 1e-12

/* log-sum-exp of z = x / tau over n values */
static double lse_tempered(const float *x, size_t n, double inv_tau) {
    float mx = x[0];
    for (size_t j = 1; j < n; j++)
        if (x[j] > mx) mx = x[j];
    double acc = 0;
    for (size_t j = 0; j < n; j++) acc += exp(((double)x[j] - mx) * inv_tau);
    return (double)mx * inv_tau + log(acc);
}

static double kd_factor(const tp_kd_cfg *c) { return c->tau2 ? (double)c->tau * c->tau : 1.0; }

double tp_kd_rows(const tp_kd_cfg *c, float *s, const float *t, size_t R, size_t V, float scale) {
    const double inv_tau = 1.0 / c->tau, f = kd_factor(c);
    const double beta = c->beta;
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (R * V >= 65536)
    for (size_t r = 0; r < R; r++) {
        float *sr = s + r * V;
        const float *tr = t + r * V;
        if (c->kind == TP_KD_FKL) { /* the default: one fused, vectorised pass (kernels.c) */
            total += f * tp_fkl_row(tr, sr, V, (float)inv_tau, (float)(f * inv_tau * scale));
            continue;
        }
        double ls = lse_tempered(sr, V, inv_tau), lt = lse_tempered(tr, V, inv_tau);
        double loss = 0, S = 0;
        /* first pass: loss and S; second pass: gradient (needs S) */
        for (size_t j = 0; j < V; j++) {
            double lq = sr[j] * inv_tau - ls, lp = tr[j] * inv_tau - lt;
            double q = exp(lq), p = exp(lp);
            if (c->kind == TP_KD_FKL) {
                if (p > 0) loss += p * (lp - lq);
            } else if (c->kind == TP_KD_RKL) {
                if (q > 0) {
                    loss += q * (lq - lp);
                    S += q * (lq - lp + 1.0);
                }
            } else {
                double m = beta * p + (1 - beta) * q;
                if (m > 0) {
                    double lm = log(m);
                    if (p > 0) loss += beta * p * (lp - lm);
                    if (q > 0) {
                        loss += (1 - beta) * q * (lq - lm);
                        S += q * (1 - beta) * (lq - lm);
                    }
                }
            }
        }
        double gs = f * inv_tau * scale;
        for (size_t j = 0; j < V; j++) {
            double lq = sr[j] * inv_tau - ls, lp = tr[j] * inv_tau - lt;
            double q = exp(lq), p = exp(lp), dz;
            if (c->kind == TP_KD_FKL) {
                dz = q - p; /* q g = -p, S = -1 */
            } else if (c->kind == TP_KD_RKL) {
                dz = q > 0 ? q * (lq - lp + 1.0 - S) : 0.0;
            } else {
                double m = beta * p + (1 - beta) * q;
                dz = (q > 0 && m > 0) ? q * ((1 - beta) * (lq - log(m)) - S) : 0.0;
            }
            sr[j] = (float)(dz * gs);
        }
        total += loss * f;
    }
    return total;
}

/* ---- top-k ---- */

/* min-heap on (value, -index): the root is the weakest of the kept entries */
static int weaker(float va, int32_t ia, float vb, int32_t ib) { return va < vb || (va == vb && ia > ib); }

static void sift_down(float *v, int32_t *ix, int k, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < k && weaker(v[l], ix[l], v[m], ix[m])) m = l;
        if (r < k && weaker(v[r], ix[r], v[m], ix[m])) m = r;
        if (m == i) return;
        float tv = v[i]; v[i] = v[m]; v[m] = tv;
        int32_t ti = ix[i]; ix[i] = ix[m]; ix[m] = ti;
        i = m;
    }
}

void tp_kd_topk_logits(const float *logits, size_t V, int k, int32_t *idx, float *top) {
    if (k <= 0) return;
    if ((size_t)k > V) k = (int)V;
    float *hv = top; /* the heap's values, sorted in place at the end */
    for (int i = 0; i < k; i++) {
        hv[i] = logits[i];
        idx[i] = i;
    }
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(hv, idx, k, i);
    for (size_t j = (size_t)k; j < V; j++)
        if (weaker(hv[0], idx[0], logits[j], (int32_t)j)) {
            hv[0] = logits[j];
            idx[0] = (int32_t)j;
            sift_down(hv, idx, k, 0);
        }
    /* heap-sort into descending order (strongest first) */
    for (int n = k - 1; n > 0; n--) {
        float tv = hv[0]; hv[0] = hv[n]; hv[n] = tv;
        int32_t ti = idx[0]; idx[0] = idx[n]; idx[n] = ti;
        sift_down(hv, idx, n, 0);
    }
}

double tp_kd_lse(const float *logits, size_t V, float tau) { return lse_tempered(logits, V, 1.0 / tau); }

float tp_kd_logp(float logit, float tau, double lse) { return (float)(logit * (1.0 / tau) - lse); }

void tp_kd_topk(const float *logits, size_t V, int k, float tau, int32_t *idx, float *logp) {
    if (k <= 0) return;
    if ((size_t)k > V) k = (int)V;
    tp_kd_topk_logits(logits, V, k, idx, logp);
    double l = tp_kd_lse(logits, V, tau);
    for (int i = 0; i < k; i++) logp[i] = tp_kd_logp(logp[i], tau, l);
}

double tp_kd_rows_topk(const tp_kd_cfg *c, float *s, const int32_t *idx, const float *logp, int k, size_t R,
                       size_t V, float scale) {
    const double inv_tau = 1.0 / c->tau, f = kd_factor(c), beta = c->beta;
    double total = 0;
#pragma omp parallel reduction(+ : total) if (R * V >= 65536)
    {
        unsigned char *in_top = calloc(V, 1);
        double *gb = malloc(((size_t)k + 1) * sizeof *gb); /* g_b for the k bins and the rest */
#pragma omp for schedule(static)
        for (size_t r = 0; r < R; r++) {
            float *sr = s + r * V;
            const int32_t *ir = idx + r * (size_t)k;
            const float *lpr = logp + r * (size_t)k;
            if (!in_top || !gb) continue; /* out of memory: leaves the row untouched */
            double ls = lse_tempered(sr, V, inv_tau);
            double Ptop = 0, Qrest = 0;
            for (int i = 0; i < k; i++) {
                in_top[ir[i]] = 1;
                Ptop += exp((double)lpr[i]);
            }
            for (size_t j = 0; j < V; j++)
                if (!in_top[j]) Qrest += exp(sr[j] * inv_tau - ls);
            double Prest = 1.0 - Ptop;
            if (Prest < REST_FLOOR) Prest = REST_FLOOR;
            double lPr = log(Prest), lQr = log(Qrest > 1e-300 ? Qrest : 1e-300);
            double loss = 0, S = 0;
            for (int b = 0; b <= k; b++) {
                double lp = b < k ? (double)lpr[b] : lPr;
                double lq = b < k ? sr[ir[b]] * inv_tau - ls : lQr;
                double P = exp(lp), Q = exp(lq);
                if (c->kind == TP_KD_FKL) {
                    loss += P * (lp - lq);
                    gb[b] = -P; /* stores Q_b g_b */
                    S += -P;
                } else if (c->kind == TP_KD_RKL) {
                    loss += Q * (lq - lp);
                    gb[b] = lq - lp + 1.0;
                    S += Q * gb[b];
                } else {
                    double lm = log(beta * P + (1 - beta) * Q);
                    loss += beta * P * (lp - lm) + (1 - beta) * Q * (lq - lm);
                    gb[b] = (1 - beta) * (lq - lm);
                    S += Q * gb[b];
                }
            }
            double gs = f * inv_tau * scale;
            /* rest tokens first (top-k entries are overwritten below) */
            for (size_t j = 0; j < V; j++) {
                if (in_top[j]) continue;
                double q = exp(sr[j] * inv_tau - ls), dz;
                if (c->kind == TP_KD_FKL)
                    dz = gb[k] * exp(sr[j] * inv_tau - ls - lQr) - q * S;
                else
                    dz = q * (gb[k] - S);
                sr[j] = (float)(dz * gs);
            }
            for (int b = 0; b < k; b++) {
                double q = exp(sr[ir[b]] * inv_tau - ls), dz;
                dz = c->kind == TP_KD_FKL ? gb[b] - q * S : q * (gb[b] - S);
                sr[ir[b]] = (float)(dz * gs);
            }
            for (int i = 0; i < k; i++) in_top[ir[i]] = 0;
            total += loss * f;
        }
        free(in_top);
        free(gb);
    }
    return total;
}

/* ---- hidden-state losses ---- */

/* C(M,N) = alpha A(M,K) B(K,N) + beta C, row-major; trans_a: A stored (K,M) */
static void gemm(int trans_a, size_t M, size_t N, size_t K, float alpha, const float *A, const float *B, float *C,
                 float beta) {
    tp_sgemm_prec(trans_a, 0, (int)M, (int)N, (int)K, alpha, A, trans_a ? (int)M : (int)K, B, (int)N, beta, C, (int)N);
}

/* The loss of rows y (N, dt) against xt, summed over rows; with g set, the gradient of the loss
 * times scale with respect to y written (add 0) or added (add 1) into g (N, dt). */
static double hid_rows(tp_hid_kind kind, const float *y, const float *xt, size_t dt, size_t N, float *g, int add,
                       float scale) {
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (N * dt >= 65536)
    for (size_t n = 0; n < N; n++) {
        const float *yr = y + n * dt, *tr = xt + n * dt;
        float *gr = g ? g + n * dt : NULL;
        if (kind == TP_HID_COSINE) {
            double yy = 0, tt = 0, yt = 0;
            for (size_t i = 0; i < dt; i++) {
                yy += (double)yr[i] * yr[i];
                tt += (double)tr[i] * tr[i];
                yt += (double)yr[i] * tr[i];
            }
            if (yy <= 0 || tt <= 0) {
                total += 1.0;
                if (gr && !add)
                    for (size_t i = 0; i < dt; i++) gr[i] = 0.0f;
                continue;
            }
            double ny = sqrt(yy), nt = sqrt(tt), cs = yt / (ny * nt);
            total += 1.0 - cs;
            if (gr)
                for (size_t i = 0; i < dt; i++) {
                    double d = -(tr[i] / (ny * nt) - cs * yr[i] / yy) * scale;
                    gr[i] = add ? gr[i] + (float)d : (float)d;
                }
        } else {
            double acc = 0;
            for (size_t i = 0; i < dt; i++) {
                double e = (double)yr[i] - tr[i];
                acc += e * e;
                if (gr) {
                    double d = 2.0 * e / (double)dt * scale;
                    gr[i] = add ? gr[i] + (float)d : (float)d;
                }
            }
            total += acc / (double)dt;
        }
    }
    return total;
}

/* y = xs P^T into ybuf when P (else y = xs), then hid_rows on it */
static double hid_fwd(tp_hid_kind kind, const float *xs, size_t ds, const float *xt, size_t dt, size_t N,
                      const float *P, float *ybuf, float *g, int add, float scale) {
    const float *y = xs;
    if (P) {
        tp_matmul_wt(xs, P, NULL, ybuf, N, ds, dt); /* y(N,dt) = xs(N,ds) P^T: P is (dt, ds) */
        y = ybuf;
    }
    return hid_rows(kind, y, xt, dt, N, g, add, scale);
}

double tp_hidden_loss(tp_hid_kind kind, const float *xs, size_t ds, const float *xt, size_t dt, size_t N,
                      const float *P, float *dxs, float *dP, float scale) {
    if (!P && ds != dt) return NAN;
    float *ybuf = P ? malloc(N * dt * sizeof(float)) : NULL;
    float *dy = P && (dxs || dP) ? malloc(N * dt * sizeof(float)) : NULL;
    if ((P && !ybuf) || (P && (dxs || dP) && !dy)) {
        free(ybuf);
        free(dy);
        return NAN;
    }
    /* without P the gradient of y is the gradient of xs: added directly */
    double total = hid_fwd(kind, xs, ds, xt, dt, N, P, ybuf, P ? dy : dxs, !P, scale);
    if (dy) tp_hidden_loss_bwd(xs, ds, dt, N, P, dy, dxs, dP, 1.0f);
    free(ybuf);
    free(dy);
    return total;
}

double tp_hidden_loss_fwd(tp_hid_kind kind, const float *xs, size_t ds, const float *xt, size_t dt, size_t N,
                          const float *P, float *ybuf, float *gy) {
    if (!P && ds != dt) return NAN;
    return hid_fwd(kind, xs, ds, xt, dt, N, P, ybuf, gy, 0, 1.0f);
}

void tp_hidden_loss_bwd(const float *xs, size_t ds, size_t dt, size_t N, const float *P, const float *gy, float *dxs,
                        float *dP, float scale) {
    if (!P) {
        if (!dxs) return;
#pragma omp parallel for schedule(static) if (N * ds >= 65536)
        for (size_t i = 0; i < N * ds; i++) dxs[i] += scale * gy[i];
        return;
    }
    if (dxs) gemm(0, N, ds, dt, scale, gy, P, dxs, 1.0f); /* dxs(N,ds) += scale gy(N,dt) P(dt,ds) */
    if (dP) gemm(1, dt, ds, N, scale, gy, xs, dP, 1.0f);  /* dP(dt,ds) += scale gy^T(dt,N) xs(N,ds) */
}

/* ---- contrastive loss ---- */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double tp_kd_gumbel(uint64_t seed, uint64_t row, int32_t token) {
    uint64_t h = mix64(seed ^ mix64(row + 0x9e3779b97f4a7c15ull) ^ mix64(((uint64_t)(uint32_t)token << 1) | 1u));
    double u = ((double)(h >> 11) + 0.5) * (1.0 / 9007199254740992.0); /* in (0, 1), never 0 or 1 */
    return -log(-log(u));
}

/* a beats b as a negative: larger key, ties to the earlier pool entry */
static int key_better(double ka, size_t pa, double kb, size_t pb) { return ka > kb || (ka == kb && pa < pb); }

static void key_sift(double *key, size_t *pos, int n, int i) { /* min-heap: the root is the weakest */
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && key_better(key[m], pos[m], key[l], pos[l])) m = l;
        if (r < n && key_better(key[m], pos[m], key[r], pos[r])) m = r;
        if (m == i) return;
        double tk = key[i]; key[i] = key[m]; key[m] = tk;
        size_t tp = pos[i]; pos[i] = pos[m]; pos[m] = tp;
        i = m;
    }
}

tp_status tp_kd_pick(const float *score, const int32_t *ids, size_t n, double mult, int N, uint64_t seed, uint64_t row,
                     int32_t *cand) {
    if (N < 1 || (size_t)N > n - (n > 0)) /* N <= n - 1 */
        return tp_fail(TP_ERR_ARG, "contrastive loss: %d negatives need at least %d candidate tokens besides the "
                                   "teacher's top token, the pool has %zu", N, N, n > 0 ? n - 1 : 0);
    /* y*: the largest score, ties to the earliest entry (for a top-k pool: entry 0) */
    size_t best = 0;
    for (size_t j = 1; j < n; j++)
        if (score[j] > score[best]) best = j;
    cand[0] = ids ? ids[best] : (int32_t)best;
    double key[TP_KD_MAX_NEG];
    size_t pos[TP_KD_MAX_NEG];
    if (N > TP_KD_MAX_NEG)
        return tp_fail(TP_ERR_ARG, "contrastive loss: %d negatives, at most %d supported", N, TP_KD_MAX_NEG);
    int h = 0;
    for (size_t j = 0; j < n; j++) {
        if (j == best) continue;
        int32_t id = ids ? ids[j] : (int32_t)j;
        double k = (double)score[j] * mult + tp_kd_gumbel(seed, row, id);
        if (isnan(k)) k = -INFINITY;
        if (h < N) {
            key[h] = k;
            pos[h] = j;
            h++;
            if (h == N)
                for (int i = N / 2 - 1; i >= 0; i--) key_sift(key, pos, N, i);
        } else if (key_better(k, j, key[0], pos[0])) {
            key[0] = k;
            pos[0] = j;
            key_sift(key, pos, N, 0);
        }
    }
    /* heap-sort: strongest first */
    for (int m = N - 1; m > 0; m--) {
        double tk = key[0]; key[0] = key[m]; key[m] = tk;
        size_t tp = pos[0]; pos[0] = pos[m]; pos[m] = tp;
        key_sift(key, pos, m, 0);
    }
    for (int i = 0; i < N; i++) cand[1 + i] = ids ? ids[pos[N - 1 - i]] : (int32_t)pos[N - 1 - i];
    return TP_OK;
}

double tp_kd_contrastive(const tp_kd_cfg *c, const float *s, size_t V, const int32_t *cand, int n_cand, size_t R,
                         float scale, float *g) {
    const double inv_tau = 1.0 / c->tau, f = kd_factor(c);
    double total = 0;
    for (size_t r = 0; r < R; r++) {
        const float *sr = s + r * V;
        const int32_t *cr = cand + r * (size_t)n_cand;
        double mx = -INFINITY;
        for (int i = 0; i < n_cand; i++) mx = fmax(mx, sr[cr[i]] * inv_tau);
        double acc = 0;
        for (int i = 0; i < n_cand; i++) acc += exp(sr[cr[i]] * inv_tau - mx);
        double lse = mx + log(acc);
        total += (lse - sr[cr[0]] * inv_tau) * f;
        if (g) {
            float *gr = g + r * (size_t)n_cand;
            double gs = f * inv_tau * scale;
            for (int i = 0; i < n_cand; i++) gr[i] = (float)((exp(sr[cr[i]] * inv_tau - lse) - (i == 0)) * gs);
        }
    }
    return total;
}
