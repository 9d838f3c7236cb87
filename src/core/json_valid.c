/* A JSON syntax check that allocates nothing: whether a failed cJSON parse ran out of memory
 * (the text is valid) or met bad text. See internal.h. */
#include "core/internal.h"

#include <string.h>

#define JV_MAX_DEPTH 500  /* cJSON refuses from 1000 */
#define JV_MAX_NUMBER 63  /* cJSON 1.7.15 reads a number through a 64-byte buffer */

typedef struct {
    const unsigned char *p, *end;
} jv;

static int jv_value(jv *v, int depth);

/* Whitespace as cJSON skips it: any byte from 1 to 32. */
static void jv_ws(jv *v) {
    while (v->p < v->end && *v->p >= 1 && *v->p <= 32) v->p++;
}

static int jv_word(jv *v, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(v->end - v->p) < n || memcmp(v->p, w, n) != 0) return 0;
    v->p += n;
    return 1;
}

static int jv_hex4(const unsigned char *p, unsigned *u) {
    *u = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        *u = *u << 4 | d;
    }
    return 1;
}

/* "\uXXXX" at v->p; a high surrogate must be followed by a low one, a low one alone is refused
 * (as cJSON's UTF-16 decoding does). */
static int jv_escape_u(jv *v) {
    unsigned u, lo;
    if (v->end - v->p < 6 || !jv_hex4(v->p + 2, &u)) return 0;
    v->p += 6;
    if (u >= 0xDC00 && u <= 0xDFFF) return 0;
    if (u < 0xD800 || u > 0xDBFF) return 1;
    if (v->end - v->p < 6 || v->p[0] != '\\' || v->p[1] != 'u' || !jv_hex4(v->p + 2, &lo) || lo < 0xDC00 ||
        lo > 0xDFFF)
        return 0;
    v->p += 6;
    return 1;
}

static int jv_string(jv *v) {
    if (v->p >= v->end || *v->p != '"') return 0;
    v->p++;
    while (v->p < v->end) {
        unsigned char c = *v->p;
        if (c == '"') {
            v->p++;
            return 1;
        }
        if (c == 0) return 0; /* cJSON takes other control bytes in strings as they are */
        if (c != '\\') {
            v->p++;
            continue;
        }
        if (v->end - v->p < 2) return 0;
        c = v->p[1];
        if (c == 'u') {
            if (!jv_escape_u(v)) return 0;
        } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't')
            v->p += 2;
        else
            return 0;
    }
    return 0;
}

static int jv_digits(jv *v) {
    const unsigned char *s = v->p;
    while (v->p < v->end && *v->p >= '0' && *v->p <= '9') v->p++;
    return v->p > s;
}

static int jv_number(jv *v) {
    const unsigned char *s = v->p;
    if (v->p < v->end && *v->p == '-') v->p++;
    if (v->p < v->end && *v->p == '0') v->p++;
    else if (!jv_digits(v)) return 0;
    if (v->p < v->end && *v->p == '.') {
        v->p++;
        if (!jv_digits(v)) return 0;
    }
    if (v->p < v->end && (*v->p == 'e' || *v->p == 'E')) {
        v->p++;
        if (v->p < v->end && (*v->p == '+' || *v->p == '-')) v->p++;
        if (!jv_digits(v)) return 0;
    }
    return v->p - s <= JV_MAX_NUMBER;
}

static int jv_array(jv *v, int depth) {
    v->p++;
    jv_ws(v);
    if (v->p < v->end && *v->p == ']') return v->p++, 1;
    for (;;) {
        if (!jv_value(v, depth + 1)) return 0;
        jv_ws(v);
        if (v->p >= v->end) return 0;
        if (*v->p == ']') return v->p++, 1;
        if (*v->p++ != ',') return 0;
        jv_ws(v);
    }
}

static int jv_object(jv *v, int depth) {
    v->p++;
    jv_ws(v);
    if (v->p < v->end && *v->p == '}') return v->p++, 1;
    for (;;) {
        if (!jv_string(v)) return 0;
        jv_ws(v);
        if (v->p >= v->end || *v->p++ != ':') return 0;
        jv_ws(v);
        if (!jv_value(v, depth + 1)) return 0;
        jv_ws(v);
        if (v->p >= v->end) return 0;
        if (*v->p == '}') return v->p++, 1;
        if (*v->p++ != ',') return 0;
        jv_ws(v);
    }
}

static int jv_value(jv *v, int depth) {
    if (v->p >= v->end || depth > JV_MAX_DEPTH) return 0;
    switch (*v->p) {
    case '{': return jv_object(v, depth);
    case '[': return jv_array(v, depth);
    case '"': return jv_string(v);
    case 'n': return jv_word(v, "null");
    case 't': return jv_word(v, "true");
    case 'f': return jv_word(v, "false");
    default: return (*v->p == '-' || (*v->p >= '0' && *v->p <= '9')) && jv_number(v);
    }
}

int tp_json_valid(const char *text, size_t len) {
    if (!text) return 0;
    jv v = {(const unsigned char *)text, (const unsigned char *)text + len};
    /* cJSON skips a BOM only when it can read index 4 (skip_utf8_bom: 0 + 4 < length): a text of
     * 3 or 4 bytes keeps it, and then fails to parse */
    if (len >= 5 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) v.p += 3;
    jv_ws(&v);
    return jv_value(&v, 0);
}
