/* Helpers shared by the subcommands. */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "taper/util.h"

int cli_error(tp_status s) {
    fprintf(stderr, "taper: error (%s): %s\n", tp_status_name(s), tp_errmsg());
    return CLI_FAIL;
}

int cli_usage(const char *cmd, const char *fmt, ...) {
    fprintf(stderr, "taper %s: ", cmd);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nRun 'taper %s --help' for usage.\n", cmd);
    return CLI_USAGE;
}

int cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < lo || v > hi)
        return cli_usage(cmd, "%s expects an integer in [%ld, %ld], got '%s'", opt, lo, hi, val);
    *out = (int)v;
    return CLI_OK;
}

int cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !(v >= lo && v <= hi))
        return cli_usage(cmd, "%s expects a number in [%g, %g], got '%s'", opt, lo, hi, val);
    *out = (float)v;
    return CLI_OK;
}

int cli_json_out(cJSON *obj, const char *dest) {
    int rc = CLI_OK;
    if (strcmp(dest, "-") == 0) {
        char *text = cJSON_Print(obj);
        if (text) printf("%s\n", text);
        else rc = cli_error(tp_fail(TP_ERR_NOMEM, "out of memory printing JSON"));
        free(text);
    } else {
        tp_status s = tp_write_json_atomic(dest, obj);
        if (s) rc = cli_error(s);
    }
    cJSON_Delete(obj);
    return rc;
}

int cli_precision(const char *cmd, const char *arg) {
    if (tp_set_precision(arg)) return cli_usage(cmd, "--precision: %s", tp_errmsg());
    return CLI_OK;
}

void cli_set_threads(int n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}

void cli_note_hf_tokenizer(const char *dir) {
    char note[1024];
    if (tp_model_hf_tokenizer_note(dir, note, sizeof note)) fprintf(stderr, "note: %s\n", note);
}
