/* Perplexity of a token stream: the chunked protocol of the GPTQ/Wanda/SparseGPT papers and
 * llama.cpp's second-half scoring. One chunk per forward; NLL sums in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "taper/eval.h"
#include "model/kernels.h"

const char *tp_ppl_protocol_name(tp_ppl_protocol p) {
    return p == TP_PPL_LLAMACPP ? "llama.cpp" : "chunks";
}

const char *tp_ppl_protocol_desc(tp_ppl_protocol p) {
    return p == TP_PPL_LLAMACPP
               ? "llama.cpp perplexity: non-overlapping ctx-token chunks, BOS over the first token if the "
                 "tokenizer adds BOS, second half of each chunk scored"
               : "non-overlapping ctx-token chunks of the whole tokenized file (last partial chunk dropped), "
                 "every token after the first of each chunk scored, no BOS (GPTQ/Wanda/SparseGPT)";
}

void tp_nll_rows(const float *logits, const int32_t *targets, size_t n, size_t vocab, double *nll) {
#pragma omp parallel for schedule(static) if (n > 1)
    for (size_t i = 0; i < n; i++) {
        const float *r = logits + i * vocab;
        float mx = tp_vmax(r, vocab);
        double sum = tp_exp_shift_sum(r, mx, NULL, vocab);
        nll[i] = (double)mx + log(sum) - (double)r[targets[i]];
    }
}

/* Adds the NLL of positions first..ctx-2 (predicting tokens first+1..ctx-1) to r. */
static void score(const float *logits, const int32_t *chunk, int ctx, size_t first, size_t V, double *nll,
                  tp_ppl_result *r) {
    size_t k = (size_t)ctx - 1 - first;
    tp_nll_rows(logits + first * V, chunk + first + 1, k, V, nll);
    for (size_t i = 0; i < k; i++) r->nll_sum += nll[i];
    r->n_scored += k;
    r->n_chunks++;
}

/* One pass over the chunks of ids: forward each chunk (its first token replaced by bos when
 * bos >= 0) and add its scores to every non-NULL result. */
static tp_status run_pass(const tp_model *m, const int32_t *ids, size_t n_chunks, int ctx, int32_t bos,
                          tp_ppl_result *chunks, tp_ppl_result *llamacpp, tp_progress *progress,
                          double *progress_done) {
    size_t V = (size_t)m->cfg.vocab;
    float *logits = malloc((size_t)ctx * V * sizeof(float));
    int32_t *chunk = malloc((size_t)ctx * sizeof(int32_t));
    double *nll = malloc((size_t)ctx * sizeof(double));
    tp_status s = TP_OK;
    if (!logits || !chunk || !nll) {
        s = tp_fail(TP_ERR_NOMEM, "perplexity: out of memory for ctx %d", ctx);
        goto done;
    }
    double t0 = tp_time_s();
    for (size_t c = 0; c < n_chunks; c++) {
        memcpy(chunk, ids + c * (size_t)ctx, (size_t)ctx * sizeof(int32_t));
        if (bos >= 0) chunk[0] = bos;
        if ((s = tp_forward(m, chunk, 1, ctx, NULL, logits, 0))) goto done;
        if (chunks) score(logits, chunk, ctx, 0, V, nll, chunks);
        if (llamacpp) score(logits, chunk, ctx, (size_t)ctx / 2, V, nll, llamacpp);
        *progress_done += ctx;
        if (progress) tp_progress_update(progress, *progress_done);
    }
    double el = tp_time_s() - t0;
    tp_ppl_result *rs[2] = {chunks, llamacpp};
    for (int i = 0; i < 2; i++)
        if (rs[i]) {
            rs[i]->seconds += el;
            rs[i]->tokens_per_s = (double)(rs[i]->n_chunks * (size_t)ctx) / rs[i]->seconds;
        }
done:
    free(logits);
    free(chunk);
    free(nll);
    return s;
}

tp_status tp_perplexity(const tp_model *m, const int32_t *ids, size_t n, int ctx, int32_t bos,
                        size_t max_chunks, tp_progress *progress, tp_ppl_result out[2]) {
    memset(out, 0, 2 * sizeof *out);
    if (ctx < 4) return tp_fail(TP_ERR_ARG, "perplexity: context %d must be at least 4", ctx);
    size_t n_chunks = n / (size_t)ctx;
    if (max_chunks && n_chunks > max_chunks) n_chunks = max_chunks;
    if (n_chunks == 0)
        return tp_fail(TP_ERR_ARG, "perplexity: the text has %zu tokens, fewer than one chunk of %d", n, ctx);
    out[TP_PPL_CHUNKS].n_tokens = n;
    double done = 0;
    tp_status s;
    if (bos < 0) { /* no BOS: both protocols see the same chunks, one forward serves both */
        out[TP_PPL_LLAMACPP].n_tokens = n;
        s = run_pass(m, ids, n_chunks, ctx, -1, &out[TP_PPL_CHUNKS], &out[TP_PPL_LLAMACPP], progress, &done);
    } else { /* llama.cpp tokenizes with BOS first, then writes BOS over each chunk's first token */
        int32_t *with_bos = malloc((n + 1) * sizeof(int32_t));
        if (!with_bos) return tp_fail(TP_ERR_NOMEM, "out of memory");
        with_bos[0] = bos;
        memcpy(with_bos + 1, ids, n * sizeof(int32_t));
        size_t nc2 = (n + 1) / (size_t)ctx;
        if (max_chunks && nc2 > max_chunks) nc2 = max_chunks;
        out[TP_PPL_LLAMACPP].n_tokens = n + 1;
        s = run_pass(m, ids, n_chunks, ctx, -1, &out[TP_PPL_CHUNKS], NULL, progress, &done);
        if (!s) s = run_pass(m, with_bos, nc2, ctx, bos, NULL, &out[TP_PPL_LLAMACPP], progress, &done);
        free(with_bos);
    }
    if (s) return s;
    for (int p = 0; p < 2; p++) out[p].ppl = exp(out[p].nll_sum / (double)out[p].n_scored);
    return TP_OK;
}
