/* One training step of the Llama family: forward with a tape of saved activations, the loss over
 * the logits in row chunks (built-in cross-entropy or a user loss), and the full backward pass
 * into a gradient model; plus tp_ce_eval (validation cross-entropy without gradients).
 * The forward mirrors src/model/forward.c operation for operation, with the same kernels
 * (attention additionally keeps each row's log-sum-exp). Kernels and their naive twins live in
 * src/model/kernels.c. The internal gradient flow is the true gradient of the loss (what the
 * grad hooks see); grad_scale is applied only where parameter gradients are accumulated. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>


#include "model/kernels.h"
#include "model/model_internal.h"
#include "taper/train.h"
#include "train_internal.h"

/* Rows of logits alive at once: 512 while a chunk of fp32 logits stays within 128 MiB, else 256.
 * The vocabulary's three products (logits, their input gradient, the lm_head gradient) ran at
 * 330-365 GFLOP/s in chunks of 256 rows and 374-393 in chunks of 512 (SmolLM2, bf16, the AMD
 * EPYC); 1024 rows gained nothing more. */
static size_t logit_chunk(const tp_config *c) {
    return (size_t)c->vocab * 512 * sizeof(float) <= ((size_t)128 << 20) ? 512 : 256;
}

/* What one layer's backward needs besides its input. */
typedef struct {
    float *rstd1;  /* (N) 1/rms of the layer input (attention RMSNorm) */
    float *q;      /* (N, nh*hd) after RoPE */
    float *k, *v;  /* (N, nkv*hd), k after RoPE */
    float *att;    /* (N, nh*hd) attention output before o_proj */
    float *lse;    /* (B, nh, T) log-sum-exp of each query row's scaled scores */
    float *x_mid;  /* (N, d) residual stream after attention */
    float *rstd2;  /* (N) 1/rms of x_mid (MLP RMSNorm) */
    float *g, *u;  /* (N, ff) gate and up projections */
    /* qk_norm (Qwen3, Gemma 3): q and k before their per-head norm, and each head row's 1/rms */
    float *qr, *kr;         /* (N, nh*hd), (N, nkv*hd); NULL without qk_norm */
    float *rstd_q, *rstd_k; /* (N*nh), (N*nkv) */
    /* sandwich_norm (Gemma 3): o_proj / down_proj outputs before their norms, and their 1/rms */
    float *ao, *mo;         /* (N, d) each; NULL without sandwich_norm */
    float *rstd3, *rstd4;   /* (N) each */
    /* bf16 precision without grad hooks inside a layer (tape_bf16_alloc): the products' bf16
     * inputs that the backward reads again, kept from the forward instead of rebuilt and converted
     * again. *_ok: the forward pinned them there this step. */
    uint16_t *h1b, *h2b;    /* (N, d) attention and MLP norm outputs */
    uint16_t *attb;         /* (N, nh*hd) att */
    uint16_t *actb;         /* (N, ff) act */
    int h1_ok, h2_ok, att_ok, act_ok;
} layer_tape;

struct tp_tape {
    tp_config cfg;
    int B, T, recompute, n_thr;
    size_t N;           /* B*T rows of capacity */
    float *x_in;        /* (L+1, N, d) input of each layer; [L] is the last layer's output */
    layer_tape *lt;     /* (L) views; all the same one slot when recompute is set */
    float *rstd_f;      /* (N) final RMSNorm */
    /* workspace of one step */
    float *h;           /* (N, d) normed input; the final norm output during the loss */
    float *proj;        /* (N, d) o_proj / down_proj output */
    float *dres;        /* (N, d) gradient of the residual stream */
    float *dh;          /* (N, d) gradient of a norm output */
    float *act;         /* (N, ff) silu(g) * u */
    float *dact;        /* (N, ff) gradient of act, then of g */
    float *du;          /* (N, ff) gradient of u */
    float *datt;        /* (N, nh*hd) gradient of att */
    float *dq;          /* (N, nh*hd) */
    float *dk, *dv;     /* (N, nkv*hd) */
    float *dkh, *dvh;   /* (N, nh*hd) per query head dK/dV before the GQA group sum; NULL without GQA */
    float *logits;      /* (logit_chunk, vocab) one chunk of logits, then its gradient */
    float *att_scratch; /* (n_thr, 2*TP_ATT_BLOCK*T) */
    float *inv_freq;    /* (hd/2) */
    float *inv_freq_local; /* (hd/2) RoPE of sliding layers with their own base (Gemma 3) */
    float *normw;       /* (max(d, hd)) (1 + w) norm weights under norm_plus_one */
    float *dqn, *dkn;   /* (N, nh*hd), (N, nkv*hd) gradients of q / k before their norm; NULL without qk_norm */
    float *dproj;       /* (N, d) gradient of an o_proj / down_proj output; NULL without sandwich_norm */
    double *row_loss;   /* (logit_chunk) */
    int *pos;           /* (N) */
    float *block;       /* the allocation every float view above points into */
    uint16_t *bblock;   /* the layers' bf16 inputs (h1b, h2b, attb, actb) and dgb, dub; NULL when not kept */
    uint16_t *dgb, *dub; /* (N, ff) the gate and up gradients in bf16 (SwiGLU's backward writes them so) */
    size_t bytes;
};

static int g_keep_bf16 = 1; /* tests: tp_tape_keep_bf16 */
void tp_tape_keep_bf16(int on) { g_keep_bf16 = on != 0; }


/* ---------------------------------- tape ---------------------------------- */

/* The float views of a tape live in one block: tape_layout runs once without a block to count
 * (in size_t and, to catch overflow, in double) and once to set the pointers. */
typedef struct {
    float *base; /* NULL while counting */
    size_t n;    /* floats so far, each view rounded up to 64 bytes */
    double dn;
} layout;

static float *place(layout *ly, size_t rows, size_t cols) {
    float *p = ly->base ? ly->base + ly->n : NULL;
    ly->n += (rows * cols + 15) & ~(size_t)15;
    ly->dn += (double)rows * (double)cols + 15;
    return p;
}

