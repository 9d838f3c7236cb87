/* Stub: replaced by the checkpoint implementation. */
#include <stdlib.h>
#include "taper/train.h"
tp_status tp_ckpt_save(const char *dir, const tp_model *m, const tp_adamw *o, const tp_ckpt_state *st, int keep_last) {
    (void)dir; (void)m; (void)o; (void)st; (void)keep_last; return tp_fail(TP_ERR_UNSUPPORTED, "checkpoints are not built yet");
}
tp_status tp_ckpt_load_latest(const char *dir, tp_model *m, tp_adamw *o, tp_ckpt_state *st, char **path_out) {
    (void)dir; (void)m; (void)o; (void)st; if (path_out) *path_out = NULL; return tp_fail(TP_ERR_UNSUPPORTED, "checkpoints are not built yet");
}
void tp_ckpt_state_free(tp_ckpt_state *st) { if (st) { free(st->args_json); st->args_json = NULL; } }
