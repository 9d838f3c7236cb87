/* The teacher top-k cache (include/taper/distill.h, format in docs/distillation.md): the builder
 * behind `taper teacher-cache` (teacher forward over every training window, top-K ids, raw logits
 * and full-vocabulary log-sum-exps, written crash-safe and resumable) and the validated mmap
 * reader the distiller uses instead of running the teacher. What the entries mean for the losses
 * (log-probabilities exactly as tp_kd_topk computes them) lives in kd_loss.c; how the distiller
 * uses them, in distill.c. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/kernels.h"
#include "taper/distill.h"
#include "taper/rng.h"
#include "taper/util.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "teacher caches are little-endian and mapped in place: a big-endian host needs byte swapping here"
#endif

#define TC_MAGIC "TAPERKDC"
#define TC_VERSION 1u
#define TC_HEADER 256u
#define TC_CHECKSUM_AT 248u
#define TC_INDEX_ENTRY 16u

/* ---------------------------------------------------------------- hashing --- */

/* 64-bit hash of n bytes (8 at a time, then the tail), never 0 */
static uint64_t hash_bytes(const void *p, size_t n, uint64_t seed) {
    const uint8_t *b = p;
    uint64_t h = tp_mix64(seed ^ 0x6b64636163686531ull);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ull;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    if (i < n) memcpy(&tail, b + i, n - i);
    h = tp_mix64(h ^ tail ^ ((uint64_t)n << 3));
    return h ? h : 1;
}

uint64_t tp_tcache_window_hash(const int32_t *tokens, int T, int32_t last_target) {
    uint64_t h = hash_bytes(tokens, (size_t)T * sizeof(int32_t), 0x77696e646f77ull);
    h = tp_mix64(h ^ (uint64_t)(uint32_t)last_target);
    return h ? h : 1;
}

/* ---------------------------------------------------------------- header --- */

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/*   0 magic "TAPERKDC"     8 u32 version     12 u32 header_bytes (256)
 *  16 u32 K               20 u32 T          24 u32 vocab       28 u32 n_tau
 *  32 f32 tau[8]          64 u64 n_windows  72 u64 n_val       80 f64 val_frac
 *  88 u64 data_tokens     96 u64 data_docs 104 u64 data_tok_fp
 * 112 i32 bos            116 i32 eos       120 u64 data_fp    128 u64 teacher_fp
 * 136 u64 teacher_tok_fp 144 u64 window_bytes                 152 u64 flags (0)
 * 160..247 zero          248 u64 checksum of bytes 0..247 */
static void header_write(uint8_t *h, const tp_tcache_info *in) {
    memset(h, 0, TC_HEADER);
    memcpy(h, TC_MAGIC, 8);
    put32(h + 8, TC_VERSION);
    put32(h + 12, TC_HEADER);
    put32(h + 16, (uint32_t)in->K);
    put32(h + 20, (uint32_t)in->T);
    put32(h + 24, (uint32_t)in->vocab);
    put32(h + 28, (uint32_t)in->n_tau);
    for (int i = 0; i < in->n_tau; i++) memcpy(h + 32 + 4 * i, &in->tau[i], 4);
    put64(h + 64, in->n_windows);
    put64(h + 72, in->n_val);
    memcpy(h + 80, &in->val_frac, 8);
    put64(h + 88, in->data_tokens);
    put64(h + 96, in->data_docs);
    put64(h + 104, in->data_tok_fp);
    put32(h + 112, (uint32_t)in->bos);
    put32(h + 116, (uint32_t)in->eos);
    put64(h + 120, in->data_fp);
    put64(h + 128, in->teacher_fp);
    put64(h + 136, in->teacher_tok_fp);
    put64(h + 144, in->window_bytes);
    put64(h + TC_CHECKSUM_AT, hash_bytes(h, TC_CHECKSUM_AT, 0));
}

/* bytes of one window's entry: ids (T,K) i32, logits (T,K) f32, lse (T,n_tau) f64; 0 on overflow */
static uint64_t entry_bytes(uint64_t T, uint64_t K, uint64_t n_tau) {
    if (T > (1u << 24) || K > (1u << 30) || n_tau > TP_TCACHE_MAX_TAU) return 0;
    uint64_t a = T * K, per;
    if (a > UINT64_MAX / 8) return 0;
    per = a * 8 + T * n_tau * 8;
    return per;
}

