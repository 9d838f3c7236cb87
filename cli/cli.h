/* Shared pieces of the taper subcommands: error reporting, JSON output, option helpers. */
#ifndef TAPER_CLI_H
#define TAPER_CLI_H

#include <cjson/cJSON.h>
#include "taper/status.h"

/* Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage error. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

int cli_error(tp_status s);                        /* prints the library's message, returns CLI_FAIL */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a whole decimal int / float in [lo, hi]; prints a usage error naming opt otherwise. */
int cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi, int *out);
int cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, float *out);
/* Writes obj (pretty) to stdout when dest is "-", else to the file dest. Frees obj. */
int cli_json_out(cJSON *obj, const char *dest);
void cli_set_threads(int n);

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

#endif
