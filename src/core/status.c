/* Thread-local error message behind tp_fail / tp_errmsg, and overflow-checked sizes. */
#include "taper/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define TP_ERRMSG_CAP 1024
static _Thread_local char tp_errbuf[TP_ERRMSG_CAP];

tp_status tp_fail(tp_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tp_errbuf, sizeof tp_errbuf, fmt, ap);
    va_end(ap);
    return code;
}

tp_status tp_fail_ctx(tp_status code, const char *fmt, ...) {
    char old[TP_ERRMSG_CAP];
    memcpy(old, tp_errbuf, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tp_errbuf, sizeof tp_errbuf, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof tp_errbuf)
        snprintf(tp_errbuf + n, sizeof tp_errbuf - (size_t)n, "%s", old);
    return code;
}

const char *tp_errmsg(void) { return tp_errbuf[0] ? tp_errbuf : "no error recorded"; }
void tp_clear_error(void) { tp_errbuf[0] = 0; }

const char *tp_status_name(tp_status s) {
    switch (s) {
    case TP_OK: return "ok";
    case TP_ERR_IO: return "I/O error";
    case TP_ERR_FORMAT: return "malformed input";
    case TP_ERR_NOMEM: return "out of memory";
    case TP_ERR_ARG: return "bad argument";
    case TP_ERR_UNSUPPORTED: return "unsupported";
    case TP_ERR_NUMERIC: return "numerical failure";
    }
    return "unknown error";
}

int tp_mul_overflow(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
int tp_add_overflow(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }

/* ---- log ---- */

static void log_stderr(void *user, tp_log_level level, const char *msg) {
    (void)user;
    (void)level;
    fprintf(stderr, "%s\n", msg);
}

static tp_log_fn log_fn = log_stderr;
static void *log_user;
static int log_set = 1;

void tp_set_log(tp_log_fn fn, void *user) {
    log_fn = fn;
    log_user = user;
    log_set = 1;
}

void tp_log_default(void) { tp_set_log(log_stderr, NULL); }

void tp_log(tp_log_level level, const char *fmt, ...) {
    if (!log_set || !log_fn) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(log_user, level, buf);
}