static void tape_layout(tp_tape *t, layout *ly) {
    const tp_config *c = &t->cfg;
    int L = c->n_layers;
    size_t N = t->N, d = (size_t)c->d_model, ff = (size_t)c->d_ff, nh = (size_t)c->n_heads;
    size_t qd = nh * (size_t)c->head_dim, kvd = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    t->x_in = place(ly, N, ((size_t)L + 1) * d); /* factors that fit size_t alone */
    for (int l = 0; l < L; l++) {
        layer_tape *s = &t->lt[l];
        if (t->recompute && l > 0) { /* one slot, recomputed layer by layer */
            *s = t->lt[0];
            continue;
        }
        /* a layer's own widths, or the widest for the slot all layers share */
        size_t lnh = t->recompute ? nh : (size_t)tp_config_heads(c, l), lff = t->recompute ? ff : (size_t)tp_config_ff(c, l);
        size_t lqd = lnh * (size_t)c->head_dim;
        s->rstd1 = place(ly, N, 1);
        s->q = place(ly, N, lqd);
        s->k = place(ly, N, kvd);
        s->v = place(ly, N, kvd);
        s->att = place(ly, N, lqd);
        s->lse = place(ly, N, lnh);
        s->x_mid = place(ly, N, d);
        s->rstd2 = place(ly, N, 1);
        s->g = place(ly, N, lff);
        s->u = place(ly, N, lff);
        s->qr = c->qk_norm ? place(ly, N, lqd) : NULL;
        s->kr = c->qk_norm ? place(ly, N, kvd) : NULL;
        s->rstd_q = c->qk_norm ? place(ly, N, lnh) : NULL;
        s->rstd_k = c->qk_norm ? place(ly, N, (size_t)c->n_kv_heads) : NULL;
        s->ao = c->sandwich_norm ? place(ly, N, d) : NULL;
        s->mo = c->sandwich_norm ? place(ly, N, d) : NULL;
        s->rstd3 = c->sandwich_norm ? place(ly, N, 1) : NULL;
        s->rstd4 = c->sandwich_norm ? place(ly, N, 1) : NULL;
    }
    t->rstd_f = place(ly, N, 1);
    t->h = place(ly, N, d);
    t->proj = place(ly, N, d);
    t->dres = place(ly, N, d);
    t->dh = place(ly, N, d);
    t->act = place(ly, N, ff);
    t->dact = place(ly, N, ff);
    t->du = place(ly, N, ff);
    t->datt = place(ly, N, qd);
    t->dq = place(ly, N, qd);
    t->dk = place(ly, N, kvd);
    t->dv = place(ly, N, kvd);
    int gqa = c->n_heads != c->n_kv_heads;
    t->dkh = gqa ? place(ly, N, qd) : NULL;
    t->dvh = gqa ? place(ly, N, qd) : NULL;
    t->logits = place(ly, N < logit_chunk(c) ? N : logit_chunk(c), (size_t)c->vocab);
    t->att_scratch = place(ly, (size_t)t->n_thr * 2 * TP_ATT_BLOCK, (size_t)t->T);
    t->inv_freq = place(ly, (size_t)c->head_dim / 2, 1);
    t->inv_freq_local = place(ly, (size_t)c->head_dim / 2, 1);
    t->normw = place(ly, d > (size_t)c->head_dim ? d : (size_t)c->head_dim, 1);
    t->dqn = c->qk_norm ? place(ly, N, qd) : NULL;
    t->dkn = c->qk_norm ? place(ly, N, kvd) : NULL;
    t->dproj = c->sandwich_norm ? place(ly, N, d) : NULL;
}

/* Under bf16 precision, the bf16 forms of the layers' norm outputs, attention outputs and gated
 * activations, kept from the forward for the backward's weight-gradient products: the backward
 * then neither rebuilds them in fp32 (norm_apply, act_mul_to) nor converts them again. They are
 * the very values the forward's products read, so every result keeps its bits. With SwiGLU the
 * activation, and in the backward the gate and up gradients, are written in bf16 only (to actb,
 * dgb, dub). Not with recompute (which exists to save memory); a failed allocation leaves the
 * tape without them. */
static void tape_bf16_alloc(tp_tape *t) {
    if (t->bblock || t->recompute || !g_keep_bf16 || tp_gemm_precision() != TP_PREC_BF16) return;
    const tp_config *c = &t->cfg;
    size_t N = t->N, d = (size_t)c->d_model, n = 0, sz[4];
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
        for (int l = 0; l < c->n_layers; l++) {
            layer_tape *s = &t->lt[l];
            size_t qd = (size_t)tp_config_heads(c, l) * (size_t)c->head_dim, ff = (size_t)tp_config_ff(c, l);
            sz[0] = sz[1] = N * d;
            sz[2] = N * qd;
            sz[3] = N * ff;
            uint16_t **v[4] = {&s->h1b, &s->h2b, &s->attb, &s->actb};
            for (int i = 0; i < 4; i++) {
                if (pass) *v[i] = t->bblock + n;
                n += (sz[i] + 31) & ~(size_t)31; /* 64-byte aligned views */
            }
        }
        uint16_t **w[2] = {&t->dgb, &t->dub};
        for (int i = 0; i < 2; i++) {
            if (pass) *w[i] = t->bblock + n;
            n += (N * (size_t)c->d_ff + 31) & ~(size_t)31;
        }
        if (!pass && !(t->bblock = aligned_alloc(64, n * sizeof(uint16_t)))) return;
    }
    t->bytes += n * sizeof(uint16_t);
}