/* total file bytes, 0 on overflow */
static uint64_t file_bytes(uint64_t n, uint64_t wb) {
    if (n == 0 || wb == 0 || n > (UINT64_MAX - TC_HEADER) / (TC_INDEX_ENTRY + wb)) return 0;
    return TC_HEADER + n * (TC_INDEX_ENTRY + wb);
}

static uint64_t data_fingerprint(const tp_tcache_info *in, const uint64_t *tok_hash) {
    uint64_t fields[8] = {(uint64_t)in->T, in->n_windows, in->n_val, in->data_tokens, in->data_docs, in->data_tok_fp,
                          (uint64_t)(uint32_t)in->bos, (uint64_t)(uint32_t)in->eos};
    uint64_t h = hash_bytes(fields, sizeof fields, 0x64617461ull);
    return hash_bytes(tok_hash, (size_t)in->n_windows * 8, h);
}

/* ---------------------------------------------------------------- reader --- */

struct tp_tcache {
    tp_mmap m;
    char *path;
    tp_tcache_info info;
    const uint8_t *index;   /* (n_windows, 2) u64: token hash, entry checksum */
    const uint8_t *entries; /* n_windows x window_bytes */
};

void tp_tcache_close(tp_tcache *c) {
    if (!c) return;
    tp_mmap_close(&c->m);
    free(c->path);
    free(c);
}

const tp_tcache_info *tp_tcache_get_info(const tp_tcache *c) { return c ? &c->info : NULL; }

int tp_tcache_tau_index(const tp_tcache *c, float tau) {
    for (int i = 0; c && i < c->info.n_tau; i++)
        if (c->info.tau[i] == tau) return i;
    return -1;
}

static tp_status parse_header(const char *path, const uint8_t *h, uint64_t size, tp_tcache_info *in) {
    if (size < TC_HEADER)
        return tp_fail(TP_ERR_FORMAT, "%s: %llu bytes, shorter than the %u-byte teacher-cache header (truncated?)", path,
                       (unsigned long long)size, TC_HEADER);
    if (memcmp(h, TC_MAGIC, 8) != 0) return tp_fail(TP_ERR_FORMAT, "%s: not a taper teacher cache (bad magic)", path);
    memset(in, 0, sizeof *in);
    in->version = (int)get32(h + 8);
    if (get32(h + 8) != TC_VERSION)
        return tp_fail(TP_ERR_FORMAT, "%s: field version: %u, this build reads version %u", path, get32(h + 8),
                       TC_VERSION);
    if (get32(h + 12) != TC_HEADER)
        return tp_fail(TP_ERR_FORMAT, "%s: field header_bytes: %u, expected %u", path, get32(h + 12), TC_HEADER);
    if (get64(h + TC_CHECKSUM_AT) != hash_bytes(h, TC_CHECKSUM_AT, 0))
        return tp_fail(TP_ERR_FORMAT, "%s: header checksum mismatch (the file is corrupt)", path);
    uint32_t K = get32(h + 16), T = get32(h + 20), V = get32(h + 24), nt = get32(h + 28);
    if (V == 0 || V > (uint32_t)INT32_MAX) return tp_fail(TP_ERR_FORMAT, "%s: field vocab: %u", path, V);
    if (K == 0 || K > V) return tp_fail(TP_ERR_FORMAT, "%s: field K: %u outside 1..vocab %u", path, K, V);
    if (T == 0 || T > (1u << 24)) return tp_fail(TP_ERR_FORMAT, "%s: field T: %u outside 1..2^24", path, T);
    if (nt == 0 || nt > TP_TCACHE_MAX_TAU)
        return tp_fail(TP_ERR_FORMAT, "%s: field n_tau: %u outside 1..%d", path, nt, TP_TCACHE_MAX_TAU);
    in->K = (int)K;
    in->T = (int)T;
    in->vocab = (int)V;
    in->n_tau = (int)nt;
    for (uint32_t i = 0; i < nt; i++) {
        memcpy(&in->tau[i], h + 32 + 4 * i, 4);
        if (!(in->tau[i] > 0) || !isfinite(in->tau[i]))
            return tp_fail(TP_ERR_FORMAT, "%s: field tau[%u]: %g is not a positive temperature", path, i, in->tau[i]);
    }
    in->n_windows = get64(h + 64);
    in->n_val = get64(h + 72);
    memcpy(&in->val_frac, h + 80, 8);
    in->data_tokens = get64(h + 88);
    in->data_docs = get64(h + 96);
    in->data_tok_fp = get64(h + 104);
    in->bos = (int32_t)get32(h + 112);
    in->eos = (int32_t)get32(h + 116);
    in->data_fp = get64(h + 120);
    in->teacher_fp = get64(h + 128);
    in->teacher_tok_fp = get64(h + 136);
    in->window_bytes = get64(h + 144);
    if (get64(h + 152) != 0)
        return tp_fail(TP_ERR_FORMAT, "%s: field flags: 0x%llx, this build knows no flags", path,
                       (unsigned long long)get64(h + 152));
    uint64_t wb = entry_bytes(T, K, nt);
    if (in->window_bytes != wb)
        return tp_fail(TP_ERR_FORMAT, "%s: field window_bytes: %llu, T %u K %u n_tau %u need %llu", path,
                       (unsigned long long)in->window_bytes, T, K, nt, (unsigned long long)wb);
    uint64_t want = file_bytes(in->n_windows, wb);
    if (want == 0)
        return tp_fail(TP_ERR_FORMAT, "%s: field n_windows: %llu windows of %llu bytes is not a valid size", path,
                       (unsigned long long)in->n_windows, (unsigned long long)wb);
    if (size < want)
        return tp_fail(TP_ERR_FORMAT, "%s: truncated: %llu windows need %llu bytes, the file has %llu", path,
                       (unsigned long long)in->n_windows, (unsigned long long)want, (unsigned long long)size);
    if (size > want)
        return tp_fail(TP_ERR_FORMAT, "%s: %llu trailing bytes after the %llu the header describes", path,
                       (unsigned long long)(size - want), (unsigned long long)want);
    return TP_OK;
}

