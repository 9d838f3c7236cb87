/* File helpers (read, atomic write, mmap), half-precision conversion, timers, progress bar. */
#include "taper/util.h"
#include "core/internal.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

tp_status tp_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return tp_fail(TP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return tp_fail(TP_ERR_IO, "%s: cannot seek", path); }
    long n = ftell(f);
    if (n < 0) { fclose(f); return tp_fail(TP_ERR_IO, "%s: cannot tell size", path); }
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (!buf) { fclose(f); return tp_fail(TP_ERR_NOMEM, "%s: cannot allocate %ld bytes", path, n); }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf); fclose(f);
        return tp_fail(TP_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *data = buf;
    if (len) *len = (size_t)n;
    return TP_OK;
}

void tp_fsync_parent_dir(const char *path) {
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (slash == path ? 1 : (size_t)(slash - path)) : 0;
    if (n >= sizeof dir) return;
    if (n) memcpy(dir, path, n);
    else dir[n++] = '.';
    dir[n] = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) { fsync(fd); close(fd); }
}

tp_status tp_write_file_atomic(const char *path, const void *data, size_t len) {
    size_t plen = strlen(path) + 32;
    char *tmp = malloc(plen);
    if (!tmp) return tp_fail(TP_ERR_NOMEM, "out of memory");
    snprintf(tmp, plen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        tp_status s = tp_fail(TP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return s;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            tp_status s = tp_fail(TP_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
            close(fd); unlink(tmp); free(tmp);
            return s;
        }
        p += w; left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        tp_status s = tp_fail(TP_ERR_IO, "%s: fsync/close failed: %s", tmp, strerror(errno));
        unlink(tmp); free(tmp);
        return s;
    }
    if (rename(tmp, path) != 0) {
        tp_status s = tp_fail(TP_ERR_IO, "%s: rename to %s failed: %s", tmp, path, strerror(errno));
        unlink(tmp); free(tmp);
        return s;
    }
    free(tmp);
    tp_fsync_parent_dir(path);
    return TP_OK;
}

tp_status tp_mmap_open(const char *path, tp_mmap *m) {
    m->data = NULL; m->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return tp_fail(TP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); return tp_fail(TP_ERR_IO, "%s: cannot stat", path); }
    if (!S_ISREG(st.st_mode)) { close(fd); return tp_fail(TP_ERR_IO, "%s: not a regular file", path); }
    if (st.st_size == 0) { close(fd); m->data = (const uint8_t *)""; m->size = 0; return TP_OK; }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED) /* ENOMEM: the address space, not the file: callers that skip bad files must stop */
        return tp_fail(err == ENOMEM ? TP_ERR_NOMEM : TP_ERR_IO, "%s: mmap failed: %s", path, strerror(err));
    m->data = p;
    m->size = (size_t)st.st_size;
    return TP_OK;
}

void tp_mmap_close(tp_mmap *m) {
    if (m->data && m->size) munmap((void *)m->data, m->size);
    m->data = NULL; m->size = 0;
}

void tp_mmap_release(const void *p, size_t n) {
    static size_t page;
    if (!page) {
        long ps = sysconf(_SC_PAGESIZE);
        page = ps > 0 ? (size_t)ps : 4096;
    }
    if (!p || !n) return;
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(page - 1), e = ((uintptr_t)p + n + page - 1) & ~(uintptr_t)(page - 1);
    madvise((void *)a, e - a, MADV_DONTNEED);
}

void tp_mem_discard(const void *p, size_t n) {
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096;
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), e = ((uintptr_t)p + n) & ~(page - 1);
    if (p && e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

/* The number after key in a /proc-style file (e.g. "MemAvailable:"), times unit; -1 if absent. */
static double file_number(const char *path, const char *key, double unit) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    double v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl)) {
            char *end = NULL;
            double x = strtod(line + kl, &end);
            if (end != line + kl) v = x * unit;
            break;
        }
    fclose(f);
    return v;
}

double tp_mem_available(void) {
    double avail = file_number("/proc/meminfo", "MemAvailable:", 1024.0);
    double max = file_number("/sys/fs/cgroup/memory.max", "", 1.0);
    double cur = file_number("/sys/fs/cgroup/memory.current", "", 1.0);
    if (max > 0 && cur >= 0 && (avail < 0 || max - cur < avail)) avail = max - cur > 0 ? max - cur : 0;
    return avail > 0 ? avail : 0;
}

double tp_file_size(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 ? (double)st.st_size : 0;
}

double tp_peak_rss(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0;
}

float tp_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: value = man * 2^-24 */
            float f = (float)man * 5.9604644775390625e-08f;
            return sign ? -f : f;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t tp_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) { /* below smallest normal half: subnormal or zero */
        float a;
        memcpy(&a, &ax, 4);
        /* a * 2^24 rounded to nearest even gives the subnormal mantissa */
        float r = nearbyintf(a * 16777216.0f);
        return (uint16_t)(sign | (uint16_t)r);
    }
    uint32_t mant = ax & 0x7fffff, exp = (ax >> 23) - 112;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float tp_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t tp_fp32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

