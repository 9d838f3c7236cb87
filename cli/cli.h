/* Shared pieces of the taper subcommands: error reporting, JSON output, option helpers. */
#ifndef TAPER_CLI_H
#define TAPER_CLI_H

#include <cjson/cJSON.h>
#include "taper/model.h"
#include "taper/status.h"
#include "taper/trainer.h"

/* Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage error. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* After an HF folder was written: prints to stderr why it holds tokenizer.gguf, when it does. */
void cli_note_hf_tokenizer(const char *dir);
int cli_error(tp_status s);                        /* prints the library's message, returns CLI_FAIL */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a whole decimal int / float in [lo, hi]; prints a usage error naming opt otherwise. */
int cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi, int *out);
int cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, float *out);
/* Writes obj (pretty) to stdout when dest is "-", else to the file dest. Frees obj. */
int cli_json_out(cJSON *obj, const char *dest);
void cli_set_threads(int n);
/* --precision fp32|bf16 (tp_set_precision); CLI_OK or a usage error naming cmd. */
int cli_precision(const char *cmd, const char *arg);

/* A training variant (distillation) riding on `taper train`'s plumbing; see cli/cmd_distill.c. */
typedef struct {
    const char *name; /* command name written into args.json */
    /* adds the variant's settings to args (the "distill" member is compared on resume) */
    tp_status (*add_args)(void *user, const tp_model *m, cJSON *args);
    /* called once the loop settings are final: returns the hooks to run with */
    tp_status (*setup)(void *user, tp_model *m, const tp_train_cfg *cfg, const tp_train_hooks **hooks);
    void *user;
} cli_train_ext;
extern const cli_train_ext *cli_train_extension;

int cmd_info(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_importance(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_sparsify(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_generate_data(int argc, char **argv);
int cmd_compress(int argc, char **argv);
int cmd_distill(int argc, char **argv);
int cmd_teacher_cache(int argc, char **argv);

#endif