tp_status tp_tape_alloc(const tp_config *c, int B, int T, int recompute, tp_tape **out) {
    *out = NULL;
    tp_status s = tp_config_validate(c);
    if (s) return tp_fail_ctx(s, "tape: ");
    if (B <= 0 || T <= 0) return tp_fail(TP_ERR_ARG, "tape: batch %d x length %d must be > 0", B, T);
    tp_tape *t = calloc(1, sizeof *t);
    if (!t) return tp_fail(TP_ERR_NOMEM, "tape: out of memory");
    t->cfg = *c;
    t->B = B;
    t->T = T;
    t->recompute = recompute ? 1 : 0;
    t->n_thr = tp_max_threads();
    t->N = (size_t)B * (size_t)T;
    size_t chunk = t->N < logit_chunk(c) ? t->N : logit_chunk(c);
    t->lt = calloc((size_t)c->n_layers, sizeof *t->lt);
    t->row_loss = malloc(chunk * sizeof *t->row_loss);
    t->pos = malloc(t->N * sizeof *t->pos);
    if (!t->lt || !t->row_loss || !t->pos) {
        tp_tape_free(t);
        return tp_fail(TP_ERR_NOMEM, "tape: out of memory for %d x %d tokens", B, T);
    }
    layout ly = {0};
    tape_layout(t, &ly);
    if (ly.dn * sizeof(float) > (double)(SIZE_MAX / 2)) {
        tp_tape_free(t);
        return tp_fail(TP_ERR_NOMEM, "tape: size overflow for %d x %d tokens", B, T);
    }
    size_t nbytes = ly.n * sizeof(float); /* a multiple of 64 */
    t->block = aligned_alloc(64, nbytes);
    if (!t->block) {
        tp_tape_free(t);
        return tp_fail(TP_ERR_NOMEM, "tape: cannot allocate %.1f MiB for %d x %d tokens (recompute=%d)",
                       (double)nbytes / 1048576.0, B, T, recompute);
    }
    ly = (layout){t->block, 0, 0};
    tape_layout(t, &ly);
    t->bytes = nbytes + chunk * sizeof *t->row_loss + t->N * sizeof *t->pos + (size_t)c->n_layers * sizeof *t->lt;
    tp_rope_inv_freq(c, t->inv_freq);
    tp_rope_inv_freq_local(c, t->inv_freq_local);
    tape_bf16_alloc(t);
    *out = t;
    return TP_OK;
}

void tp_tape_free(tp_tape *t) {
    if (!t) return;
    free(t->block);
    free(t->bblock);
    free(t->lt);
    free(t->row_loss);
    free(t->pos);
    free(t);
}

size_t tp_tape_bytes(const tp_tape *t) { return t ? t->bytes : 0; }

/* ------------------------------ small helpers ------------------------------ */

/* out = w * (x * rstd) row by row: the norm output rebuilt bit for bit from the saved rstd. */
static void norm_apply(const float *x, const float *w, const float *rstd, float *out, size_t N, size_t d) {
#pragma omp parallel for schedule(static) if (N * d >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++)
        for (size_t i = 0; i < d; i++) out[n * d + i] = w[i] * (x[n * d + i] * rstd[n]);
}

static void add_to(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* act = f(g) * u with the family's gate activation, in one pass. */
static void act_mul_to(const tp_config *c, float *act, const float *g, const float *u, size_t n) {
    if (c->act == TP_ACT_GELU_TANH) tp_gelu_tanh_mul_to(act, g, u, n);
    else tp_silu_mul_to(act, g, u, n);
}

/* grad->tok_emb[tokens[n]] += alpha * dx[n]: column blocks in parallel, rows in order. */
static void embed_bwd(const int32_t *tokens, const float *dx, float *gemb, size_t N, size_t d, float alpha) {
    size_t nb = (d + 63) / 64;
#pragma omp parallel for schedule(static) if (N * d >= TP_PAR_MIN_WORK)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * 64, i1 = i0 + 64 < d ? i0 + 64 : d;
        for (size_t n = 0; n < N; n++) {
            float *row = gemb + (size_t)tokens[n] * d;
            for (size_t i = i0; i < i1; i++) row[i] += alpha * dx[n * d + i];
        }
    }
}

double tp_ce_rows(float *logits, const int32_t *tg, size_t nr, size_t V, double *rl, int grad, float inv_count) {
#pragma omp parallel for schedule(static) if (nr * V >= TP_PAR_MIN_WORK)
    for (size_t i = 0; i < nr; i++) {
        float *row = logits + i * V;
        int32_t t = tg[i];
        if (t == TP_IGNORE_INDEX) {
            rl[i] = 0;
            if (grad) memset(row, 0, V * sizeof *row);
            continue;
        }
        float mx = tp_vmax(row, V), xt = row[t];
        double sum = tp_exp_shift_sum(row, mx, grad ? row : NULL, V);
        if (grad) {
            float k = (float)(1.0 / sum) * inv_count;
            for (size_t j = 0; j < V; j++) row[j] *= k;
            row[t] -= inv_count;
        }
        rl[i] = (double)mx + log(sum) - (double)xt;
    }
    double s = 0;
    for (size_t i = 0; i < nr; i++) s += rl[i];
    return s;
}

static int same_shape(const tp_config *a, const tp_config *b) {
    return a->n_layers == b->n_layers && a->d_model == b->d_model && a->n_heads == b->n_heads &&
           a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim && a->d_ff == b->d_ff &&
           a->vocab == b->vocab && !a->tie_embeddings == !b->tie_embeddings && !a->attn_bias == !b->attn_bias &&
           !a->qk_norm == !b->qk_norm && !a->sandwich_norm == !b->sandwich_norm && a->hetero == b->hetero &&
           !memcmp(a->layer_ff, b->layer_ff, sizeof a->layer_ff) &&
           !memcmp(a->layer_heads, b->layer_heads, sizeof a->layer_heads);
}

/* ------------------------------- the step ------------------------------- */

typedef struct {
    const tp_model *m;
    tp_tape *tp;
    int B, T, nthr;
    size_t N;
    float alpha;
    const tp_step_opts *o;
    int bt; /* keep the products' bf16 inputs in the tape (tape_bf16_alloc) this step */
} step_ctx;