double tp_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_hms(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, n, "--:--"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static int g_progress = -1; /* -1: when stderr is a terminal */

void tp_progress_set_mode(int mode) { g_progress = mode < 0 ? -1 : mode > 0; }

void tp_progress_begin(tp_progress *p, const char *label, double total, const char *unit) {
    p->label = label; p->unit = unit ? unit : "it";
    p->total = total; p->done = 0;
    p->t0 = tp_time_s(); p->last_draw = 0;
    p->enabled = g_progress >= 0 ? g_progress : isatty(2);
}

static void progress_draw(tp_progress *p, int final) {
    double el = tp_time_s() - p->t0;
    double frac = p->total > 0 ? p->done / p->total : 0;
    if (frac > 1) frac = 1;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    char eta[32], ela[32];
    fmt_hms(eta, sizeof eta, frac > 0 ? el * (1 - frac) / frac : -1);
    fmt_hms(ela, sizeof ela, el);
    double rate = el > 0 ? p->done / el : 0;
    fprintf(stderr, "\r%s [%s] %3.0f%% %.0f/%.0f %s %s %.1f %s/s ", p->label, bar, 100 * frac,
            p->done, p->total, final ? "took" : "ETA", final ? ela : eta, rate, p->unit);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

void tp_progress_update(tp_progress *p, double done) {
    p->done = done;
    if (!p->enabled) return;
    double now = tp_time_s();
    if (now - p->last_draw < 0.1 && done < p->total) return;
    p->last_draw = now;
    progress_draw(p, 0);
}

void tp_progress_end(tp_progress *p) {
    if (p->enabled) progress_draw(p, 1);
}

const cJSON *tp_json_at(const cJSON *root, const char *path) {
    const cJSON *c = root;
    const char *p = path;
    while (c && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char key[256];
        if (n >= sizeof key) return NULL;
        memcpy(key, p, n);
        key[n] = 0;
        c = cJSON_IsArray(c) ? cJSON_GetArrayItem(c, atoi(key)) : cJSON_GetObjectItemCaseSensitive(c, key);
        p += n + (dot ? 1 : 0);
    }
    return c;
}

tp_status tp_write_json_atomic(const char *path, const cJSON *j) {
    char *text = j ? cJSON_Print(j) : NULL;
    if (!text) return tp_fail(TP_ERR_NOMEM, "out of memory writing %s", path);
    size_t n = strlen(text);
    text[n] = '\n'; /* over the NUL: cJSON_Print's buffer holds n + 1 bytes */
    tp_status s = tp_write_file_atomic(path, text, n + 1);
    cJSON_free(text);
    return s;
}

char *tp_path_join(const char *dir, const char *name) {
    size_t nd = strlen(dir), n = nd + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s%s%s", dir, nd && dir[nd - 1] == '/' ? "" : "/", name);
    return p;
}

int tp_mkdir_p(const char *dir) {
    char *p = strdup(dir);
    if (!p || !*p) {
        free(p);
        errno = p ? ENOENT : ENOMEM;
        return -1;
    }
    for (char *q = p + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) { free(p); return -1; }
        *q = '/';
    }
    int rc = mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
    struct stat st;
    if (!rc && (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))) {
        errno = ENOTDIR;
        rc = -1;
    }
    free(p);
    return rc;
}

tp_status tp_parse_count(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || end == s || errno) return tp_fail(TP_ERR_ARG, "count \"%s\" is not a number", s ? s : "(null)");
    double mul = 1;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': mul = 1e3; break;
        case 'm': case 'M': mul = 1e6; break;
        case 'g': case 'G': case 'b': case 'B': mul = 1e9; break;
        default: mul = 0; break;
        }
        end++;
    }
    double x = v * mul;
    if (mul == 0 || *end || !(x >= 1) || x > 1e15 || fabs(x - nearbyint(x)) > 1e-6 * x)
        return tp_fail(TP_ERR_ARG, "count \"%s\" is not a positive whole number with an optional k/M/G/B suffix", s);
    *out = (size_t)llround(x);
    return TP_OK;
}

cJSON *tp_json_load_optional(const char *dir, const char *name) {
    char *p = name ? tp_path_join(dir, name) : NULL, *text = NULL;
    cJSON *j = NULL;
    if ((p || !name) && tp_read_file(p ? p : dir, &text, NULL) == TP_OK) j = cJSON_Parse(text);
    tp_clear_error();
    free(text);
    free(p);
    return j;
}

double tp_json_number(const cJSON *root, const char *path) {
    const cJSON *c = tp_json_at(root, path);
    return cJSON_IsNumber(c) ? c->valuedouble : NAN;
}

char *tp_strfmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

void tp_vec_stats(const double *v, int n, double *min, double *max, double *mean) {
    double lo = v[0], hi = v[0], sum = 0;
    for (int i = 0; i < n; i++) {
        lo = v[i] < lo ? v[i] : lo;
        hi = v[i] > hi ? v[i] : hi;
        sum += v[i];
    }
    *min = lo, *max = hi, *mean = sum / n;
}
