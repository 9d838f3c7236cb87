/* Memory planning: the peak resident memory of the importance and prune jobs estimated from the
 * shapes alone, for the model loaded (every weight fp32 in memory) and streamed (one layer at a
 * time, tp_model_open_streamed), and the choice between them against the memory available. The
 * formulas are written out in docs/memory.md; bench/RESULTS.md compares them with measured peaks.
 * All sizes in bytes, as doubles (an 8B model's products overflow nothing there). */
#include <stdio.h>
#include <string.h>

#include "taper/compress.h"
#include "taper/model.h"
#include "taper/util.h"
#include "model/kernels.h"


#define MIB (1024.0 * 1024.0)
#define GIB (1024.0 * MIB)

/* Code, libraries, the tokenizer and small buffers. */
static double base_bytes(const tp_config *c) { return 96 * MIB + 512.0 * c->vocab; }

/* Parameters of one decoder layer. */
static double layer_params(const tp_config *c) {
    double d = c->d_model, q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double p = 2 * d + 2 * q * d + 2 * kv * d + 3.0 * c->d_ff * d;
    if (c->attn_bias) p += q + 2 * kv;
    if (c->qk_norm) p += 2.0 * c->head_dim;
    if (c->sandwich_norm) p += 2 * d;
    return p;
}

/* Work buffers of a forward over N tokens of sequences of T (forward.c's alloc_buf). */
static double fwd_bytes(const tp_config *c, double N, int T) {
    double d = c->d_model, q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    return 4 * (N * (3 * d + 2 * q + 2 * kv + 2.0 * c->d_ff) + (double)tp_max_threads() * T * T);
}

/* bf16 products convert both inputs per call (gemm.c's scratch): the largest weight and input. */
static double bf16_bytes(double weight_elems, double input_elems) {
    return strcmp(tp_precision_name(), "bf16") ? 0 : 2 * (weight_elems + input_elems);
}

/* Samples per LM-loss forward (tp_lm_loss_batch), at most the depth samples. */
static double loss_batch(int T, int V, double ds) {
    double b = (double)tp_lm_loss_batch(T, V);
    return b > ds ? ds : b;
}

/* The importance accumulators and the score arrays (importance.c). */
static double state_bytes(const tp_config *c, double B, int T) {
    double L = c->n_layers, d = c->d_model, nh = c->n_heads, ff = c->d_ff;
    double acc = 12 * (L * nh + L * ff + (2 * L + 1) * d);
    double scores = 9 * (L * nh + L * c->n_kv_heads + L * ff + d) + 9 * (2 * L + 1) * d;
    return 8 * (acc + scores) + 4 * B * T * d + 8 * B * T * nh + 8 * 3 * (d > ff ? d : ff);
}

/* The mapped file pages of the tensor being converted (dropped after it; at most 4 bytes an
 * element): the largest a loader reads whole. */
static double mapped_bytes(const tp_config *c, int streamed) {
    double ffd = (double)c->d_ff * c->d_model, vd = (double)c->vocab * c->d_model;
    return 4 * (streamed || ffd > vd ? ffd : vd);
}

double tp_importance_mem(const tp_config *c, size_t n, int T, int batch, int depth, int block, int streamed) {
    double d = c->d_model, V = c->vocab, L = c->n_layers, ds = depth, B = batch > 0 ? batch : 1;
    double nb = block > 0 ? L - block + 1 : 0, Bl = ds > 0 ? loss_batch(T, c->vocab, ds) : 0;
    double Bmax = B > Bl ? B : Bl, logits = 4 * Bl * T * V, big = V * d > d * c->d_ff ? V * d : d * c->d_ff;
    double common = base_bytes(c) + fwd_bytes(c, Bmax * T, T) + state_bytes(c, B, T);
    if (!streamed)
        return common + 4 * (double)tp_config_n_params(c) + mapped_bytes(c, 0) + logits +
               bf16_bytes(big, Bmax * T * (d > c->d_ff ? d : c->d_ff));
    /* layer phase: one layer, the stream of all samples, the layer-removal streams */
    double variants = ds > 0 ? 4 * (1 + L + nb) * ds * T * d : 0;
    double layers = 4 * (layer_params(c) + d) + mapped_bytes(c, 1) + 4 * (double)n * T * d + variants +
                    bf16_bytes(d * c->d_ff, B * T * c->d_ff);
    /* head phase (layer buffer dropped): the lm_head in fp32, the streams, one batch of logits */
    double head = ds > 0 ? 4 * d + variants + 4 * V * d + logits + 4 * Bl * T * d + bf16_bytes(V * d, Bl * T * d) : 0;
    return common + (layers > head ? layers : head);
}

double tp_prune_mem(const tp_config *src, const tp_config *dst, int streamed) {
    if (!streamed)
        return base_bytes(src) + 4 * ((double)tp_config_n_params(src) + (double)tp_config_n_params(dst)) +
               mapped_bytes(src, 0);
    /* one source layer, one pruned layer, slices of embedding rows, the writer's buffers */
    return base_bytes(src) + 4 * (layer_params(src) + layer_params(dst) + 2.0 * src->d_model) + mapped_bytes(src, 1) +
           8 * MIB;
}

static const char *gib(double b, char *buf) {
    snprintf(buf, 32, "%.2f GiB", b / GIB);
    return buf;
}

tp_status tp_mem_choose(const char *what, double loaded, double streamed, double limit, int want, const char *hint,
                        tp_mem_plan *out) {
    char a[32], b[32], c[32];
    memset(out, 0, sizeof *out);
    out->loaded = loaded;
    out->streamed = streamed;
    out->available = limit > 0 ? limit : tp_mem_available();
    double av = out->available;
    if (av <= 0) { /* unknown: trust the request, load by default */
        out->stream = want > 0;
        return TP_OK;
    }
    if (want < 0) {
        if (loaded <= av) return TP_OK;
        return tp_fail(TP_ERR_NOMEM, "%s: needs about %s with the model loaded, %s is available; streaming it (stream on) "
                       "needs %s%s%s", what, gib(loaded, a), gib(av, b), gib(streamed, c),
                       streamed > av && hint ? "; or " : "", streamed > av && hint ? hint : "");
    }
    if (want == 0 && loaded <= av) return TP_OK;
    out->stream = 1;
    if (streamed <= av) return TP_OK;
    return tp_fail(TP_ERR_NOMEM, "%s: needs about %s streamed (%s loaded), %s is available%s%s", what,
                   gib(streamed, a), gib(loaded, b), gib(av, c), hint ? "; " : "", hint ? hint : "");
}
