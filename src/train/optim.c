/* Stub: replaced by the AdamW implementation. */
#include <string.h>
#include "taper/train.h"
void tp_adamw_defaults(tp_adamw_cfg *c) { memset(c, 0, sizeof *c); }
double tp_lr_at(const tp_adamw_cfg *c, long step) { (void)step; return c->lr; }
tp_status tp_adamw_init(tp_adamw *o, const tp_model *m, const tp_adamw_cfg *c) {
    (void)m; memset(o, 0, sizeof *o); o->cfg = *c;
    return tp_fail(TP_ERR_UNSUPPORTED, "optimizer is not built yet");
}
void tp_adamw_free(tp_adamw *o) { (void)o; }
double tp_grad_norm(const float *g, size_t n) { (void)g; (void)n; return 0; }
tp_status tp_adamw_step(tp_adamw *o, tp_model *m, const tp_model *grad, double *gnorm) {
    (void)o; (void)m; (void)grad; (void)gnorm;
    return tp_fail(TP_ERR_UNSUPPORTED, "optimizer is not built yet");
}
