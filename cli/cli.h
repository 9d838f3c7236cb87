/* Shared pieces of the taper subcommands: error reporting, JSON output, option helpers. */
#ifndef TAPER_CLI_H
#define TAPER_CLI_H

#include <cjson/cJSON.h>
#include <signal.h>
#include "taper/distill.h"
#include "taper/model.h"
#include "taper/status.h"
#include "taper/trainer.h"

/* Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage error. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* After an HF folder was written: prints to stderr why it holds tokenizer.gguf, when it does. */
void cli_note_hf_tokenizer(const char *dir);
int cli_error(tp_status s);                        /* prints the library's message, returns CLI_FAIL */
/* Library messages name the settings by their struct fields (tp_prune_job's kv_heads); a command
 * maps them back to its flags. map: NULL-terminated pairs {"field", "--flag", ...} (NULL: none).
 * Each whole-word field (not continued by [A-Za-z0-9_-] on either side, nor by a '.' or '/' of a
 * file name) is replaced by its flag; the longest field wins. NULL when out of memory. */
char *cli_map_fields(const char *msg, const char *const *map);
/* cli_error with the message's fields mapped to flags. */
int cli_error_map(tp_status s, const char *const *map);
/* The library's notes (tp_log) to stderr with the fields mapped; NULL restores the default. map
 * must outlive the setting. */
void cli_log_map(const char *const *map);
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a whole decimal int / float in [lo, hi]; prints a usage error naming opt otherwise. */
int cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi, int *out);
int cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, float *out);
/* Writes obj (pretty) to stdout when dest is "-", else to the file dest. Frees obj. */
int cli_json_out(cJSON *obj, const char *dest);
void cli_set_threads(int n);
/* SIGINT / SIGTERM set the returned flag to the signal's number and print msg (once) on stderr;
 * a second signal ends the process at once. The flag is what the library's stop fields take.
 * cli_stop_signals_end puts the default handlers back. */
volatile sig_atomic_t *cli_stop_signals(const char *msg);
void cli_stop_signals_end(void);
/* Where benchmark files are: given (a --data-dir), else $TAPER_DATA, else ../shared/data. */
const char *cli_data_dir(const char *given);
/* --precision fp32|bf16 (tp_set_precision); CLI_OK or a usage error naming cmd. */
int cli_precision(const char *cmd, const char *arg);
/* --stream[=auto|on|off] -> 0, 1, -1 (the jobs' stream field). */
int cli_stream(const char *cmd, const char *arg, int *out);
/* --mem-limit SIZE (6G, 512M: powers of 1024) -> bytes. */
int cli_mem_limit(const char *cmd, const char *arg, double *out);
/* TAPER_MEM_LIMIT as bytes (0 when unset), the default of --mem-limit. */
double cli_mem_limit_env(void);

/* taper train's options, job, signals and summary (cli/cmd_train.c); with d, `taper distill`'s
 * job (cli/cmd_distill.c hands over what is left after removing its own options). */
int cli_train_main(int argc, char **argv, const tp_distill_job *d);

int cmd_info(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_importance(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_sparsify(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_generate_data(int argc, char **argv);
int cmd_compress(int argc, char **argv);
int cmd_distill(int argc, char **argv);
int cmd_teacher_cache(int argc, char **argv);

#endif
