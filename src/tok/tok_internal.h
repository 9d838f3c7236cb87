/* Internal structures of the tokenizer (src/tok/): the tokenizer struct, the hash maps behind
 * vocabulary and merge lookups, normalizer / pre-tokenizer / decoder steps, Unicode helpers and
 * the per-call encoding context. Nothing here is public API; see include/taper/tokenizer.h. */
#ifndef TAPER_TOK_INTERNAL_H
#define TAPER_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "taper/tokenizer.h"

/* ---- Unicode (unicode.c, unicode_tables.c) ---- */

/* Character classes as HF `tokenizers` sees them: \p{L}, \p{N} and \s of its regex engine
 * (Oniguruma) and Rust's char::is_numeric (the Digits pre-tokenizer). The tables are
 * generated from tokenizers itself (tests/ref/tok_ref.py --gen-unicode), so a newer Unicode
 * version there means regenerating, not editing. */
enum { TP_UC_L = 1, TP_UC_N = 2, TP_UC_WS = 4, TP_UC_NUM = 8 };
typedef struct { uint32_t lo, hi; uint32_t flags; } tp_urange;
extern const tp_urange tp_uni_ranges[];
extern const size_t tp_uni_n_ranges;
extern const char tp_uni_source[];   /* which tokenizers version the tables came from */

unsigned tp_uclass(uint32_t cp);
/* Length of the valid UTF-8 character at s[0..n) (1..4) with *cp set, or 0 if the bytes there
 * are not valid UTF-8; then *bad is the length of the maximal ill-formed subpart (>= 1), the
 * unit that becomes one U+FFFD (as Rust's from_utf8_lossy and Python's errors="replace"). */
size_t tp_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp, size_t *bad);
size_t tp_utf8_encode(uint32_t cp, char out[4]);
/* 1 if s[0..n) is valid UTF-8. */
int tp_utf8_valid(const char *s, size_t n);
/* Copy of s with every ill-formed subpart replaced by U+FFFD (malloc'd, NUL-terminated). */
tp_status tp_utf8_lossy(const char *s, size_t n, char **out, size_t *out_len);

/* HF's Punctuation pre-tokenizer test: ASCII punctuation or Unicode category P* (utf8proc). */
int tp_is_punct(uint32_t cp);

/* GPT-2 byte <-> unicode map used by the ByteLevel pre-tokenizer and decoder. */
uint32_t tp_byte_to_cp(uint8_t b);
int tp_cp_to_byte(uint32_t cp); /* -1 if cp is not the image of a byte */

/* ---- hash maps (maps.c) ---- */

/* Maps byte strings (not owned; they must outlive the map) to int32 ids. */
typedef struct {
    const char **keys;
    uint32_t *lens;
    int32_t *vals;
    size_t cap, n; /* cap is a power of two, load <= 1/2 */
} tp_strmap;
tp_status tp_strmap_init(tp_strmap *m, size_t expected);
void tp_strmap_free(tp_strmap *m);
/* Returns 1 if inserted, 0 if the key was present (value left alone), -1 on OOM. */
int tp_strmap_put(tp_strmap *m, const char *key, size_t len, int32_t val);
int32_t tp_strmap_get(const tp_strmap *m, const char *key, size_t len); /* -1 if absent */

/* Maps a pair of ids to (rank, merged id). */
typedef struct {
    uint64_t *keys; /* (a << 32 | b) + 1; 0 = empty */
    int32_t *rank, *merged;
    size_t cap, n;
} tp_pairmap;
tp_status tp_pairmap_init(tp_pairmap *m, size_t expected);
void tp_pairmap_free(tp_pairmap *m);
/* Inserts or overwrites (HF keeps the last duplicate merge's rank). Returns 1 if new, 0 if
 * overwritten, -1 on OOM. */
