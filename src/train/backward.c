/* Stub: replaced by the backward-pass implementation. */
#include "taper/train.h"
struct tp_tape { int unused; };
tp_status tp_tape_alloc(const tp_config *c, int B, int T, int recompute, tp_tape **out) {
    (void)c; (void)B; (void)T; (void)recompute; *out = NULL;
    return tp_fail(TP_ERR_UNSUPPORTED, "training is not built yet");
}
void tp_tape_free(tp_tape *t) { (void)t; }
size_t tp_tape_bytes(const tp_tape *t) { (void)t; return 0; }
tp_status tp_train_step(const tp_model *m, tp_model *grad, tp_tape *tape, const int32_t *tokens, int B, int T,
                        const tp_step_opts *opts, double *loss, size_t *n_counted) {
    (void)m; (void)grad; (void)tape; (void)tokens; (void)B; (void)T; (void)opts; (void)loss; (void)n_counted;
    return tp_fail(TP_ERR_UNSUPPORTED, "training is not built yet");
}
tp_status tp_ce_eval(const tp_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                     double *sum_loss, size_t *n_counted) {
    (void)m; (void)tokens; (void)targets; (void)B; (void)T; (void)sum_loss; (void)n_counted;
    return tp_fail(TP_ERR_UNSUPPORTED, "training is not built yet");
}
