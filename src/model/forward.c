/* Forward pass of the Llama family (Llama, Mistral, Qwen2, Qwen3) and Gemma 3 in fp32, batched,
 * with an optional KV cache for incremental decoding. Matches HF transformers' numerics up to
 * float summation order. Family features (per-head q/k norms, (1 + w) norms, sandwich norms,
 * GeGLU, scaled embeddings, sliding-window layers with their own RoPE base) are switched by the
 * config. Kernels are in kernels.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>


#include "kernels.h"
#include "model_internal.h"
#include "taper/model.h"

void tp_rope_inv_freq(const tp_config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int j = 0; j < half; j++) {
        /* HF: 1 / base ** (arange(0, dim, 2).float() / dim), in fp32 */
        float e = (float)(2 * j) / (float)c->head_dim;
        float f = 1.0f / powf(c->rope_theta, e);
        if (c->rope_scaling == TP_ROPE_LINEAR) {
            f = f / c->rope_factor;
        } else if (c->rope_scaling == TP_ROPE_LLAMA3) {
            float old = (float)c->rope_orig_max_pos;
            float low_wl = old / c->rope_low_freq, high_wl = old / c->rope_high_freq;
            float wl = 2.0f * (float)M_PI / f;
            float g = wl > low_wl ? f / c->rope_factor : f;
            if (!(wl < high_wl) && !(wl > low_wl)) {
                float sm = (old / wl - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
                g = (1.0f - sm) * g / c->rope_factor + sm * g;
            }
            f = g;
        }
        inv_freq[j] = f;
    }
}

void tp_rope_inv_freq_local(const tp_config *c, float *inv_freq) {
    if (c->rope_local_theta <= 0) {
        tp_rope_inv_freq(c, inv_freq);
        return;
    }
    tp_config lc = *c;
    lc.rope_theta = c->rope_local_theta;
    lc.rope_scaling = TP_ROPE_NONE;
    tp_rope_inv_freq(&lc, inv_freq);
}

int tp_layer_rope_local(const tp_config *c, int l) {
    return c->rope_local_theta > 0 && tp_config_layer_sliding(c, l);
}

int tp_layer_window(const tp_config *c, int l) {
    return tp_config_layer_sliding(c, l) ? c->sliding_window : 0;
}

float tp_attn_scale(const tp_config *c) {
    /* transformers: query_pre_attn_scalar ** -0.5 in double, applied as a float32 scalar */
    return c->attn_scale_base > 0 ? (float)pow((double)c->attn_scale_base, -0.5) : 1.0f / sqrtf((float)c->head_dim);
}

const float *tp_norm_weight(const tp_config *c, const float *w, size_t n, float *tmp) {
    if (!c->norm_plus_one) return w;
    for (size_t i = 0; i < n; i++) tmp[i] = 1.0f + w[i];
    return tmp;
}

float tp_embed_scale(const tp_config *c) { return c->embed_scale ? (float)sqrt((double)c->d_model) : 1.0f; }

void tp_model_embed(const tp_model *m, const int32_t *tokens, size_t N, float *x) {
    size_t d = (size_t)m->cfg.d_model;
    /* a frozen bf16 model whose embedding is exactly bf16 keeps only that copy (tp_model_freeze_bf16) */
    const unsigned short *h = m->bf16_emb_only ? tp_gemm_bf16_find(m->tok_emb, (size_t)m->cfg.vocab * d) : NULL;
    if (h)
        for (size_t i = 0; i < N; i++)
            for (size_t j = 0; j < d; j++) x[i * d + j] = tp_bf16_to_f32(h[(size_t)tokens[i] * d + j]);
    else
        for (size_t i = 0; i < N; i++) memcpy(x + i * d, m->tok_emb + (size_t)tokens[i] * d, d * sizeof(float));
    if (m->cfg.embed_scale) {
        float es = tp_embed_scale(&m->cfg);
        for (size_t i = 0; i < N * d; i++) x[i] *= es;
    }
}

tp_status tp_kvcache_alloc(const tp_config *c, int B, int cap, tp_kvcache **out) {
    *out = NULL;
    if (B <= 0 || cap <= 0) return tp_fail(TP_ERR_ARG, "KV cache: batch %d and capacity %d must be > 0", B, cap);
    tp_kvcache *kv = calloc(1, sizeof *kv);
    if (!kv) return tp_fail(TP_ERR_NOMEM, "out of memory");
    kv->B = B;
    kv->cap = cap;
    kv->n_layers = c->n_layers;
    kv->kv_dim = c->n_kv_heads * c->head_dim;
    kv->head_dim = c->head_dim;
    size_t n;
    if (tp_mul_overflow((size_t)c->n_layers * (size_t)B, (size_t)cap * (size_t)kv->kv_dim, &n)) n = SIZE_MAX / 8;
    kv->len = calloc((size_t)B, sizeof *kv->len);
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    if (!kv->len || !kv->k || !kv->v) {
        tp_kvcache_free(kv);
        return tp_fail(TP_ERR_NOMEM, "KV cache: cannot allocate %zu floats", 2 * n);
    }
    *out = kv;
    return TP_OK;
}

