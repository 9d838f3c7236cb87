/* Helpers shared by the subcommands. */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <signal.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "taper/comm.h"
#include "taper/util.h"

/* "rank R: " when several ranks run the job, so that each error says where it happened. */
static const char *rank_tag(void) {
    static char tag[32];
    tp_comm *w = tp_comm_world();
    if (tp_comm_size(w) < 2) return "";
    snprintf(tag, sizeof tag, "rank %d: ", tp_comm_rank(w));
    return tag;
}

int cli_error(tp_status s) {
    fprintf(stderr, "taper: %serror (%s): %s\n", rank_tag(), tp_status_name(s), tp_errmsg());
    return CLI_FAIL;
}

/* A field name is a whole word when neither side continues it: a character of [A-Za-z0-9_-] on
 * either side, a '.' or '/' before (tp_importance_job.block, run/recipe.json), or a '/' or a '.'
 * plus a letter or digit after (recipe.json) make it part of something else. */
static int word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* Writes msg with the fields of map replaced to out (when not NULL); returns the length. */
static size_t map_fields(const char *msg, const char *const *map, char *out) {
    size_t n = 0;
    for (const char *p = msg; *p;) {
        const char *to = NULL;
        size_t len = 0;
        int starts = p == msg || (!word_char(p[-1]) && p[-1] != '.' && p[-1] != '/');
        for (size_t i = 0; starts && map && map[i] && map[i + 1]; i += 2) {
            size_t l = strlen(map[i]);
            const char *e = p + l;
            if (l > len && !strncmp(p, map[i], l) && !word_char(*e) && *e != '/' &&
                !(*e == '.' && word_char(e[1]) && e[1] != '-' && e[1] != '_')) {
                to = map[i + 1];
                len = l;
            }
        }
        if (to) {
            size_t tl = strlen(to);
            if (out) memcpy(out + n, to, tl);
            n += tl;
            p += len;
        } else {
            if (out) out[n] = *p;
            n++;
            p++;
        }
    }
    if (out) out[n] = 0;
    return n;
}

char *cli_map_fields(const char *msg, const char *const *map) {
    char *out = malloc(map_fields(msg, map, NULL) + 1);
    if (out) map_fields(msg, map, out);
    return out;
}

int cli_error_map(tp_status s, const char *const *map) {
    char *m = cli_map_fields(tp_errmsg(), map);
    fprintf(stderr, "taper: %serror (%s): %s\n", rank_tag(), tp_status_name(s), m ? m : tp_errmsg());
    free(m);
    return CLI_FAIL;
}

static void log_mapped(void *user, tp_log_level level, const char *msg) {
    (void)level;
    char *m = cli_map_fields(msg, user);
    fprintf(stderr, "%s\n", m ? m : msg);
    free(m);
}

void cli_log_map(const char *const *map) {
    if (map) tp_set_log(log_mapped, (void *)map);
    else tp_log_default();
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

int cli_stream(const char *cmd, const char *arg, int *out) {
    if (!arg || !strcmp(arg, "on")) *out = 1;
    else if (!strcmp(arg, "off")) *out = -1;
    else if (!strcmp(arg, "auto")) *out = 0;
    else return cli_usage(cmd, "--stream must be auto, on or off, got '%s'", arg);
    return CLI_OK;
}

/* "6G", "512M", "1.5G", "100000" (bytes; K, M, G, T are powers of 1024) -> bytes; -1 if malformed. */
static double parse_bytes(const char *s) {
    char *end = NULL;
    double v = s ? strtod(s, &end) : -1;
    if (!s || end == s || !(v >= 0)) return -1;
    const char *units = "KMGT";
    if (*end) {
        const char *u = strchr(units, *end == 'k' ? 'K' : *end);
        if (!u || !*u || (end[1] && !((end[1] == 'B' || end[1] == 'i') && (!end[2] || (end[1] == 'i' && end[2] == 'B' && !end[3])))))
            return -1;
        for (const char *q = units; q <= u; q++) v *= 1024;
    }
    return v;
}

int cli_mem_limit(const char *cmd, const char *arg, double *out) {
    double v = parse_bytes(arg);
    if (v <= 0) return cli_usage(cmd, "--mem-limit expects a size like 6G or 512M, got '%s'", arg ? arg : "");
    *out = v;
    return CLI_OK;
}

double cli_mem_limit_env(void) {
    const char *e = getenv("TAPER_MEM_LIMIT");
    double v = e && *e ? parse_bytes(e) : 0;
    if (v < 0) {
        fprintf(stderr, "taper: TAPER_MEM_LIMIT='%s' is not a size like 6G; ignored\n", e);
        v = 0;
    }
    return v;
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

const char *cli_data_dir(const char *given) {
    if (given) return given;
    const char *env = getenv("TAPER_DATA");
    return env && *env ? env : "../shared/data";
}

static volatile sig_atomic_t g_stop;
static const char *g_stop_msg;

static void on_stop_signal(int sig) {
    g_stop = sig;
    if (g_stop_msg) {
        ssize_t w = write(2, g_stop_msg, strlen(g_stop_msg));
        (void)w;
    }
    signal(sig, SIG_DFL); /* a second signal ends the process at once */
}

volatile sig_atomic_t *cli_stop_signals(const char *msg) {
    g_stop = 0;
    g_stop_msg = msg;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART; /* a checkpoint being written must not see EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return &g_stop;
}

void cli_stop_signals_end(void) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}
