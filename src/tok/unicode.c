/* UTF-8 decoding (with the ill-formed-subpart rule HF's lossy decoding follows), the GPT-2
 * byte <-> unicode map, and the character-class lookup over the generated tables.
 * The tables themselves live in unicode_tables.c. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

unsigned tp_uclass(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return TP_UC_L;
        if (cp >= '0' && cp <= '9') return TP_UC_N | TP_UC_NUM;
        if (cp == ' ' || (cp >= 9 && cp <= 13)) return TP_UC_WS;
        return 0;
    }
    size_t lo = 0, hi = tp_uni_n_ranges;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tp_uni_ranges[mid].lo) hi = mid;
        else if (cp > tp_uni_ranges[mid].hi) lo = mid + 1;
        else return tp_uni_ranges[mid].flags;
    }
    return 0;
}

size_t tp_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp, size_t *bad) {
    uint8_t b0 = s[0];
    if (b0 < 0x80) { *cp = b0; return 1; }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    uint32_t v;
    if (b0 >= 0xC2 && b0 <= 0xDF) { need = 1; v = b0 & 0x1F; }
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2; v = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3; v = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else { *bad = 1; return 0; }
    for (size_t i = 1; i <= need; i++) {
        uint8_t lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
        if (i >= n || s[i] < lo_i || s[i] > hi_i) { *bad = i; return 0; }
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return need + 1;
}

size_t tp_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int tp_utf8_valid(const char *s, size_t n) {
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) { i++; continue; }
        uint32_t cp;
        size_t bad, l = tp_utf8_decode(p + i, n - i, &cp, &bad);
        if (!l) return 0;
        i += l;
    }
    return 1;
}

tp_status tp_utf8_lossy(const char *s, size_t n, char **out, size_t *out_len) {
    /* Worst case: every byte becomes U+FFFD (3 bytes). */
    size_t cap;
    if (tp_mul_overflow(n, 3, &cap) || tp_add_overflow(cap, 1, &cap))
        return tp_fail(TP_ERR_NOMEM, "text of %zu bytes too large", n);
    char *o = malloc(cap);
    if (!o) return tp_fail(TP_ERR_NOMEM, "out of memory (%zu bytes) for UTF-8 repair", cap);
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0, k = 0;
    while (i < n) {
        uint32_t cp;
        size_t bad = 0, l = p[i] < 0x80 ? 1 : tp_utf8_decode(p + i, n - i, &cp, &bad);
        if (l) { memcpy(o + k, p + i, l); k += l; i += l; }
        else {
            o[k++] = (char)0xEF; o[k++] = (char)0xBF; o[k++] = (char)0xBD;
            i += bad;
        }
    }
    o[k] = 0;
    *out = o;
    *out_len = k;
    return TP_OK;
}

/* GPT-2's map: printable Latin-1 bytes stand for themselves; the other 68 bytes are
 * shifted, in byte order, to U+0100.. so every byte has a visible character. */
static int byte_is_visible(unsigned b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t tp_byte_to_cp(uint8_t b) {
    if (byte_is_visible(b)) return b;
    if (b <= 0x20) return 0x100 + b;                 /* 0x00..0x20 -> U+0100..U+0120 */
    if (b >= 0x7F && b <= 0xA0) return 0x121 + (b - 0x7F); /* -> U+0121..U+0142 */
    return 0x143;                                    /* 0xAD */
}

int tp_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_visible(cp) ? (int)cp : -1;
    if (cp <= 0x120) return (int)(cp - 0x100);
    if (cp <= 0x142) return (int)(0x7F + (cp - 0x121));
    if (cp == 0x143) return 0xAD;
    return -1;
}

int tp_is_punct(uint32_t cp) {
    if (cp < 0x80) return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
                          (cp >= 0x7B && cp <= 0x7E);
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS: case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF: case UTF8PROC_CATEGORY_PO:
        return 1;
    default:
        return 0;
    }
}
