/* The sparsity mask: names of the seven linear layers, the in-memory mask, its binary file
 * ("TPSPMASK" v1, layout in docs/sparsity.md) and applying a mask to a model. The algorithms
 * that choose masks are in sparsify.c and sparse_gpt.c. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taper/sparsify.h"
#include "model/kernels.h"

/* ------------------------------------------------------------------------------------------ */
/* names */

static const char *const method_names[TP_SPARSE_METHOD_COUNT] = {"magnitude", "wanda", "sparsegpt"};
static const char *const matrix_names[TP_SP_MATRICES] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *const matrix_suffix[TP_SP_MATRICES] = {
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight"};

const char *tp_sparse_method_name(tp_sparse_method m) {
    return (unsigned)m < TP_SPARSE_METHOD_COUNT ? method_names[m] : "?";
}

tp_status tp_sparse_method_parse(const char *s, tp_sparse_method *out) {
    for (int i = 0; i < TP_SPARSE_METHOD_COUNT; i++)
        if (s && strcmp(s, method_names[i]) == 0) {
            *out = (tp_sparse_method)i;
            return TP_OK;
        }
    return tp_fail(TP_ERR_ARG, "sparsity method \"%s\" is not one of magnitude, wanda, sparsegpt", s ? s : "(null)");
}

const char *tp_sparse_matrix_name(int k) { return k >= 0 && k < TP_SP_MATRICES ? matrix_names[k] : "?"; }

tp_status tp_sparse_targets_parse(const char *s, unsigned *targets) {
    *targets = 0;
    if (!s || !*s) return tp_fail(TP_ERR_ARG, "empty target list (use e.g. q,k,v,o,gate,up,down)");
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        unsigned bit = 0;
        if (n == 3 && !strncmp(p, "all", 3)) bit = TP_SP_ALL;
        else if (n == 4 && !strncmp(p, "attn", 4)) bit = (1u << TP_SP_Q) | (1u << TP_SP_K) | (1u << TP_SP_V) | (1u << TP_SP_O);
        else if (n == 3 && !strncmp(p, "mlp", 3)) bit = (1u << TP_SP_GATE) | (1u << TP_SP_UP) | (1u << TP_SP_DOWN);
        else
            for (int k = 0; k < TP_SP_MATRICES; k++)
                if (strlen(matrix_names[k]) == n && !strncmp(p, matrix_names[k], n)) bit = 1u << k;
        if (!bit)
            return tp_fail(TP_ERR_ARG, "target \"%.*s\" in \"%s\" is not one of q, k, v, o, gate, up, down, attn, mlp, all",
                           (int)n, p, s);
        *targets |= bit;
        p = e ? e + 1 : p + n;
        if (e && !*p) return tp_fail(TP_ERR_ARG, "target list \"%s\" ends with a comma", s);
    }
    return TP_OK;
}

void tp_sparse_tensor_name(int l, int k, char *buf, size_t n) {
    snprintf(buf, n, "model.layers.%d.%s", l, tp_sparse_matrix_name(k)[0] == '?' ? "?" : matrix_suffix[k]);
}

/* "model.layers.<l>.<suffix>" -> (l, k); 0 if name is not one of the seven linear layers. */
static int parse_tensor_name(const char *name, int *layer, int *matrix) {
    static const char pre[] = "model.layers.";
    if (strncmp(name, pre, sizeof pre - 1)) return 0;
    const char *p = name + sizeof pre - 1;
    if (!isdigit((unsigned char)*p) || (p[0] == '0' && isdigit((unsigned char)p[1]))) return 0;
    long l = 0;
    while (isdigit((unsigned char)*p)) {
        l = l * 10 + (*p++ - '0');
        if (l > 1000000) return 0;
    }
    if (*p++ != '.') return 0;
    for (int k = 0; k < TP_SP_MATRICES; k++)
        if (!strcmp(p, matrix_suffix[k])) {
            *layer = (int)l;
            *matrix = k;
            return 1;
        }
    return 0;
}