void tp_kvcache_free(tp_kvcache *kv) {
    if (!kv) return;
    free(kv->len);
    free(kv->k);
    free(kv->v);
    free(kv);
}

typedef struct {
    float *x;      /* (N, d) residual stream */
    float *h;      /* (N, d) normed input */
    float *q;      /* (N, nh*hd) */
    float *k, *v;  /* (N, nkv*hd) */
    float *att;    /* (N, nh*hd) attention output before o_proj */
    float *proj;   /* (N, d) o_proj / down_proj output */
    float *g, *u;  /* (N, ff) */
    float *scores;            /* (threads, scores_per_thread) */
    size_t scores_per_thread; /* T*Tk, or (heads per K/V head)*T*Tk when decoding */
    int *pos;      /* (N) */
    float *inv_freq, *inv_freq_local; /* (hd/2) each: global and sliding-layer RoPE */
    float *normw;  /* (max(d, hd)) (1 + w) norm weights under norm_plus_one */
} fwd_buf;

static void free_buf(fwd_buf *b) {
    free(b->x); free(b->h); free(b->q); free(b->k); free(b->v); free(b->att); free(b->proj);
    free(b->g); free(b->u); free(b->scores); free(b->pos); free(b->inv_freq); free(b->inv_freq_local);
    free(b->normw);
}

/* RMSNorm of N rows of width n with the family's weight convention. */
static void norm_rows(const tp_config *c, const float *x, const float *w, float *out, size_t N, size_t n,
                      float *tmp) {
    tp_rmsnorm(x, tp_norm_weight(c, w, n, tmp), out, N, n, c->norm_eps);
}


/* One attention block for all B sequences: q/k/v projections, RoPE, cache append, per-head
 * causal attention, o_proj into b->proj. */
static void attention(const tp_model *m, const tp_layer *L, int layer, fwd_buf *b, int B, int T,
                      tp_kvcache *cache, int Tk_max) {
    const tp_config *c = &m->cfg;
    size_t N = (size_t)B * T, d = (size_t)c->d_model;
    int hd = c->head_dim, nh = tp_config_heads(c, layer), nkv = c->n_kv_heads;
    size_t qd = (size_t)nh * hd, kvd = (size_t)nkv * hd;
    const float *W3[3] = {L->wq, L->wk, L->wv}, *b3[3] = {L->bq, L->bk, L->bv};
    float *Y3[3] = {b->q, b->k, b->v};
    size_t o3[3] = {qd, kvd, kvd};
    tp_matmul_wt_shared(b->h, N, d, 3, W3, b3, Y3, o3);
    if (c->qk_norm) { /* every head's row normalised over head_dim, before RoPE */
        norm_rows(c, b->q, L->q_norm, b->q, N * (size_t)nh, (size_t)hd, b->normw);
        norm_rows(c, b->k, L->k_norm, b->k, N * (size_t)nkv, (size_t)hd, b->normw);
    }
    const float *inv_freq = tp_layer_rope_local(c, layer) ? b->inv_freq_local : b->inv_freq;
    tp_rope_apply(b->q, N, nh, hd, b->pos, inv_freq);
    tp_rope_apply(b->k, N, nkv, hd, b->pos, inv_freq);
    if (cache) {
        for (int s = 0; s < B; s++)
            for (int g = 0; g < nkv; g++) {
                size_t at = tp_kvcache_at(cache, layer, s, g, cache->len[s]);
                for (int t = 0; t < T; t++) {
                    size_t from = ((size_t)s * T + t) * kvd + (size_t)g * hd;
                    memcpy(cache->k + at + (size_t)t * hd, b->k + from, (size_t)hd * sizeof(float));
                    memcpy(cache->v + at + (size_t)t * hd, b->v + from, (size_t)hd * sizeof(float));
                }
            }
    }
    float scale = tp_attn_scale(c);
    int rep = nh / nkv, window = tp_layer_window(c, layer);
    if (cache && T <= TP_ATT_DIRECT) { /* decoding: the heads of a K/V group together, K and V read once */
#pragma omp parallel for schedule(dynamic, 1) collapse(2) if ((size_t)B * T * Tk_max * nh * hd >= TP_PAR_MIN_WORK)
        for (int s = 0; s < B; s++)
            for (int g = 0; g < nkv; g++) {
                size_t at = tp_kvcache_at(cache, layer, s, g, 0);
                size_t qo = (size_t)s * T * qd + (size_t)g * rep * hd;
                float *S = b->scores + (size_t)tp_thread_id() * b->scores_per_thread;
                tp_attention_group(b->q + qo, qd, rep, cache->k + at, cache->v + at, (size_t)hd, b->att + qo, qd, T,
                                   cache->len[s], window, hd, scale, S);
            }
        tp_matmul_wt(b->att, L->wo, NULL, b->proj, N, qd, d);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1) collapse(2) if ((size_t)B * T * Tk_max * nh * hd >= TP_PAR_MIN_WORK)
    for (int s = 0; s < B; s++)
        for (int h = 0; h < nh; h++) {
            int p0 = cache ? cache->len[s] : 0;
            const float *K, *V;
            size_t ldk = kvd;
            if (cache) {
                size_t at = tp_kvcache_at(cache, layer, s, h / rep, 0);
                K = cache->k + at;
                V = cache->v + at;
                ldk = (size_t)hd;
            } else {
                K = b->k + (size_t)s * T * kvd + (size_t)(h / rep) * hd;
                V = b->v + (size_t)s * T * kvd + (size_t)(h / rep) * hd;
            }
            float *S = b->scores + (size_t)tp_thread_id() * b->scores_per_thread;
            tp_attention_head(b->q + (size_t)s * T * qd + (size_t)h * hd, qd, K, V, ldk,
                              b->att + (size_t)s * T * qd + (size_t)h * hd, qd, T, p0, window, hd, scale, S);
        }
    tp_matmul_wt(b->att, L->wo, NULL, b->proj, N, qd, d);
}