/* Whether the caller's hooks are called at point p (tp_step_opts.hook_points). */
static int at_point(const tp_step_opts *o, tp_hook_point p) {
    return !o->hook_points || (o->hook_points >> p & 1u);
}
/* The caller's forward hook and grad hook, when set and asked for at p. */
static void fhook(const step_ctx *cx, tp_hook_point p, int layer, const float *x, size_t width) {
    if (cx->o->hook && at_point(cx->o, p)) cx->o->hook(cx->o->hook_user, p, layer, x, cx->B, cx->T, (int)width);
}
static void ghook(const step_ctx *cx, tp_hook_point p, int layer, const float *x, float *dx, size_t width) {
    if (cx->o->grad_hook && at_point(cx->o, p))
        cx->o->grad_hook(cx->o->grad_hook_user, p, layer, x, dx, cx->B, cx->T, (int)width);
}
/* The bf16 tape leaves the norm outputs, the activation and the MLP's inner gradients unbuilt in
 * fp32 in the backward: only without grad hooks at those points. */
static int bf16_tape_allowed(const tp_step_opts *o) {
    unsigned inner = (1u << TP_HOOK_ATTN_NORM) | (1u << TP_HOOK_MLP_NORM) | (1u << TP_HOOK_MLP_GATE) |
                     (1u << TP_HOOK_MLP_UP) | (1u << TP_HOOK_MLP_ACT);
    return !o->grad_hook || (o->hook_points && !(o->hook_points & inner));
}

static float *layer_x(const step_ctx *cx, int l) {
    return cx->tp->x_in + (size_t)l * cx->tp->N * (size_t)cx->m->cfg.d_model;
}

/* Forward of layer l from x_in[l] into its tape slot; x_out (N,d) receives the layer output
 * (NULL: not needed, when recomputing). hooks: call the forward hooks. */
static void layer_forward(const step_ctx *cx, int l, float *x_out, int hooks) {
    const tp_config *c = &cx->m->cfg;
    const tp_layer *L = &cx->m->layers[l];
    tp_tape *tp = cx->tp;
    layer_tape *s = &tp->lt[l];
    int B = cx->B, T = cx->T, hd = c->head_dim, nh = tp_config_heads(c, l), nkv = c->n_kv_heads, rep = nh / nkv;
    size_t N = cx->N, d = (size_t)c->d_model, ff = (size_t)tp_config_ff(c, l);
    size_t qd = (size_t)nh * hd, kvd = (size_t)nkv * hd;
    const float *x = layer_x(cx, l);
    float eps = c->norm_eps;
    if (hooks) fhook(cx, TP_HOOK_LAYER_IN, l, x, d);
    tp_rmsnorm_fwd(x, tp_norm_weight(c, L->attn_norm, d, tp->normw), tp->h, s->rstd1, N, d, eps);
    if (hooks) fhook(cx, TP_HOOK_ATTN_NORM, l, tp->h, d);
    float *q = c->qk_norm ? s->qr : s->q, *k = c->qk_norm ? s->kr : s->k;
    s->h1_ok = s->h2_ok = s->att_ok = s->act_ok = 0;
    if (cx->bt) s->h1_ok = !tp_gemm_bf16_pin_to(tp->h, N * d, s->h1b); /* kept for the backward */
    else tp_gemm_bf16_pin(tp->h, N * d); /* bf16: converted once for the three products */
    tp_matmul_wt(tp->h, L->wq, L->bq, q, N, d, qd);
    tp_matmul_wt(tp->h, L->wk, L->bk, k, N, d, kvd);
    tp_matmul_wt(tp->h, L->wv, L->bv, s->v, N, d, kvd);
    tp_gemm_bf16_unpin(tp->h);
    if (c->qk_norm) {
        tp_rmsnorm_fwd(s->qr, tp_norm_weight(c, L->q_norm, (size_t)hd, tp->normw), s->q, s->rstd_q, N * nh, hd, eps);
        tp_rmsnorm_fwd(s->kr, tp_norm_weight(c, L->k_norm, (size_t)hd, tp->normw), s->k, s->rstd_k, N * nkv, hd, eps);
    }
    const float *inv_freq = tp_layer_rope_local(c, l) ? tp->inv_freq_local : tp->inv_freq;
    tp_rope_apply(s->q, N, nh, hd, tp->pos, inv_freq);
    tp_rope_apply(s->k, N, nkv, hd, tp->pos, inv_freq);
    float scale = tp_attn_scale(c);
    int window = tp_layer_window(c, l);
    size_t scr = 2 * (size_t)TP_ATT_BLOCK * (size_t)tp->T;
#pragma omp parallel for schedule(dynamic, 1) collapse(2) num_threads(cx->nthr) \
    if ((size_t)B * T * T * nh * hd >= TP_PAR_MIN_WORK)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            size_t r0 = (size_t)b * T;
            tp_attention_head_lse(s->q + r0 * qd + (size_t)h * hd, qd, s->k + r0 * kvd + (size_t)(h / rep) * hd,
                                  s->v + r0 * kvd + (size_t)(h / rep) * hd, kvd, s->att + r0 * qd + (size_t)h * hd,
                                  qd, s->lse + ((size_t)b * nh + h) * T, T, 0, window, hd, scale,
                                  tp->att_scratch + (size_t)tp_thread_id() * scr);
        }
    if (hooks) fhook(cx, TP_HOOK_ATTN_OUT, l, s->att, qd);
    if (cx->bt) s->att_ok = !tp_gemm_bf16_pin_to(s->att, N * qd, s->attb);
    if (c->sandwich_norm) {
        tp_matmul_wt(s->att, L->wo, NULL, s->ao, N, qd, d);
        tp_rmsnorm_fwd(s->ao, tp_norm_weight(c, L->attn_post_norm, d, tp->normw), tp->proj, s->rstd3, N, d, eps);
    } else
        tp_matmul_wt(s->att, L->wo, NULL, tp->proj, N, qd, d);
    tp_gemm_bf16_unpin(s->att);
    add_to(s->x_mid, x, tp->proj, N * d);
    tp_rmsnorm_fwd(s->x_mid, tp_norm_weight(c, L->mlp_norm, d, tp->normw), tp->h, s->rstd2, N, d, eps);
    if (hooks) fhook(cx, TP_HOOK_MLP_NORM, l, tp->h, d);
    if (cx->bt) s->h2_ok = !tp_gemm_bf16_pin_to(tp->h, N * d, s->h2b);
    else tp_gemm_bf16_pin(tp->h, N * d);
    tp_matmul_wt(tp->h, L->w_gate, NULL, s->g, N, d, ff);
    tp_matmul_wt(tp->h, L->w_up, NULL, s->u, N, d, ff);
    tp_gemm_bf16_unpin(tp->h);
    if (hooks) fhook(cx, TP_HOOK_MLP_GATE, l, s->g, ff);
    if (hooks) fhook(cx, TP_HOOK_MLP_UP, l, s->u, ff);
    /* recomputing: the rest is rebuilt by the backward itself, except the MLP output's norm */
    if (!x_out && !c->sandwich_norm) return;
    int act_fp32 = 1;
    if (cx->bt && !(cx->o->hook && at_point(cx->o, TP_HOOK_MLP_ACT)) && c->act == TP_ACT_SILU) {
        /* act straight to bf16: only products read it */
        tp_silu_mul_to_bf16(s->actb, s->g, s->u, N * ff);
        s->act_ok = 1;
        act_fp32 = tp_gemm_bf16_pin_given(tp->act, N * ff, s->actb) != 0;
    }
    if (act_fp32) {
        act_mul_to(c, tp->act, s->g, s->u, N * ff);
        if (hooks) fhook(cx, TP_HOOK_MLP_ACT, l, tp->act, ff);
        if (cx->bt && !s->act_ok) s->act_ok = !tp_gemm_bf16_pin_to(tp->act, N * ff, s->actb);
    }
    if (c->sandwich_norm) {
        tp_matmul_wt(tp->act, L->w_down, NULL, s->mo, N, ff, d);
        tp_rmsnorm_fwd(s->mo, tp_norm_weight(c, L->mlp_post_norm, d, tp->normw), tp->proj, s->rstd4, N, d, eps);
    } else
        tp_matmul_wt(tp->act, L->w_down, NULL, tp->proj, N, ff, d);
    tp_gemm_bf16_unpin(tp->act);
    if (!x_out) return;
    add_to(x_out, s->x_mid, tp->proj, N * d);
    if (hooks) fhook(cx, TP_HOOK_LAYER_OUT, l, x_out, d);
}

