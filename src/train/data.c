/* Stub: replaced by the token shard and loader implementation. */
#include <string.h>
#include "taper/train.h"
tp_status tp_dataset_open(const char *path, tp_dataset **out) { (void)path; *out = NULL; return tp_fail(TP_ERR_UNSUPPORTED, "data is not built yet"); }
void tp_dataset_close(tp_dataset *d) { (void)d; }
size_t tp_dataset_tokens(const tp_dataset *d) { (void)d; return 0; }
size_t tp_dataset_docs(const tp_dataset *d) { (void)d; return 0; }
tp_status tp_loader_open(const tp_dataset *d, int T, double val_frac, uint64_t seed, tp_loader **out) {
    (void)d; (void)T; (void)val_frac; (void)seed; *out = NULL; return tp_fail(TP_ERR_UNSUPPORTED, "data is not built yet");
}
void tp_loader_free(tp_loader *L) { (void)L; }
size_t tp_loader_n_train(const tp_loader *L) { (void)L; return 0; }
size_t tp_loader_n_val(const tp_loader *L) { (void)L; return 0; }
tp_status tp_loader_next(tp_loader *L, int B, int32_t *tokens, int32_t *targets) { (void)L; (void)B; (void)tokens; (void)targets; return tp_fail(TP_ERR_UNSUPPORTED, "data is not built yet"); }
tp_status tp_loader_val(const tp_loader *L, size_t i, int B, int32_t *tokens, int32_t *targets, int *got) { (void)L; (void)i; (void)B; (void)tokens; (void)targets; *got = 0; return tp_fail(TP_ERR_UNSUPPORTED, "data is not built yet"); }
tp_data_cursor tp_loader_cursor(const tp_loader *L) { (void)L; tp_data_cursor c; memset(&c, 0, sizeof c); return c; }
tp_status tp_loader_seek(tp_loader *L, tp_data_cursor c) { (void)L; (void)c; return tp_fail(TP_ERR_UNSUPPORTED, "data is not built yet"); }
tp_status tp_shard_write(const char *path, const uint32_t *tokens, size_t n_tokens, const uint64_t *doc_start,
                         size_t n_docs, uint32_t vocab, int32_t bos, int32_t eos) {
    (void)path; (void)tokens; (void)n_tokens; (void)doc_start; (void)n_docs; (void)vocab; (void)bos; (void)eos;
    return tp_fail(TP_ERR_UNSUPPORTED, "data is not built yet");
}
