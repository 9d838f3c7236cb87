/* Private link between the training job (train_job.c) and variants riding on it (distill_job.c):
 * a variant names the command written into args.json, adds its settings there, and supplies the
 * loop's hooks once the model and the loop settings are final. */
#ifndef TAPER_TRAIN_JOB_INTERNAL_H
#define TAPER_TRAIN_JOB_INTERNAL_H

#include "taper/trainer.h"

struct cJSON;

typedef struct {
    const char *command; /* "command" of args.json */
    /* adds the variant's settings to args (the "distill" member is compared on resume) */
    tp_status (*add_args)(void *user, const tp_train_job *j, const tp_model *m, struct cJSON *args);
    /* once the loop settings are final: the hooks to run with */
    tp_status (*setup)(void *user, tp_model *m, const tp_train_cfg *cfg, const tp_train_hooks **hooks);
    void *user;
} tp_train_variant;

/* tp_train_job_run with a variant (NULL: plain training). */
tp_status tp_train_job_run_variant(const tp_train_job *j, const tp_train_variant *v, tp_train_job_result *res);

#endif