/* dq, dk, dv of all heads from datt. One task per (sequence, query head), so that a batch of
 * one still has n_heads tasks; with GQA each head's dK/dV goes to its own columns of dkh/dvh,
 * then each KV head sums its group's heads in head order (deterministic, independent of the
 * thread count). */
static void attention_backward(const step_ctx *cx, const layer_tape *s, int l) {
    const tp_config *c = &cx->m->cfg;
    tp_tape *tp = cx->tp;
    int B = cx->B, T = cx->T, hd = c->head_dim, nh = tp_config_heads(c, l), nkv = c->n_kv_heads, rep = nh / nkv;
    size_t N = cx->N, qd = (size_t)nh * hd, kvd = (size_t)nkv * hd;
    float *dK = rep > 1 ? tp->dkh : tp->dk, *dV = rep > 1 ? tp->dvh : tp->dv; /* (N, nh*hd) either way */
    float scale = tp_attn_scale(c);
    int window = tp_layer_window(c, l);
    size_t scr = 2 * (size_t)TP_ATT_BLOCK * (size_t)tp->T;
#pragma omp parallel for schedule(dynamic, 1) collapse(2) num_threads(cx->nthr) \
    if ((size_t)B * T * T * nh * hd >= TP_PAR_MIN_WORK)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            size_t r0 = (size_t)b * T, qo = r0 * qd + (size_t)h * hd, ko = r0 * kvd + (size_t)(h / rep) * hd;
            for (int t = 0; t < T; t++) {
                memset(dK + qo + (size_t)t * qd, 0, (size_t)hd * sizeof(float));
                memset(dV + qo + (size_t)t * qd, 0, (size_t)hd * sizeof(float));
            }
            tp_attention_head_bwd(s->q + qo, qd, s->k + ko, s->v + ko, kvd, s->att + qo, tp->datt + qo, qd,
                                  s->lse + ((size_t)b * nh + h) * T, tp->dq + qo, qd, dK + qo, dV + qo, qd, T, 0, window,
                                  hd, scale, tp->att_scratch + (size_t)tp_thread_id() * scr);
        }
    if (rep == 1) return;
#pragma omp parallel for schedule(static) if (N * qd >= TP_PAR_MIN_WORK)
    for (size_t n = 0; n < N; n++)
        for (int kh = 0; kh < nkv; kh++)
            for (int e = 0; e < hd; e++) {
                size_t o = n * qd + (size_t)kh * rep * hd + e;
                const float *a = tp->dkh + o, *b = tp->dvh + o;
                float sk = a[0], sv = b[0];
                for (int j = 1; j < rep; j++) sk += a[(size_t)j * hd], sv += b[(size_t)j * hd];
                tp->dk[n * kvd + (size_t)kh * hd + e] = sk;
                tp->dv[n * kvd + (size_t)kh * hd + e] = sv;
            }
}

/* Backward of layer l: on entry tp->dres holds d(loss)/d(layer output), on exit d(loss)/d(layer
 * input). Parameter gradients are added into G scaled by alpha. */