int tp_pairmap_put(tp_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
int tp_pairmap_get(const tp_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);

uint64_t tp_hash_bytes(const void *p, size_t n);

/* ---- pre-tokenizer (pretok.c) ---- */

typedef enum { TP_PRE_SPLIT, TP_PRE_DIGITS, TP_PRE_BYTELEVEL, TP_PRE_METASPACE, TP_PRE_PUNCT } tp_pre_kind;
typedef enum { TP_PREPEND_ALWAYS, TP_PREPEND_NEVER, TP_PREPEND_FIRST } tp_prepend_scheme;
typedef enum {
    TP_SPLIT_REMOVED, TP_SPLIT_ISOLATED, TP_SPLIT_MERGED_PREV, TP_SPLIT_MERGED_NEXT,
    TP_SPLIT_CONTIGUOUS
} tp_split_behavior;
/* Regexes recognised by their exact text and run by hand-written matchers that use the
 * tables above (exact to HF and fast); any other regex runs on PCRE2. */
typedef enum { TP_RE_NONE = 0, TP_RE_GPT2, TP_RE_LLAMA3, TP_RE_QWEN2 } tp_re_builtin;

extern const char tp_re_gpt2[], tp_re_llama3[], tp_re_qwen2[];

typedef struct {
    tp_pre_kind kind;
    /* SPLIT */
    char *pattern;          /* regex or literal text, NUL-terminated */
    size_t pattern_len;
    int is_regex;
    tp_re_builtin builtin;
    pcre2_code *re;         /* when is_regex and not builtin */
    tp_split_behavior behavior;
    int invert;
    /* DIGITS */
    int individual_digits;
    /* BYTELEVEL */
    int add_prefix_space, trim_offsets, use_regex;
    /* METASPACE: replacement character (UTF-8), prepend scheme, split on it (MergedWithNext) */
    char replacement[8];
    size_t replacement_len;
    tp_prepend_scheme prepend_scheme;
    int split;
    /* PUNCT uses `behavior` */
} tp_pre_step;

/* Compiles step->pattern when needed; errors name `where`. */
tp_status tp_pre_step_prepare(tp_pre_step *st, const char *where);
void tp_pre_step_clear(tp_pre_step *st);
const char *tp_split_behavior_name(tp_split_behavior b);
int tp_split_behavior_parse(const char *s, tp_split_behavior *out);
/* Length of the builtin regex's match at s[pos] (>= 1 for pos < n; every builtin matches at
 * every position). */
size_t tp_re_builtin_match(tp_re_builtin which, const uint8_t *s, size_t n, size_t pos);

/* ---- normalizers (normalize.c) ---- */

typedef enum {
    TP_NORM_NFC, TP_NORM_NFD, TP_NORM_NFKC, TP_NORM_NFKD, TP_NORM_PREPEND, TP_NORM_REPLACE,
    TP_NORM_LOWERCASE, TP_NORM_STRIP
} tp_norm_kind;

typedef struct {
    tp_norm_kind kind;
    char *a; size_t la;  /* PREPEND: the text; REPLACE: the pattern (a literal string) */
    char *b; size_t lb;  /* REPLACE: the content */
    int left, right;     /* STRIP */
} tp_norm_step;

const char *tp_norm_name(tp_norm_kind k);
void tp_norm_step_clear(tp_norm_step *st);
/* Runs the tokenizer's normalizer steps on s[0..n) (valid UTF-8) into a malloc'd,
 * NUL-terminated *out. */
tp_status tp_normalize(const tp_tokenizer *t, const uint8_t *s, size_t n, char **out, size_t *out_len);

/* ---- decoders (tokenizer.c) ---- */

typedef enum {
    TP_DS_REPLACE, TP_DS_BYTEFALLBACK, TP_DS_FUSE, TP_DS_STRIP, TP_DS_METASPACE, TP_DS_BYTELEVEL
} tp_dec_kind;

typedef struct {
    tp_dec_kind kind;
    char *a; size_t la;  /* REPLACE pattern; STRIP / METASPACE: the character (UTF-8) */
    char *b; size_t lb;  /* REPLACE content */
    int start, stop;     /* STRIP */
    tp_prepend_scheme prepend_scheme; /* METASPACE */
} tp_dec_step;

/* ---- the tokenizer ---- */

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} tp_added_token;

enum { TP_DEC_NONE = 0, TP_DEC_BYTELEVEL = 1, TP_DEC_CHAIN = 2 };
/* How the model turns a pre-token into ids: HF BPE (merge ranks; byte-level or on raw UTF-8
 * characters with byte fallback), or llama.cpp's SentencePiece-style BPE (highest piece score). */
enum { TP_MODEL_BPE = 0, TP_MODEL_SPM = 1 };

struct tp_tokenizer {
    int n_vocab;            /* max id + 1 over model vocab and added tokens */
    int n_model;            /* model vocab: ids 0..n_model-1, dense */
    char **piece;           /* [n_vocab] NUL-terminated; model piece or added content; NULL = hole */
    uint32_t *piece_len;    /* [n_vocab] */
    uint8_t *special;       /* [n_vocab] 1 for special added tokens */
    uint8_t *is_added;      /* [n_vocab] */
    char *mem;              /* storage of all model pieces */
    tp_strmap vocab;        /* model piece -> id */

    tp_pairmap merges;
    int32_t *merge_pairs;   /* [2 * n_merges] in rank order (for saving) */
    int n_merges;
    int32_t byte_id[256];   /* model id of each byte's byte-level character, -1 if absent */

    tp_added_token *added;  /* in tokenizer.json order */
    int n_added;
    int has_normalized_added;

    tp_pre_step *steps;
    int n_steps;

    int ignore_merges, fuse_unk;
    int32_t model_unk;      /* BPE unk_token id, -1 if none (absent bytes are then dropped) */
    char *model_unk_token;
    int decoder;
    tp_dec_step *dsteps;    /* TP_DEC_CHAIN: the HF decoder Sequence */
    int n_dsteps;