/* Shape of matrix k of layer l (rows = outputs, cols = inputs); 0 for an unknown k. */
static int matrix_shape(const tp_config *c, int l, int k, int *rows, int *cols) {
    int d = c->d_model, q = tp_config_heads(c, l) * c->head_dim, kv = c->n_kv_heads * c->head_dim,
        ff = tp_config_ff(c, l);
    static const int rsel[TP_SP_MATRICES] = {1, 2, 2, 0, 3, 3, 0}, csel[TP_SP_MATRICES] = {0, 0, 0, 1, 0, 0, 3};
    if (k < 0 || k >= TP_SP_MATRICES) return 0;
    const int dims[4] = {d, q, kv, ff};
    *rows = dims[rsel[k]];
    *cols = dims[csel[k]];
    return 1;
}

float *tp_sparse_matrix_data(const tp_model *m, int l, int k, int *rows, int *cols) {
    if (l < 0 || l >= m->cfg.n_layers || !matrix_shape(&m->cfg, l, k, rows, cols)) return NULL;
    const tp_layer *L = &m->layers[l];
    float *const w[TP_SP_MATRICES] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    return w[k];
}

/* ------------------------------------------------------------------------------------------ */
/* in memory */

void tp_mask_free(tp_mask *mk) {
    if (!mk) return;
    for (int i = 0; i < mk->n; i++) {
        free(mk->t[i].name);
        free(mk->t[i].bits);
    }
    free(mk->t);
    free(mk);
}

static size_t bit_bytes(uint64_t rows, uint64_t cols) { return (size_t)((rows * cols + 7) / 8); }

tp_status tp_mask_alloc(const tp_config *c, unsigned targets, tp_mask **out) {
    *out = NULL;
    tp_mask *mk = calloc(1, sizeof *mk);
    int n = 0;
    for (int k = 0; k < TP_SP_MATRICES; k++) n += (targets >> k) & 1;
    n *= c->n_layers;
    if (!mk || !(mk->t = calloc(n > 0 ? (size_t)n : 1, sizeof *mk->t))) {
        free(mk);
        return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    mk->method = -1;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < TP_SP_MATRICES; k++) {
            if (!((targets >> k) & 1)) continue;
            tp_mask_tensor *t = &mk->t[mk->n++];
            int r = 0, cl = 0;
            matrix_shape(c, l, k, &r, &cl);
            char name[96];
            tp_sparse_tensor_name(l, k, name, sizeof name);
            t->name = strdup(name);
            t->layer = l;
            t->matrix = k;
            t->rows = (uint32_t)r;
            t->cols = (uint32_t)cl;
            t->bits = calloc(bit_bytes(t->rows, t->cols) + 1, 1);
            if (!t->name || !t->bits) {
                tp_mask_free(mk);
                return tp_fail(TP_ERR_NOMEM, "out of memory for the mask");
            }
        }
    *out = mk;
    return TP_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* file */

#define MASK_MAGIC "TPSPMASK"
#define MASK_VERSION 1u
#define MASK_HEADER 40
#define MASK_MAX_TENSORS (1u << 20)
#define MASK_MAX_NAME 255u
#define MASK_MAX_ELEMS ((uint64_t)1 << 36)

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint64_t popcount_bytes(const uint8_t *b, size_t n) {
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++) c += (uint64_t)__builtin_popcount(b[i]);
    return c;
}

tp_status tp_mask_save(const tp_mask *mk, const char *path) {
    size_t size = MASK_HEADER + 8;
    for (int i = 0; i < mk->n; i++) {
        size_t nl = strlen(mk->t[i].name);
        if (nl == 0 || nl > MASK_MAX_NAME)
            return tp_fail(TP_ERR_ARG, "mask %s: tensor %d name length %zu is not in 1..%u", path, i, nl, MASK_MAX_NAME);
        size += 4 + nl + 16 + bit_bytes(mk->t[i].rows, mk->t[i].cols);
    }
    uint8_t *buf = malloc(size), *p = buf;
    if (!buf) return tp_fail(TP_ERR_NOMEM, "mask %s: out of memory for %zu bytes", path, size);
    memcpy(p, MASK_MAGIC, 8);
    put32(p + 8, MASK_VERSION);
    put32(p + 12, (uint32_t)mk->n);
    put32(p + 16, (uint32_t)(int32_t)mk->method);
    put32(p + 20, (uint32_t)mk->nm_n);
    put32(p + 24, (uint32_t)mk->nm_m);
    put32(p + 28, 0);
    double sp = mk->sparsity;
    uint64_t spb;
    memcpy(&spb, &sp, 8);
    put64(p + 32, spb);
    p += MASK_HEADER;
    for (int i = 0; i < mk->n; i++) {
        const tp_mask_tensor *t = &mk->t[i];
        size_t nl = strlen(t->name), nb = bit_bytes(t->rows, t->cols);
        put32(p, (uint32_t)nl);
        memcpy(p + 4, t->name, nl);
        p += 4 + nl;
        put32(p, t->rows);
        put32(p + 4, t->cols);
        put64(p + 8, popcount_bytes(t->bits, nb));
        memcpy(p + 16, t->bits, nb);
        p += 16 + nb;
    }
    put64(p, fnv1a(buf, (size_t)(p - buf)));
    tp_status s = tp_write_file_atomic(path, buf, size);
    free(buf);
    return s;
}