static void layer_backward(const step_ctx *cx, tp_layer *G, int l) {
    const tp_config *c = &cx->m->cfg;
    const tp_layer *L = &cx->m->layers[l];
    tp_tape *tp = cx->tp;
    const layer_tape *s = &tp->lt[l];
    int hd = c->head_dim, nh = tp_config_heads(c, l), nkv = c->n_kv_heads;
    size_t N = cx->N, d = (size_t)c->d_model, ff = (size_t)tp_config_ff(c, l);
    size_t qd = (size_t)nh * hd, kvd = (size_t)nkv * hd;
    float a = cx->alpha;
    const float *x = layer_x(cx, l);

    /* MLP: x_out = x_mid + [post_norm](down(act(gate(h2)) * up(h2))), h2 = norm(x_mid) */
    const float *dmlp = tp->dres; /* gradient of the down_proj output */
    if (c->sandwich_norm) {
        memset(tp->dproj, 0, N * d * sizeof(float));
        tp_rmsnorm_bwd(s->mo, tp_norm_weight(c, L->mlp_post_norm, d, tp->normw), s->rstd4, tp->dres, tp->dproj,
                       G->mlp_post_norm, a, N, d);
        dmlp = tp->dproj;
    }
    /* the norm output and act: from the tape's bf16 forms, else rebuilt in fp32 */
    int h2 = s->h2_ok && !tp_gemm_bf16_pin_given(tp->h, N * d, s->h2b);
    if (!h2) norm_apply(s->x_mid, tp_norm_weight(c, L->mlp_norm, d, tp->normw), s->rstd2, tp->h, N, d);
    int act = s->act_ok && !tp_gemm_bf16_pin_given(tp->act, N * ff, s->actb);
    if (!act) act_mul_to(c, tp->act, s->g, s->u, N * ff);
    tp_gemm_bf16_pin(dmlp, N * d); /* each gradient read by its dX and dW products */
    tp_matmul_dx(dmlp, L->w_down, tp->dact, N, ff, d, 0);
    tp_matmul_dw(dmlp, tp->act, G->w_down, NULL, N, ff, d, a);
    tp_gemm_bf16_unpin(dmlp);
    tp_gemm_bf16_unpin(tp->act);
    ghook(cx, TP_HOOK_MLP_ACT, l, tp->act, tp->dact, ff);
    /* dg and du: straight to bf16 where only products read them (no grad hooks there: act came
     * from the tape), else in fp32 into dact (which becomes dg) and du */
    int dgu = 0;
    if (act && c->act == TP_ACT_SILU && tp->dgb) {
        tp_silu_mul_bwd_bf16(s->g, s->u, tp->dact, tp->dgb, tp->dub, N * ff);
        dgu = !tp_gemm_bf16_pin_given(tp->dact, N * ff, tp->dgb) && !tp_gemm_bf16_pin_given(tp->du, N * ff, tp->dub);
        if (!dgu) {
            tp_gemm_bf16_unpin(tp->dact);
            tp_gemm_bf16_unpin(tp->du);
        }
    }
    if (!dgu) {
        if (c->act == TP_ACT_GELU_TANH) tp_gelu_tanh_mul_bwd(s->g, s->u, tp->dact, tp->dact, tp->du, N * ff);
        else tp_silu_mul_bwd(s->g, s->u, tp->dact, tp->dact, tp->du, N * ff); /* dact becomes dg */
        ghook(cx, TP_HOOK_MLP_UP, l, s->u, tp->du, ff);
        ghook(cx, TP_HOOK_MLP_GATE, l, s->g, tp->dact, ff);
        tp_gemm_bf16_pin(tp->dact, N * ff);
        tp_gemm_bf16_pin(tp->du, N * ff);
    }
    if (!h2) tp_gemm_bf16_pin(tp->h, N * d);
    tp_matmul_dx(tp->dact, L->w_gate, tp->dh, N, d, ff, 0);
    tp_matmul_dx(tp->du, L->w_up, tp->dh, N, d, ff, 1);
    tp_matmul_dw(tp->dact, tp->h, G->w_gate, NULL, N, d, ff, a);
    tp_matmul_dw(tp->du, tp->h, G->w_up, NULL, N, d, ff, a);
    tp_gemm_bf16_unpin(tp->dact);
    tp_gemm_bf16_unpin(tp->du);
    tp_gemm_bf16_unpin(tp->h);
    ghook(cx, TP_HOOK_MLP_NORM, l, tp->h, tp->dh, d);
    tp_rmsnorm_bwd(s->x_mid, tp_norm_weight(c, L->mlp_norm, d, tp->normw), s->rstd2, tp->dh, tp->dres, G->mlp_norm,
                   a, N, d);

    /* attention: x_mid = x + [post_norm](o_proj(attn(rope(q), rope(k), v))), q/k/v = proj(h1) (q and k
     * through their per-head norms under qk_norm), h1 = norm(x) */
    const float *datt_out = tp->dres;
    if (c->sandwich_norm) {
        memset(tp->dproj, 0, N * d * sizeof(float));
        tp_rmsnorm_bwd(s->ao, tp_norm_weight(c, L->attn_post_norm, d, tp->normw), s->rstd3, tp->dres, tp->dproj,
                       G->attn_post_norm, a, N, d);
        datt_out = tp->dproj;
    }
    tp_gemm_bf16_pin(datt_out, N * d);
    if (s->att_ok) (void)tp_gemm_bf16_pin_given(s->att, N * qd, s->attb); /* s->att holds the values anyway */
    tp_matmul_dx(datt_out, L->wo, tp->datt, N, qd, d, 0);
    tp_matmul_dw(datt_out, s->att, G->wo, NULL, N, qd, d, a);
    tp_gemm_bf16_unpin(datt_out);
    tp_gemm_bf16_unpin(s->att);
    ghook(cx, TP_HOOK_ATTN_OUT, l, s->att, tp->datt, qd);
    attention_backward(cx, s, l);
    const float *inv_freq = tp_layer_rope_local(c, l) ? tp->inv_freq_local : tp->inv_freq;
    tp_rope_bwd(tp->dq, N, nh, hd, tp->pos, inv_freq);
    tp_rope_bwd(tp->dk, N, nkv, hd, tp->pos, inv_freq);
    const float *dq = tp->dq, *dk = tp->dk;
    if (c->qk_norm) {
        memset(tp->dqn, 0, N * qd * sizeof(float));
        memset(tp->dkn, 0, N * kvd * sizeof(float));
        tp_rmsnorm_bwd(s->qr, tp_norm_weight(c, L->q_norm, (size_t)hd, tp->normw), s->rstd_q, tp->dq, tp->dqn,
                       G->q_norm, a, N * nh, hd);
        tp_rmsnorm_bwd(s->kr, tp_norm_weight(c, L->k_norm, (size_t)hd, tp->normw), s->rstd_k, tp->dk, tp->dkn,
                       G->k_norm, a, N * nkv, hd);
        dq = tp->dqn;
        dk = tp->dkn;
    }
    int h1 = s->h1_ok && !tp_gemm_bf16_pin_given(tp->h, N * d, s->h1b);
    if (!h1) norm_apply(x, tp_norm_weight(c, L->attn_norm, d, tp->normw), s->rstd1, tp->h, N, d);
    tp_gemm_bf16_pin(dq, N * qd);
    tp_gemm_bf16_pin(dk, N * kvd);
    tp_gemm_bf16_pin(tp->dv, N * kvd);
    if (!h1) tp_gemm_bf16_pin(tp->h, N * d);
    tp_matmul_dx(dq, L->wq, tp->dh, N, d, qd, 0);
    tp_matmul_dx(dk, L->wk, tp->dh, N, d, kvd, 1);
    tp_matmul_dx(tp->dv, L->wv, tp->dh, N, d, kvd, 1);
    tp_matmul_dw(dq, tp->h, G->wq, G->bq, N, d, qd, a);
    tp_matmul_dw(dk, tp->h, G->wk, G->bk, N, d, kvd, a);
    tp_matmul_dw(tp->dv, tp->h, G->wv, G->bv, N, d, kvd, a);
    tp_gemm_bf16_unpin(dq);
    tp_gemm_bf16_unpin(dk);
    tp_gemm_bf16_unpin(tp->dv);
    tp_gemm_bf16_unpin(tp->h);
    ghook(cx, TP_HOOK_ATTN_NORM, l, tp->h, tp->dh, d);
    tp_rmsnorm_bwd(x, tp_norm_weight(c, L->attn_norm, d, tp->normw), s->rstd1, tp->dh, tp->dres, G->attn_norm, a,
                   N, d);
}