tp_status tp_tcache_open(const char *path, tp_tcache **out) {
    *out = NULL;
    tp_tcache *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    tp_status s = tp_mmap_open(path, &c->m);
    if (s) {
        free(c->path);
        free(c);
        return s;
    }
    s = parse_header(path, c->m.data, c->m.size, &c->info);
    if (!s) {
        c->index = c->m.data + TC_HEADER;
        c->entries = c->index + c->info.n_windows * TC_INDEX_ENTRY;
        for (uint64_t j = 0; j < c->info.n_windows; j++)
            if (get64(c->index + j * TC_INDEX_ENTRY + 8) == 0) {
                s = tp_fail(TP_ERR_FORMAT, "%s: window %llu was never written (an incomplete cache)", path,
                            (unsigned long long)j);
                break;
            }
    }
    if (s) {
        tp_tcache_close(c);
        return s;
    }
    *out = c;
    return TP_OK;
}

tp_status tp_tcache_check_data(const tp_tcache *c, const tp_loader *L) {
    const tp_tcache_info *in = &c->info;
    tp_loader_info li;
    tp_loader_get_info(L, &li);
    tp_dataset_info di;
    tp_dataset_get_info(li.d, &di);
    if (li.T != in->T)
        return tp_fail(TP_ERR_ARG, "%s: made for sequences of %d tokens, this run uses seq %d", c->path, in->T, li.T);
    if (li.val_frac != in->val_frac || li.n_val != in->n_val)
        return tp_fail(TP_ERR_ARG, "%s: made with val_frac %g (%llu held-out windows), this run uses %g (%llu)",
                       c->path, in->val_frac, (unsigned long long)in->n_val, li.val_frac, (unsigned long long)li.n_val);
    if ((uint64_t)tp_dataset_tokens(li.d) != in->data_tokens || (uint64_t)tp_dataset_docs(li.d) != in->data_docs ||
        di.tok_fingerprint != in->data_tok_fp || di.bos != in->bos || di.eos != in->eos || li.n_train != in->n_windows)
        return tp_fail(TP_ERR_ARG,
                       "%s: made from other shards (%llu tokens in %llu documents, tokenizer %016llx, %llu training "
                       "windows), these have %zu tokens in %zu documents, tokenizer %016llx, %llu windows",
                       c->path, (unsigned long long)in->data_tokens, (unsigned long long)in->data_docs,
                       (unsigned long long)in->data_tok_fp, (unsigned long long)in->n_windows, tp_dataset_tokens(li.d),
                       tp_dataset_docs(li.d), (unsigned long long)di.tok_fingerprint, (unsigned long long)li.n_train);
    enum { CH = 64 };
    size_t T = (size_t)in->T;
    int32_t *tok = malloc(CH * T * sizeof *tok), *tgt = malloc(CH * T * sizeof *tgt);
    uint64_t *th = malloc((size_t)in->n_windows * sizeof *th);
    tp_status s = tok && tgt && th ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
    for (uint64_t j = 0; !s && j < in->n_windows; j += CH) {
        int got = 0;
        if ((s = tp_loader_train(L, j, CH, tok, tgt, &got))) break;
        for (int b = 0; b < got && !s; b++) {
            th[j + b] = tp_tcache_window_hash(tok + b * T, in->T, tgt[b * T + T - 1]);
            if (th[j + b] != get64(c->index + (j + b) * TC_INDEX_ENTRY))
                s = tp_fail(TP_ERR_ARG,
                            "%s: training window %llu holds other tokens than when the cache was made (other shards "
                            "with the same counts?)",
                            c->path, (unsigned long long)(j + b));
        }
    }
    if (!s && data_fingerprint(in, th) != in->data_fp)
        s = tp_fail(TP_ERR_FORMAT, "%s: field data_fp does not match the windows it indexes (corrupt)", c->path);
    free(tok);
    free(tgt);
    free(th);
    return s;
}