static void add_inplace(float *x, const float *y, size_t n) {
#pragma omp parallel for schedule(static) if (n >= TP_PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* The final norm of N rows of x into h, then (logits != NULL) the lm_head product. */
static void final_rows(const tp_model *m, const float *x, size_t N, float *h, float *normw, float *logits) {
    const tp_config *c = &m->cfg;
    size_t d = (size_t)c->d_model;
    norm_rows(c, x, m->final_norm, h, N, d, normw);
    const float *W = m->lm_head ? m->lm_head : m->stream ? m->stream->head : NULL;
    if (logits) tp_matmul_wt(h, W, NULL, logits, N, d, (size_t)c->vocab);
}

tp_status tp_forward_final(const tp_model *m, const float *x, size_t N, float *h, float *logits) {
    if (logits && !m->lm_head && !(m->stream && m->stream->head))
        return tp_fail(TP_ERR_ARG, "forward: the streamed model's lm_head is not read (tp_model_stream_head)");
    size_t d = (size_t)m->cfg.d_model, hd = (size_t)m->cfg.head_dim;
    float *normw = malloc((d > hd ? d : hd) * sizeof(float));
    if (!normw) return tp_fail(TP_ERR_NOMEM, "out of memory");
    final_rows(m, x, N, h, normw, logits);
    free(normw);
    return TP_OK;
}

tp_status tp_forward(const tp_model *m, const int32_t *tokens, int B, int T, tp_kvcache *cache,
                     float *logits, int last_only) {
    return tp_forward_ex(m, tokens, B, T, cache, logits, last_only, NULL);
}

/* Allocates the work buffers of a forward over B sequences of T tokens (attention over at most
 * Tk_max keys); x too unless the caller provides the residual stream (own_x = 0). */
static tp_status alloc_buf(const tp_config *c, int B, int T, int Tk_max, int own_x, fwd_buf *b) {
    size_t N = (size_t)B * T, d = (size_t)c->d_model;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim, ff = (size_t)c->d_ff;
    memset(b, 0, sizeof *b);
    if (own_x) b->x = malloc(N * d * sizeof(float));
    b->h = malloc(N * d * sizeof(float));
    b->q = malloc(N * qd * sizeof(float));
    b->k = malloc(N * kvd * sizeof(float));
    b->v = malloc(N * kvd * sizeof(float));
    b->att = malloc(N * qd * sizeof(float));
    b->proj = malloc(N * d * sizeof(float));
    b->g = malloc(N * ff * sizeof(float));
    b->u = malloc(N * ff * sizeof(float));
    int rep = T <= TP_ATT_DIRECT ? (c->n_heads + c->n_kv_heads - 1) / c->n_kv_heads : 1;
    b->scores_per_thread = (size_t)rep * T * (size_t)Tk_max;
    b->scores = malloc((size_t)tp_max_threads() * b->scores_per_thread * sizeof(float));
    b->pos = malloc(N * sizeof(int));
    b->inv_freq = malloc((size_t)c->head_dim / 2 * sizeof(float));
    b->inv_freq_local = malloc((size_t)c->head_dim / 2 * sizeof(float));
    b->normw = malloc((d > (size_t)c->head_dim ? d : (size_t)c->head_dim) * sizeof(float));
    if ((own_x && !b->x) || !b->h || !b->q || !b->k || !b->v || !b->att || !b->proj || !b->g || !b->u ||
        !b->scores || !b->pos || !b->inv_freq || !b->inv_freq_local || !b->normw) {
        free_buf(b);
        return tp_fail(TP_ERR_NOMEM, "forward: out of memory for %d x %d tokens", B, T);
    }
    tp_rope_inv_freq(c, b->inv_freq);
    tp_rope_inv_freq_local(c, b->inv_freq_local);
    return TP_OK;
}

/* Decoder layer l on the residual stream b->x (B*T rows), in place, with its hooks. */
static void layer_forward(const tp_model *m, int l, fwd_buf *b, int B, int T, tp_kvcache *cache, int Tk_max,
                          tp_hook_fn hook, void *user) {
#define HOOK(point, x, width)                                               \
    do {                                                                    \
        if (hook) hook(user, point, l, x, B, T, (int)(width));              \
    } while (0)
    const tp_config *c = &m->cfg;
    const tp_layer *L = &m->layers[l];
    size_t N = (size_t)B * T, d = (size_t)c->d_model, qd = (size_t)tp_config_heads(c, l) * c->head_dim,
           ff = (size_t)tp_config_ff(c, l);
    HOOK(TP_HOOK_LAYER_IN, b->x, d);
    norm_rows(c, b->x, L->attn_norm, b->h, N, d, b->normw);
    HOOK(TP_HOOK_ATTN_NORM, b->h, d);
    attention(m, L, l, b, B, T, cache, Tk_max);
    HOOK(TP_HOOK_ATTN_OUT, b->att, qd);
    if (c->sandwich_norm) norm_rows(c, b->proj, L->attn_post_norm, b->proj, N, d, b->normw);
    add_inplace(b->x, b->proj, N * d);
    norm_rows(c, b->x, L->mlp_norm, b->h, N, d, b->normw);
    HOOK(TP_HOOK_MLP_NORM, b->h, d);
    const float *W2[2] = {L->w_gate, L->w_up};
    float *Y2[2] = {b->g, b->u};
    size_t o2[2] = {ff, ff};
    tp_matmul_wt_shared(b->h, N, d, 2, W2, NULL, Y2, o2);
    HOOK(TP_HOOK_MLP_GATE, b->g, ff);
    HOOK(TP_HOOK_MLP_UP, b->u, ff);
    if (c->act == TP_ACT_GELU_TANH) tp_gelu_tanh_mul(b->g, b->u, N * ff);
    else tp_silu_mul(b->g, b->u, N * ff);
    HOOK(TP_HOOK_MLP_ACT, b->g, ff);
    tp_matmul_wt(b->g, L->w_down, NULL, b->proj, N, ff, d);
    if (c->sandwich_norm) norm_rows(c, b->proj, L->mlp_post_norm, b->proj, N, d, b->normw);
    add_inplace(b->x, b->proj, N * d);
    HOOK(TP_HOOK_LAYER_OUT, b->x, d);
#undef HOOK
}

tp_status tp_forward_layer(const tp_model *m, int l, float *x, int B, int T, const tp_forward_opts *opts) {
    if (B <= 0 || T <= 0) return tp_fail(TP_ERR_ARG, "forward: batch %d x length %d must be > 0", B, T);
    if (l < 0 || l >= m->cfg.n_layers)
        return tp_fail(TP_ERR_ARG, "forward: layer %d is outside the model's %d layers", l, m->cfg.n_layers);
    if (m->bf16_only && tp_gemm_precision() != TP_PREC_BF16)
        return tp_fail(TP_ERR_ARG, "forward: the model's weights are held in bf16 only; it runs under bf16 precision");
    if (m->stream && m->stream->loaded != l)
        return tp_fail(TP_ERR_ARG, "forward: layer %d of the streamed model is not the one read (tp_model_layer_ready)", l);
    fwd_buf b;
    tp_status s = alloc_buf(&m->cfg, B, T, T, 0, &b);
    if (s) return s;
    b.x = x;
    for (int sq = 0; sq < B; sq++)
        for (int t = 0; t < T; t++) b.pos[(size_t)sq * T + t] = t;
    layer_forward(m, l, &b, B, T, NULL, T, opts ? opts->hook : NULL, opts ? opts->user : NULL);
    b.x = NULL;
    free_buf(&b);
    return TP_OK;
}

tp_status tp_forward_ex(const tp_model *m, const int32_t *tokens, int B, int T, tp_kvcache *cache,
                        float *logits, int last_only, const tp_forward_opts *opts) {
    tp_hook_fn hook = opts ? opts->hook : NULL;
    void *user = opts ? opts->user : NULL;
    const unsigned char *skip = opts ? opts->skip_layer : NULL;
    const tp_config *c = &m->cfg;
    if (B <= 0 || T <= 0) return tp_fail(TP_ERR_ARG, "forward: batch %d x length %d must be > 0", B, T);
    if (!m->stream && !m->tok_emb) return tp_fail(TP_ERR_ARG, "forward: the model has no weights");
    if (m->bf16_only && tp_gemm_precision() != TP_PREC_BF16)
        return tp_fail(TP_ERR_ARG, "forward: the model's weights are held in bf16 only (tp_model_freeze_bf16); it "
                       "runs under bf16 precision");
    if (m->stream && cache)
        return tp_fail(TP_ERR_UNSUPPORTED, "forward: %s is streamed (weights read a layer at a time); decoding with "
                       "a KV cache needs it loaded", m->source ? m->source : "the model");
    if (cache && cache->B != B)
        return tp_fail(TP_ERR_ARG, "forward: KV cache holds %d sequences, batch is %d", cache->B, B);
    int Tk_max = T;
    for (int s = 0; cache && s < B; s++) {
        if (cache->len[s] + T > cache->cap)
            return tp_fail(TP_ERR_ARG, "forward: sequence %d would reach %d positions, KV cache holds %d", s,
                           cache->len[s] + T, cache->cap);
        if (cache->len[s] + T > Tk_max) Tk_max = cache->len[s] + T;
    }
    size_t N = (size_t)B * T, d = (size_t)c->d_model, V = (size_t)c->vocab;
    for (size_t i = 0; i < N; i++)
        if (tokens[i] < 0 || (size_t)tokens[i] >= V)
            return tp_fail(TP_ERR_ARG, "forward: token id %d at index %zu is outside the vocabulary (0..%zu)",
                           tokens[i], i, V - 1);
    fwd_buf b;
    tp_status st = alloc_buf(c, B, T, Tk_max, 1, &b);
    if (st) return st;
    for (int s = 0; s < B; s++)
        for (int t = 0; t < T; t++) b.pos[(size_t)s * T + t] = (cache ? cache->len[s] : 0) + t;
    /* a streamed model reads every layer on the way (the same code on the same bits) */
    if (m->stream) st = tp_model_embed_any(m, tokens, N, b.x);
    else tp_model_embed(m, tokens, N, b.x);
    /* a decoding step (a few new tokens per sequence after a cache): products of up to
     * TP_SKINNY_MAX_M rows take the tiled skinny kernel; elsewhere a row's result must not depend on
     * how many rows share the product (importance and scores are the same whatever the batch) */
    int was = tp_set_decode_step(cache && T <= TP_ATT_DIRECT);
    for (int l = 0; l < c->n_layers && !st; l++) {
        if (skip && skip[l]) continue;
        if (m->stream && (st = tp_model_layer_ready(m, l))) break;
        layer_forward(m, l, &b, B, T, cache, Tk_max, hook, user);
    }
    if (!st && m->stream && logits) st = tp_model_stream_head(m);
    if (st) {
        tp_set_decode_step(was);
        free_buf(&b);
        return st;
    }
    if (cache)
        for (int s = 0; s < B; s++) cache->len[s] += T;
    if (hook) {
        final_rows(m, b.x, N, b.h, b.normw, NULL);
        hook(user, TP_HOOK_FINAL_NORM, c->n_layers, b.h, B, T, (int)d);
    }
    if (logits) {
        if (last_only) {
            for (int s = 0; s < B; s++)
                memcpy(b.proj + (size_t)s * d, b.x + ((size_t)s * T + (size_t)(T - 1)) * d, d * sizeof(float));
            final_rows(m, b.proj, (size_t)B, b.h, b.normw, logits);
        } else
            final_rows(m, b.x, N, b.h, b.normw, logits);
    }
    tp_set_decode_step(was);
    free_buf(&b);
    return TP_OK;
}