/* Logits in row chunks: loss, d(loss)/d(final norm output) into tp->dh, lm_head gradient.
 * Returns the summed loss. */
static double loss_and_head(const step_ctx *cx, tp_model *grad, const int32_t *targets, float inv_count) {
    const tp_model *m = cx->m;
    tp_tape *tp = cx->tp;
    size_t N = cx->N, d = (size_t)m->cfg.d_model, V = (size_t)m->cfg.vocab;
    double total = 0;
    size_t chunk = logit_chunk(&m->cfg);
    for (size_t r0 = 0; r0 < N; r0 += chunk) {
        size_t r1 = r0 + chunk < N ? r0 + chunk : N, nr = r1 - r0;
        const float *h = tp->h + r0 * d;
        tp_gemm_bf16_pin(h, nr * d); /* read again by the dW product */
        tp_matmul_wt(h, m->lm_head, NULL, tp->logits, nr, d, V);
        if (cx->o->loss)
            total += cx->o->loss(cx->o->loss_user, r0, r1, tp->logits, V);
        else
            total += tp_ce_rows(tp->logits, targets + r0, nr, V, tp->row_loss, 1, inv_count);
        tp_gemm_bf16_pin(tp->logits, nr * V); /* the logits' gradient, for dX and dW */
        tp_matmul_dx(tp->logits, m->lm_head, tp->dh + r0 * d, nr, d, V, 0);
        tp_matmul_dw(tp->logits, h, grad->lm_head, NULL, nr, d, V, cx->alpha);
        tp_gemm_bf16_unpin(tp->logits);
        tp_gemm_bf16_unpin(h);
    }
    return total;
}