tp_status tp_tcache_read(const tp_tcache *c, uint64_t j, const int32_t *tokens, int32_t last_target, int k, float tau,
                         int32_t *idx, float *logp) {
    const tp_tcache_info *in = &c->info;
    if (j >= in->n_windows)
        return tp_fail(TP_ERR_ARG, "%s: window id %llu beyond its %llu windows", c->path, (unsigned long long)j,
                       (unsigned long long)in->n_windows);
    if (k < 1 || k > in->K) return tp_fail(TP_ERR_ARG, "%s: top-%d asked, the cache holds the top %d", c->path, k, in->K);
    int ti = tp_tcache_tau_index(c, tau);
    if (ti < 0) return tp_fail(TP_ERR_ARG, "%s: holds no normaliser for temperature %g", c->path, tau);
    const uint8_t *ix = c->index + j * TC_INDEX_ENTRY;
    if (tokens && tp_tcache_window_hash(tokens, in->T, last_target) != get64(ix))
        return tp_fail(TP_ERR_ARG,
                       "%s: window %llu: the tokens served differ from those the cache was made from (other shards, "
                       "seq or val_frac?)",
                       c->path, (unsigned long long)j);
    const uint8_t *e = c->entries + j * in->window_bytes;
    if (hash_bytes(e, (size_t)in->window_bytes, j) != get64(ix + 8))
        return tp_fail(TP_ERR_FORMAT, "%s: window %llu: entry checksum mismatch (the file is corrupt)", c->path,
                       (unsigned long long)j);
    size_t T = (size_t)in->T, K = (size_t)in->K;
    const uint8_t *ids = e, *lg = e + T * K * 4, *ls = e + T * K * 8;
    for (size_t t = 0; t < T; t++) {
        double lse;
        memcpy(&lse, ls + (t * (size_t)in->n_tau + (size_t)ti) * 8, 8);
        if (!isfinite(lse))
            return tp_fail(TP_ERR_FORMAT, "%s: window %llu position %zu: log-sum-exp %g", c->path, (unsigned long long)j,
                           t, lse);
        for (int i = 0; i < k; i++) {
            int32_t id;
            float l;
            memcpy(&id, ids + (t * K + (size_t)i) * 4, 4);
            memcpy(&l, lg + (t * K + (size_t)i) * 4, 4);
            if (id < 0 || id >= in->vocab || !isfinite(l))
                return tp_fail(TP_ERR_FORMAT, "%s: window %llu position %zu: entry %d holds token %d, logit %g", c->path,
                               (unsigned long long)j, t, i, id, l);
            idx[t * (size_t)k + (size_t)i] = id;
            logp[t * (size_t)k + (size_t)i] = tp_kd_logp(l, tau, lse);
        }
    }
    return TP_OK;
}

/* ---------------------------------------------------------------- builder --- */

void tp_tcache_build_defaults(tp_tcache_build_opts *o) {
    memset(o, 0, sizeof *o);
    o->K = 32;
    o->B = 4;
    o->n_tau = 1;
    o->tau[0] = 1.0f;
}

static tp_status pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return tp_fail(TP_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        }
        p += w;
        off += (uint64_t)w;
        n -= (size_t)w;
    }
    return TP_OK;
}