tp_status tp_mask_load(const char *path, tp_mask **out) {
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    tp_status s = tp_read_file(path, &data, &len);
    if (s) return tp_fail_ctx(s, "mask: ");
    const uint8_t *b = (const uint8_t *)data;
    tp_mask *mk = NULL;
#define BAD(...)                                      \
    do {                                              \
        s = tp_fail(TP_ERR_FORMAT, __VA_ARGS__);      \
        goto done;                                    \
    } while (0)
    if (len < MASK_HEADER + 8) BAD("mask %s: %zu bytes, shorter than the %d-byte header and checksum", path, len, MASK_HEADER + 8);
    if (memcmp(b, MASK_MAGIC, 8)) BAD("mask %s: magic is not \"" MASK_MAGIC "\" (not a taper mask file)", path);
    uint32_t ver = get32(b + 8), nt = get32(b + 12), nm_n = get32(b + 20), nm_m = get32(b + 24);
    int32_t method = (int32_t)get32(b + 16);
    if (ver != MASK_VERSION) BAD("mask %s: version %u is not supported (this build reads version %u)", path, ver, MASK_VERSION);
    if (nt > MASK_MAX_TENSORS) BAD("mask %s: tensor count %u exceeds %u", path, nt, MASK_MAX_TENSORS);
    if (method < -1 || method >= TP_SPARSE_METHOD_COUNT) BAD("mask %s: method %d is not -1..%d", path, method, TP_SPARSE_METHOD_COUNT - 1);
    if (!((nm_n == 0 && nm_m == 0) || (nm_n >= 1 && nm_n < nm_m && nm_m <= 64)))
        BAD("mask %s: N:M pattern %u:%u is not 0:0 or 1 <= N < M <= 64", path, nm_n, nm_m);
    if (get32(b + 28)) BAD("mask %s: reserved header field is %u, not 0", path, get32(b + 28));
    uint64_t spb = get64(b + 32);
    double sp;
    memcpy(&sp, &spb, 8);
    if (!(sp >= 0 && sp < 1)) BAD("mask %s: sparsity %g is not in [0, 1)", path, sp);
    uint64_t want = get64(b + len - 8), got = fnv1a(b, len - 8);
    size_t end = len - 8, pos = MASK_HEADER;
    mk = calloc(1, sizeof *mk);
    if (!mk || !(mk->t = calloc(nt ? nt : 1, sizeof *mk->t))) BAD("mask %s: out of memory for %u tensors", path, nt);
    mk->method = method;
    mk->sparsity = sp;
    mk->nm_n = (int)nm_n;
    mk->nm_m = (int)nm_m;
    for (uint32_t i = 0; i < nt; i++) {
        if (end - pos < 4) BAD("mask %s: tensor %u: name length runs past the end (offset %zu)", path, i, pos);
        uint32_t nl = get32(b + pos);
        if (nl == 0 || nl > MASK_MAX_NAME) BAD("mask %s: tensor %u: name length %u is not in 1..%u", path, i, nl, MASK_MAX_NAME);
        if (end - pos - 4 < (size_t)nl + 16) BAD("mask %s: tensor %u: header runs past the end (offset %zu)", path, i, pos);
        tp_mask_tensor *t = &mk->t[mk->n];
        if (!(t->name = malloc(nl + 1))) BAD("mask %s: out of memory", path);
        memcpy(t->name, b + pos + 4, nl);
        t->name[nl] = 0;
        mk->n++;
        if (strlen(t->name) != nl || !parse_tensor_name(t->name, &t->layer, &t->matrix))
            BAD("mask %s: tensor %u: name \"%s\" is not model.layers.<i>.{self_attn.{q,k,v,o}_proj,mlp.{gate,up,down}_proj}.weight",
                path, i, t->name);
        for (int j = 0; j < mk->n - 1; j++)
            if (!strcmp(mk->t[j].name, t->name)) BAD("mask %s: tensor %u: name %s appears twice", path, i, t->name);
        pos += 4 + nl;
        t->rows = get32(b + pos);
        t->cols = get32(b + pos + 4);
        t->n_pruned = get64(b + pos + 8);
        pos += 16;
        uint64_t ne = (uint64_t)t->rows * t->cols;
        if (t->rows == 0 || t->cols == 0 || ne > MASK_MAX_ELEMS)
            BAD("mask %s: tensor %s: shape %u x %u is empty or over 2^36 elements", path, t->name, t->rows, t->cols);
        size_t nb = bit_bytes(t->rows, t->cols);
        if (end - pos < nb) BAD("mask %s: tensor %s: %zu bytes of bits run past the end (offset %zu, file %zu bytes)", path, t->name, nb, pos, len);
        if (ne % 8 && (b[pos + nb - 1] >> (ne % 8)))
            BAD("mask %s: tensor %s: padding bits after element %llu are set", path, t->name, (unsigned long long)ne);
        uint64_t pc = popcount_bytes(b + pos, nb);
        if (pc != t->n_pruned)
            BAD("mask %s: tensor %s: header says %llu pruned, the bits hold %llu", path, t->name,
                (unsigned long long)t->n_pruned, (unsigned long long)pc);
        if (!(t->bits = malloc(nb))) BAD("mask %s: out of memory", path);
        memcpy(t->bits, b + pos, nb);
        pos += nb;
    }
    if (pos != end) BAD("mask %s: %zu unexpected bytes after the last tensor", path, end - pos);
    if (want != got) BAD("mask %s: checksum %016llx does not match the content (%016llx): corrupted file", path,
                         (unsigned long long)want, (unsigned long long)got);
#undef BAD
done:
    free(data);
    if (s) tp_mask_free(mk);
    else *out = mk;
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* applying */

tp_status tp_mask_check(const tp_mask *mk, const tp_model *m) {
    for (int i = 0; i < mk->n; i++) {
        const tp_mask_tensor *t = &mk->t[i];
        int r = 0, c = 0;
        if (t->layer >= m->cfg.n_layers || !tp_sparse_matrix_data(m, t->layer, t->matrix, &r, &c))
            return tp_fail(TP_ERR_ARG, "mask tensor %s: the model has %d layers", t->name, m->cfg.n_layers);
        if ((uint32_t)r != t->rows || (uint32_t)c != t->cols)
            return tp_fail(TP_ERR_ARG, "mask tensor %s is %u x %u, the model's is %d x %d", t->name, t->rows, t->cols, r, c);
    }
    return TP_OK;
}

tp_status tp_mask_apply(tp_model *m, const tp_mask *mk) {
    tp_status s = tp_mask_check(mk, m);
    if (s) return s;
    for (int i = 0; i < mk->n; i++) {
        const tp_mask_tensor *t = &mk->t[i];
        int r, c;
        float *w = tp_sparse_matrix_data(m, t->layer, t->matrix, &r, &c);
        size_t nb = bit_bytes(t->rows, t->cols);
#pragma omp parallel for schedule(static) if (nb >= 8192)
        for (size_t j = 0; j < nb; j++) {
            uint8_t v = t->bits[j];
            for (int bit = 0; v && bit < 8; bit++)
                if ((v >> bit) & 1) w[j * 8 + (size_t)bit] = 0.0f;
        }
    }
    tp_gemm_bf16_refresh(); /* bf16 copies of the weights, if any, follow */
    return TP_OK;
}

long long tp_mask_violations(const tp_model *m, const tp_mask *mk) {
    if (tp_mask_check(mk, m)) return -1;
    long long bad = 0;
    for (int i = 0; i < mk->n; i++) {
        const tp_mask_tensor *t = &mk->t[i];
        int r, c;
        const float *w = tp_sparse_matrix_data(m, t->layer, t->matrix, &r, &c);
        size_t ne = (size_t)t->rows * t->cols;
        for (size_t j = 0; j < ne; j++)
            if (((t->bits[j >> 3] >> (j & 7)) & 1) && w[j] != 0.0f) bad++;
    }
    return bad;
}