static tp_status check_tokens(const char *what, const int32_t *tokens, const int32_t *targets, size_t N,
                              int vocab) {
    for (size_t i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            return tp_fail(TP_ERR_ARG, "%s: token id %d at index %zu is outside the vocabulary (0..%d)", what,
                           tokens[i], i, vocab - 1);
    for (size_t i = 0; targets && i < N; i++)
        if (targets[i] != TP_IGNORE_INDEX && (targets[i] < 0 || targets[i] >= vocab))
            return tp_fail(TP_ERR_ARG, "%s: target %d at index %zu is outside the vocabulary (0..%d) and not %d",
                           what, targets[i], i, vocab - 1, TP_IGNORE_INDEX);
    return TP_OK;
}

tp_status tp_train_step(const tp_model *m, tp_model *grad, tp_tape *tape, const int32_t *tokens, int B, int T,
                        const tp_step_opts *opts, double *loss, size_t *n_counted) {
    if (loss) *loss = 0;
    if (n_counted) *n_counted = 0;
    if (!m || !grad || !tape || !tokens || !opts)
        return tp_fail(TP_ERR_ARG, "train step: model, gradient, tape, tokens and options are required");
    const tp_config *c = &m->cfg;
    if (B <= 0 || T <= 0) return tp_fail(TP_ERR_ARG, "train step: batch %d x length %d must be > 0", B, T);
    if (T > tape->T || (size_t)B * (size_t)T > tape->N)
        return tp_fail(TP_ERR_ARG, "train step: %d x %d tokens do not fit the tape (allocated for %d x %d)", B, T,
                       tape->B, tape->T);
    if (!same_shape(c, &grad->cfg) || !same_shape(c, &tape->cfg))
        return tp_fail(TP_ERR_ARG, "train step: the gradient model or the tape was made for another config");
    if (grad == m || grad->params == m->params)
        return tp_fail(TP_ERR_ARG, "train step: the gradient model must not be the model itself");
    if (!opts->loss && !opts->targets)
        return tp_fail(TP_ERR_ARG, "train step: the built-in cross-entropy needs targets (or set a loss)");
    size_t N = (size_t)B * T, d = (size_t)c->d_model;
    tp_status st = check_tokens("train step", tokens, opts->targets, N, c->vocab);
    if (st) return st;
    size_t counted = N;
    if (opts->targets) {
        counted = 0;
        for (size_t i = 0; i < N; i++) counted += opts->targets[i] != TP_IGNORE_INDEX;
    }
    int nthr = tp_max_threads();
    if (nthr > tape->n_thr) nthr = tape->n_thr;
    /* the bf16 inputs kept for the backward: not under grad hooks inside a layer, which read the
     * fp32 values */
    int bt_ok = bf16_tape_allowed(opts);
    if (bt_ok) tape_bf16_alloc(tape);
    int bt = tape->bblock && bt_ok && tp_gemm_precision() == TP_PREC_BF16;
    step_ctx cx = {m, tape, B, T, nthr, N, opts->grad_scale != 0.0f ? opts->grad_scale : 1.0f, opts, bt};
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tape->pos[(size_t)b * T + t] = t;

    /* forward */
    tp_model_embed(m, tokens, N, layer_x(&cx, 0));
    int L = c->n_layers;
    for (int l = 0; l < L; l++) layer_forward(&cx, l, layer_x(&cx, l + 1), 1);
    float *xL = layer_x(&cx, L);
    tp_rmsnorm_fwd(xL, tp_norm_weight(c, m->final_norm, d, tape->normw), tape->h, tape->rstd_f, N, d, c->norm_eps);
    fhook(&cx, TP_HOOK_FINAL_NORM, L, tape->h, d);

    /* loss and lm_head */
    float inv_count = counted ? 1.0f / (float)counted : 0.0f;
    double total = loss_and_head(&cx, grad, opts->targets, inv_count);
    ghook(&cx, TP_HOOK_FINAL_NORM, L, tape->h, tape->dh, d);

    /* backward */
    memset(tape->dres, 0, N * d * sizeof(float));
    tp_rmsnorm_bwd(xL, tp_norm_weight(c, m->final_norm, d, tape->normw), tape->rstd_f, tape->dh, tape->dres,
                   grad->final_norm, cx.alpha, N, d);
    for (int l = L - 1; l >= 0; l--) {
        ghook(&cx, TP_HOOK_LAYER_OUT, l, layer_x(&cx, l + 1), tape->dres, d);
        if (tape->recompute) layer_forward(&cx, l, NULL, 0);
        layer_backward(&cx, &grad->layers[l], l);
        ghook(&cx, TP_HOOK_LAYER_IN, l, layer_x(&cx, l), tape->dres, d);
    }
    /* Gemma scales the embeddings by sqrt(d_model) (a float32): so does their gradient */
    embed_bwd(tokens, tape->dres, grad->tok_emb, N, d, cx.alpha * tp_embed_scale(c));

    if (loss) *loss = opts->loss ? total : (counted ? total / (double)counted : 0.0);
    if (n_counted) *n_counted = counted;
    return TP_OK;
}

/* ------------------------------- validation ------------------------------- */

typedef struct {
    float *h;
    size_t n;
} final_capture;

static void capture_final(void *user, tp_hook_point p, int layer, const float *x, int B, int T, int width) {
    (void)layer; (void)B; (void)T; (void)width;
    final_capture *fc = user;
    if (p == TP_HOOK_FINAL_NORM) memcpy(fc->h, x, fc->n * sizeof(float));
}

tp_status tp_ce_eval(const tp_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                     double *sum_loss, size_t *n_counted) {
    if (sum_loss) *sum_loss = 0;
    if (n_counted) *n_counted = 0;
    if (!m || !tokens || !targets) return tp_fail(TP_ERR_ARG, "ce eval: model, tokens and targets are required");
    if (B <= 0 || T <= 0) return tp_fail(TP_ERR_ARG, "ce eval: batch %d x length %d must be > 0", B, T);
    const tp_config *c = &m->cfg;
    size_t N = (size_t)B * T, d = (size_t)c->d_model, V = (size_t)c->vocab;
    tp_status st = check_tokens("ce eval", tokens, targets, N, c->vocab);
    if (st) return st;
    size_t step = logit_chunk(c), chunk = N < step ? N : step;
    final_capture fc = {malloc(N * d * sizeof(float)), N * d};
    float *logits = malloc(chunk * V * sizeof(float));
    double *rl = malloc(chunk * sizeof *rl);
    if (!fc.h || !logits || !rl) {
        free(fc.h); free(logits); free(rl);
        return tp_fail(TP_ERR_NOMEM, "ce eval: out of memory for %d x %d tokens", B, T);
    }
    tp_forward_opts fo = {capture_final, &fc, NULL};
    st = tp_forward_ex(m, tokens, B, T, NULL, NULL, 0, &fo);
    double total = 0;
    for (size_t r0 = 0; !st && r0 < N; r0 += step) {
        size_t r1 = r0 + step < N ? r0 + step : N;
        tp_matmul_wt(fc.h + r0 * d, m->lm_head, NULL, logits, r1 - r0, d, V);
        total += tp_ce_rows(logits, targets + r0, r1 - r0, V, rl, 0, 0.0f);
    }
    size_t counted = 0;
    for (size_t i = 0; i < N; i++) counted += targets[i] != TP_IGNORE_INDEX;
    free(fc.h); free(logits); free(rl);
    if (st) return st;
    if (sum_loss) *sum_loss = total;
    if (n_counted) *n_counted = counted;
    return TP_OK;
}