static tp_status pread_all(int fd, void *buf, size_t n, uint64_t off, const char *path) {
    uint8_t *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return tp_fail(TP_ERR_IO, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "short file");
        p += r;
        off += (uint64_t)r;
        n -= (size_t)r;
    }
    return TP_OK;
}

static void fsync_dir_of(const char *path) {
    char *dir = strdup(path);
    if (!dir) return;
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    else strcpy(dir, ".");
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

typedef struct {
    float *h; /* (B*T, d) the teacher's final-norm output */
} build_hook_ctx;

static void final_norm_hook(void *user, tp_hook_point p, int layer, const float *x, int B, int T, int width) {
    (void)layer;
    if (p != TP_HOOK_FINAL_NORM) return;
    build_hook_ctx *c = user;
    memcpy(c->h, x, (size_t)B * T * (size_t)width * sizeof(float));
}

/* entry of one window from its T rows of final-norm output h (T, d); lbuf (CH, V) scratch */
static void make_entry(const tp_model *m, const tp_tcache_info *in, const float *h, float *lbuf, size_t CH,
                       uint8_t *entry) {
    size_t T = (size_t)in->T, K = (size_t)in->K, V = (size_t)m->cfg.vocab, d = (size_t)m->cfg.d_model;
    int32_t *ids = (int32_t *)(void *)entry;
    float *lg = (float *)(void *)(entry + T * K * 4);
    double *ls = (double *)(void *)(entry + T * K * 8);
    for (size_t r0 = 0; r0 < T; r0 += CH) {
        size_t R = T - r0 < CH ? T - r0 : CH;
        tp_matmul_wt(h + r0 * d, m->lm_head, NULL, lbuf, R, d, V);
#pragma omp parallel for schedule(static) if (R * V >= 65536)
        for (size_t r = 0; r < R; r++) {
            size_t t = r0 + r;
            tp_kd_topk_logits(lbuf + r * V, V, (int)K, ids + t * K, lg + t * K);
            for (int i = 0; i < in->n_tau; i++) ls[t * (size_t)in->n_tau + (size_t)i] = tp_kd_lse(lbuf + r * V, V, in->tau[i]);
        }
    }
}

/* The partial file's usable entries: a matching header, then each entry whose checksum holds. */
static tp_status resume_partial(int fd, const char *ppath, const uint8_t *header, const tp_tcache_info *in,
                                const uint64_t *tok_hash, unsigned char *done, uint64_t *n_done) {
    *n_done = 0;
    uint8_t h[TC_HEADER];
    struct stat st;
    if (fstat(fd, &st) != 0) return tp_fail(TP_ERR_IO, "%s: %s", ppath, strerror(errno));
    if ((uint64_t)st.st_size != file_bytes(in->n_windows, in->window_bytes)) return TP_ERR_FORMAT;
    tp_status s = pread_all(fd, h, TC_HEADER, 0, ppath);
    if (s) return s;
    if (memcmp(h, header, TC_HEADER) != 0) return TP_ERR_FORMAT; /* another teacher, data or setting */
    uint8_t *buf = malloc((size_t)in->window_bytes);
    if (!buf) return tp_fail(TP_ERR_NOMEM, "out of memory");
    for (uint64_t j = 0; j < in->n_windows && !s; j++) {
        uint8_t ix[TC_INDEX_ENTRY];
        if ((s = pread_all(fd, ix, sizeof ix, TC_HEADER + j * TC_INDEX_ENTRY, ppath))) break;
        if (get64(ix + 8) == 0 || get64(ix) != tok_hash[j]) continue;
        uint64_t off = TC_HEADER + in->n_windows * TC_INDEX_ENTRY + j * in->window_bytes;
        if ((s = pread_all(fd, buf, (size_t)in->window_bytes, off, ppath))) break;
        if (hash_bytes(buf, (size_t)in->window_bytes, j) == get64(ix + 8)) {
            done[j] = 1;
            (*n_done)++;
        }
    }
    free(buf);
    return s;
}

static tp_status build_info(const tp_model *t, const tp_loader *L, const tp_tcache_build_opts *o, tp_tcache_info *in) {
    tp_loader_info li;
    tp_loader_get_info(L, &li);
    tp_dataset_info di;
    tp_dataset_get_info(li.d, &di);
    memset(in, 0, sizeof *in);
    if (o->K < 1 || o->K > t->cfg.vocab)
        return tp_fail(TP_ERR_ARG, "teacher cache: K %d outside 1..%d (the vocabulary)", o->K, t->cfg.vocab);
    if (o->B < 1) return tp_fail(TP_ERR_ARG, "teacher cache: batch %d must be >= 1", o->B);
    if (o->n_tau < 1 || o->n_tau > TP_TCACHE_MAX_TAU)
        return tp_fail(TP_ERR_ARG, "teacher cache: %d temperatures, 1..%d allowed", o->n_tau, TP_TCACHE_MAX_TAU);
    for (int i = 0; i < o->n_tau; i++) {
        if (!(o->tau[i] > 0) || !isfinite(o->tau[i]))
            return tp_fail(TP_ERR_ARG, "teacher cache: temperature %g must be > 0", o->tau[i]);
        for (int j = 0; j < i; j++)
            if (o->tau[j] == o->tau[i]) return tp_fail(TP_ERR_ARG, "teacher cache: temperature %g given twice", o->tau[i]);
    }
    if (di.vocab > (uint32_t)t->cfg.vocab)
        return tp_fail(TP_ERR_ARG, "teacher cache: the shards' vocabulary has %u ids, the teacher only %d", di.vocab,
                       t->cfg.vocab);
    if (li.T > t->cfg.max_pos)
        return tp_fail(TP_ERR_ARG, "teacher cache: seq %d exceeds the teacher's context of %d", li.T, t->cfg.max_pos);
    if (li.n_train == 0) return tp_fail(TP_ERR_ARG, "teacher cache: the data has no training windows");
    in->version = TC_VERSION;
    in->K = o->K;
    in->T = li.T;
    in->vocab = t->cfg.vocab;
    in->n_tau = o->n_tau;
    memcpy(in->tau, o->tau, sizeof in->tau);
    for (int i = o->n_tau; i < TP_TCACHE_MAX_TAU; i++) in->tau[i] = 0;
    in->n_windows = li.n_train;
    in->n_val = li.n_val;
    in->val_frac = li.val_frac;
    in->data_tokens = tp_dataset_tokens(li.d);
    in->data_docs = tp_dataset_docs(li.d);
    in->data_tok_fp = di.tok_fingerprint;
    in->bos = di.bos;
    in->eos = di.eos;
    in->teacher_fp = tp_params_hash(t);
    in->teacher_tok_fp = t->tok ? tp_shard_tok_fingerprint(t->tok) : 0;
    in->window_bytes = entry_bytes((uint64_t)li.T, (uint64_t)o->K, (uint64_t)o->n_tau);
    if (!in->window_bytes || !file_bytes(in->n_windows, in->window_bytes) ||
        in->window_bytes > (uint64_t)SIZE_MAX / (uint64_t)o->B)
        return tp_fail(TP_ERR_ARG, "teacher cache: %llu windows of %d x top-%d is too large",
                       (unsigned long long)in->n_windows, li.T, o->K);
    return TP_OK;
}

/* Rank 0 (or the only process): resumes PATH.partial when its header matches (marking the windows
 * already there in done) or creates it with the header and an empty index. */
static tp_status prepare_partial(const char *ppath, const uint8_t *header, const tp_tcache_info *inp,
                                 const uint64_t *tok_hash, const tp_tcache_build_opts *o, unsigned char *done,
                                 uint64_t *n_done_out, int *fd_out) {
    const tp_tcache_info in = *inp;
    const size_t n = (size_t)in.n_windows;
    const uint64_t idx_off = TC_HEADER;
    tp_status s = TP_OK;
    int fd = -1;
    uint64_t n_done = 0;
    if (!o->restart && (fd = open(ppath, O_RDWR)) >= 0) {
        tp_status r = resume_partial(fd, ppath, header, &in, tok_hash, done, &n_done);
        if (r == TP_ERR_FORMAT) { /* another header: start again */
            if (!o->quiet)
                tp_log(TP_LOG_NOTE, "teacher-cache: %s was made with other settings, teacher or data: starting again",
                       ppath);
            close(fd);
            fd = -1;
            memset(done, 0, n);
            n_done = 0;
        } else if (r) {
            s = r;
            goto fail;
        } else if (!o->quiet) {
            tp_log(TP_LOG_NOTE, "teacher-cache: resuming %s: %llu of %zu windows already done", ppath,
                   (unsigned long long)n_done, n);
        }
    }
    if (fd < 0) {
        fd = open(ppath, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
            s = tp_fail(TP_ERR_IO, "%s: cannot create: %s", ppath, strerror(errno));
            goto fail;
        }
        uint64_t total = file_bytes(in.n_windows, in.window_bytes);
        if (ftruncate(fd, (off_t)total) != 0) {
            s = tp_fail(TP_ERR_IO, "%s: cannot size to %llu bytes: %s", ppath, (unsigned long long)total, strerror(errno));
            goto fail;
        }
        if ((s = pwrite_all(fd, header, TC_HEADER, 0, ppath))) goto fail;
        for (size_t j = 0; j < n && !s; j++) {
            uint8_t ix[TC_INDEX_ENTRY];
            put64(ix, tok_hash[j]);
            put64(ix + 8, 0);
            s = pwrite_all(fd, ix, sizeof ix, idx_off + j * TC_INDEX_ENTRY, ppath);
        }
        if (s) goto fail;
    }
    *fd_out = fd;
    *n_done_out = n_done;
    return TP_OK;
fail:
    if (fd >= 0) close(fd);
    return s;
}

tp_status tp_tcache_build(const tp_model *teacher, const tp_loader *L, const char *path, const tp_tcache_build_opts *o,
                          tp_tcache_build_result *res) {
    tp_tcache_build_result local;
    if (!res) res = &local;
    memset(res, 0, sizeof *res);
    tp_tcache_info in;
    tp_status s = build_info(teacher, L, o, &in);
    if (s) return s;
    const size_t T = (size_t)in.T, n = (size_t)in.n_windows, B = (size_t)o->B, CH = 32;
    const size_t d = (size_t)teacher->cfg.d_model, V = (size_t)teacher->cfg.vocab;
    const uint64_t idx_off = TC_HEADER, ent_off = TC_HEADER + in.n_windows * TC_INDEX_ENTRY;
    res->n_windows = in.n_windows;
    char *ppath = malloc(strlen(path) + 16);
    uint64_t *tok_hash = malloc(n * sizeof *tok_hash);
    unsigned char *done = calloc(n, 1);
    int32_t *tok = malloc(B * T * sizeof *tok), *tgt = malloc(B * T * sizeof *tgt);
    uint64_t *ids = malloc(B * sizeof *ids);
    float *h = malloc(B * T * d * sizeof *h), *lbuf = malloc(CH * V * sizeof *lbuf);
    uint8_t *ent = malloc(B * (size_t)in.window_bytes), header[TC_HEADER];
    int fd = -1;
    if (!ppath || !tok_hash || !done || !tok || !tgt || !ids || !h || !lbuf || !ent) {
        s = tp_fail(TP_ERR_NOMEM, "teacher cache: out of memory (%zu windows, batch %zu x %zu)", n, B, T);
        goto out;
    }
    sprintf(ppath, "%s.partial", path);
    /* the tokens of every window: the index's first column and the data fingerprint */
    for (size_t j = 0; j < n && !s; j += B) {
        int got = 0;
        if ((s = tp_loader_train(L, j, (int)B, tok, tgt, &got))) break;
        for (int b = 0; b < got; b++) tok_hash[j + (size_t)b] = tp_tcache_window_hash(tok + (size_t)b * T, in.T, tgt[(size_t)b * T + T - 1]);
    }
    if (s) goto out;
    in.data_fp = data_fingerprint(&in, tok_hash);
    header_write(header, &in);

    uint64_t n_done = 0;
    tp_comm *cm = o->comm ? o->comm : tp_comm_world();
    int R = tp_comm_size(cm), rk = tp_comm_rank(cm);
    if (rk == 0) s = prepare_partial(ppath, header, &in, tok_hash, o, done, &n_done, &fd);
    if (R > 1) { /* rank 0's outcome and the windows already done, then every rank opens the file */
        double st[2] = {s ? 1.0 : 0.0, (double)n_done};
        tp_status cs = tp_comm_bcast(cm, st, sizeof st, 0);
        if (!cs && st[0] == 0) cs = tp_comm_bcast(cm, done, n, 0);
        if (!s && cs) s = cs;
        if (!s && st[0] != 0) s = tp_fail(TP_ERR_IO, "teacher cache: rank 0 could not prepare %s", ppath);
        n_done = (uint64_t)st[1];
        if (!s && rk != 0 && (fd = open(ppath, O_RDWR)) < 0)
            s = tp_fail(TP_ERR_IO, "%s: rank %d cannot open it (is it on a file system every rank sees?): %s", ppath,
                        rk, strerror(errno));
        /* this rank's share of the windows still missing, in whole batches of B (so that every
         * forward has the rows one process would give it: the products' rounding depends on the
         * row count); the others' are marked 2 here */
        size_t ulo, uhi, k = 0, U = n - (size_t)n_done;
        tp_comm_share((U + B - 1) / B, rk, R, &ulo, &uhi);
        ulo *= B;
        uhi = uhi * B < U ? uhi * B : U;
        for (size_t w = 0; w < n; w++)
            if (!done[w]) {
                if (k < ulo || k >= uhi) done[w] = 2;
                k++;
            }
    }
    if (s) goto out;
    res->done_before = n_done;

    tp_progress prog;
    size_t mine = 0;
    for (size_t w = 0; w < n; w++) mine += done[w] == 0;
    tp_progress_begin(&prog, "teacher-cache", (double)mine * (double)T, "tok");
    if (o->quiet) prog.enabled = 0;
    double t0 = tp_time_s();
    build_hook_ctx hc = {h};
    tp_forward_opts fo = {final_norm_hook, &hc, NULL};
    size_t next = 0;
    int stopped = 0;
    while (!s) {
        size_t nb = 0;
        for (; next < n && nb < B; next++) {
            if (done[next]) continue;
            int got = 0;
            if ((s = tp_loader_train(L, next, 1, tok + nb * T, tgt + nb * T, &got))) break;
            ids[nb++] = next;
        }
        if (s || nb == 0) break;
        if ((s = tp_forward_ex(teacher, tok, (int)nb, (int)T, NULL, NULL, 0, &fo))) {
            s = tp_fail_ctx(s, "teacher forward: ");
            break;
        }
        for (size_t b = 0; b < nb && !s; b++) {
            uint8_t *e = ent + b * (size_t)in.window_bytes;
            make_entry(teacher, &in, h + b * T * d, lbuf, CH, e);
            s = pwrite_all(fd, e, (size_t)in.window_bytes, ent_off + ids[b] * in.window_bytes, ppath);
            if (s) break;
            uint8_t ix[TC_INDEX_ENTRY]; /* written after the entry: a set checksum means the data is there */
            put64(ix, tok_hash[ids[b]]);
            put64(ix + 8, hash_bytes(e, (size_t)in.window_bytes, ids[b]));
            s = pwrite_all(fd, ix, sizeof ix, idx_off + ids[b] * TC_INDEX_ENTRY, ppath);
            if (!s) {
                done[ids[b]] = 1;
                res->computed++;
            }
        }
        tp_progress_update(&prog, (double)res->computed * (double)T);
        if ((o->max_windows && res->computed >= o->max_windows) || (o->stop && *o->stop)) {
            stopped = res->computed + n_done < n;
            break;
        }
    }
    tp_progress_end(&prog);
    res->seconds = tp_time_s() - t0;
    res->tokens_per_s = res->seconds > 0 ? (double)res->computed * (double)T / res->seconds : 0;
    if (s) goto out;
    if (fsync(fd) != 0) {
        s = tp_fail(TP_ERR_IO, "%s: fsync failed: %s", ppath, strerror(errno));
        goto out;
    }
    if (R > 1) { /* every rank's entries are on disk: the windows computed and who stopped early */
        double st[2] = {(double)res->computed, stopped ? 1.0 : 0.0};
        if ((s = tp_comm_sum_f64(cm, st, 2))) goto out;
        res->computed = (uint64_t)st[0];
        stopped = st[1] != 0 || res->computed + n_done < n;
        if (rk != 0) { /* rank 0 renames */
            res->complete = !stopped;
            if (!stopped) res->bytes = file_bytes(in.n_windows, in.window_bytes);
            goto out;
        }
    }
    if (stopped) goto out;
    close(fd);
    fd = -1;
    if (rename(ppath, path) != 0) {
        s = tp_fail(TP_ERR_IO, "%s: cannot rename to %s: %s", ppath, path, strerror(errno));
        goto out;
    }
    fsync_dir_of(path);
    res->complete = 1;
    res->bytes = file_bytes(in.n_windows, in.window_bytes);
out:
    if (fd >= 0) close(fd);
    free(ppath);
    free(tok_hash);
    free(done);
    free(tok);
    free(tgt);
    free(ids);
    free(h);
    free(lbuf);
    free(ent);
    return s;
}