    int model_kind;         /* TP_MODEL_BPE or TP_MODEL_SPM */
    int byte_level;         /* 1: GPT-2 byte-level BPE (one ByteLevel pre-tokenizer step) */
    int byte_fallback;      /* unknown characters become <0xNN> tokens */
    int32_t byte_tok[256];  /* id of "<0xNN>" in the model vocabulary, -1 if absent */
    float *scores;          /* [n_model] SPM piece scores (GGUF tokenizer.ggml.scores) */
    int nl_whole;           /* llama.cpp gemma4: a word of newlines in the vocabulary is one token */
    int add_space_prefix;   /* GGUF SPM: tokenizer.ggml.add_space_prefix (for saving / display) */
    char model_name[16];    /* GGUF tokenizer.ggml.model it came from ("gpt2", "llama", "gemma4"); "" from JSON */
    int32_t *gguf_type;     /* [n_vocab] GGUF token types as loaded (NULL from tokenizer.json) */

    tp_norm_step *norm;     /* normalizer steps in order (a Sequence flattened) */
    int n_norm;

    int32_t *prefix, *suffix; /* post-processor for one sequence (add_special) */
    int n_prefix, n_suffix;

    int32_t bos, eos, unk, pad; /* metadata ids, -1 if none */
    char pre_name[32];
};

tp_status tp_tok_alloc_vocab(tp_tokenizer *t, int n_model, int n_vocab);
/* Finishes loading: byte table, checks, pre name. `src` names the source in errors. */
tp_status tp_tok_finish(tp_tokenizer *t, const char *src);
tp_status tp_tok_add_merge(tp_tokenizer *t, const char *a, size_t la, const char *b, size_t lb,
                           const char *src, int rank);
tp_status tp_tok_set_pre_named(tp_tokenizer *t, const char *name, const char *src);
const char *tp_tok_infer_pre_name(const tp_tokenizer *t);

/* ---- encoding internals (bpe.c, pretok.c) ---- */

#define TP_MAX_PRE_STEPS 16

typedef struct { size_t a, b; int m; } tp_span;
typedef struct { tp_span *v; size_t n, cap; } tp_spanvec;
typedef struct { int32_t id, prev, next; } tp_bpe_sym;    /* id -1 = merged away */
typedef struct { int32_t rank, pos, merged; } tp_bpe_cand; /* heap entry */

typedef struct {
    uint64_t *hash;       /* 0 = empty slot */
    uint32_t *key_off, *key_len, *ids_off, *ids_n;
    size_t cap, n;
    uint8_t *keys; size_t keys_n, keys_cap;
    int32_t *ids; size_t ids_n_used, ids_cap;
} tp_word_cache;

/* Scratch state of one encode call (never shared between threads). */
typedef struct tp_enc_ctx {
    const tp_tokenizer *t;
    int32_t *ids; size_t n_ids, cap_ids;             /* output */
    tp_spanvec lv[TP_MAX_PRE_STEPS + 1];             /* split results per pre-tokenizer level */
    char *pbuf[TP_MAX_PRE_STEPS]; size_t pbuf_cap[TP_MAX_PRE_STEPS]; /* prefix-space copies */
    pcre2_match_data *md;
    tp_bpe_sym *syms; size_t syms_cap;
    tp_bpe_cand *heap; size_t heap_cap;
    char *bl; size_t bl_cap;                          /* byte-level form of a word */
    char *mbuf[TP_MAX_PRE_STEPS]; size_t mbuf_cap[TP_MAX_PRE_STEPS]; /* byte-level mapped pieces */
    char *ubuf; size_t ubuf_cap;                      /* a mapped piece mapped back to bytes */
    int mapped;                                       /* pieces below this level are byte-level mapped */
    tp_word_cache cache;
} tp_enc_ctx;

tp_enc_ctx *tp_enc_ctx_new(const tp_tokenizer *t);
void tp_enc_ctx_free(tp_enc_ctx *c);
/* Appends the ids of one pre-token (raw bytes, before the byte-level map). */
tp_status tp_bpe_word(tp_enc_ctx *c, const uint8_t *w, size_t n);
tp_status tp_enc_push(tp_enc_ctx *c, int32_t id);
/* Runs the pre-tokenizer steps from step k on s[0..n) and the model on every resulting piece.
 * first: the piece starts at offset 0 of the original text (Metaspace prepend_scheme "first"). */
tp_status tp_pretok_run(tp_enc_ctx *c, int k, const uint8_t *s, size_t n, int first);
/* SentencePiece-style BPE (llama.cpp's SPM) on one normalized piece (spm.c). */
tp_status tp_spm_word(tp_enc_ctx *c, const uint8_t *w, size_t n);
/* Looks up "<0xNN>" for every byte (byte_tok) and whether the model has all 256. */
void tp_tok_find_byte_tokens(tp_tokenizer *t);
/* Byte-level form of w[0..n) into c->bl (NUL-terminated); returns its length or (size_t)-1. */
size_t tp_bytelevel_form(tp_enc_ctx *c, const uint8_t *w, size_t n);

#endif
