/* tokenizer.json (HF `tokenizers` serialisation) in and out: the BPE model (byte_fallback,
 * ignore_merges, unk), added tokens, normalizer (NFC/NFD/NFKC/NFKD, Prepend, Replace of a string,
 * Lowercase, Strip, Sequence), pre-tokenizer (Sequence of Split / Digits / ByteLevel /
 * Metaspace / Punctuation, or none), post-processor (TemplateProcessing, Roberta/Bert,
 * ByteLevel, Sequence) and decoder (ByteLevel, or a Sequence of Replace / ByteFallback / Fuse /
 * Strip / Metaspace); plus
 * tokenizer_config.json beside it for the bos/eos/unk/pad identities, and the HF folder files
 * written by tp_tok_save_hf. Anything outside that family is refused with TP_ERR_UNSUPPORTED
 * rather than tokenized differently. */
#include "tok_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "taper/util.h"
#include "core/internal.h"

static int json_int(const cJSON *x, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(x)) return 0;
    double d = x->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) return 0;
    *out = (int64_t)d;
    return 1;
}

/* Optional boolean field: absent or null gives def; anything else but a bool is an error. */
static tp_status json_bool(const cJSON *o, const char *key, int def, int *out, const char *src, const char *where) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!x || cJSON_IsNull(x)) { *out = def; return TP_OK; }
    if (!cJSON_IsBool(x)) return tp_fail(TP_ERR_FORMAT, "%s: %s.%s: expected true or false", src, where, key);
    *out = cJSON_IsTrue(x);
    return TP_OK;
}

static const char *json_type(const cJSON *o) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* ---- model ---- */

static tp_status load_vocab(tp_tokenizer *t, const cJSON *vocab, const cJSON *added, const char *src) {
    if (!cJSON_IsObject(vocab)) return tp_fail(TP_ERR_FORMAT, "%s: model.vocab: missing or not an object", src);
    int n = cJSON_GetArraySize(vocab);
    if (n <= 0) return tp_fail(TP_ERR_FORMAT, "%s: model.vocab is empty", src);
    if (n > (1 << 24)) return tp_fail(TP_ERR_UNSUPPORTED, "%s: model.vocab has %d entries (limit 16M)", src, n);
    int n_vocab = n;
    const cJSON *a;
    cJSON_ArrayForEach(a, added) {
        int64_t id;
        if (!json_int(cJSON_GetObjectItemCaseSensitive(a, "id"), 0, (1 << 24) - 1, &id))
            return tp_fail(TP_ERR_FORMAT, "%s: added_tokens: an entry has a missing or out-of-range \"id\"", src);
        if (id + 1 > n_vocab) n_vocab = (int)id + 1;
    }
    tp_status rc = tp_tok_alloc_vocab(t, n, n_vocab);
    if (rc) return rc;
    size_t total = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) total += strlen(e->string) + 1;
    t->mem = malloc(total ? total : 1);
    if (!t->mem) return tp_fail(TP_ERR_NOMEM, "out of memory for the vocabulary");
    size_t off = 0;
    cJSON_ArrayForEach(e, vocab) {
        int64_t id;
        if (!json_int(e, INT32_MIN, INT32_MAX, &id))
            return tp_fail(TP_ERR_FORMAT, "%s: model.vocab[\"%.64s\"]: id is not an integer", src, e->string);
        if (id < 0 || id >= n)
            return tp_fail(TP_ERR_FORMAT, "%s: model.vocab[\"%.64s\"]: id %lld out of range 0..%d (ids must be dense)",
                           src, e->string, (long long)id, n - 1);
        if (t->piece[id])
            return tp_fail(TP_ERR_FORMAT, "%s: model.vocab: id %lld is given to both \"%.64s\" and \"%.64s\"", src,
                           (long long)id, t->piece[id], e->string);
        size_t l = strlen(e->string);
        memcpy(t->mem + off, e->string, l + 1);
        t->piece[id] = t->mem + off;
        t->piece_len[id] = (uint32_t)l;
        off += l + 1;
        int r = tp_strmap_put(&t->vocab, t->piece[id], l, (int32_t)id);
        if (r < 0) return tp_fail(TP_ERR_NOMEM, "out of memory for the vocabulary");
        if (r == 0) return tp_fail(TP_ERR_FORMAT, "%s: model.vocab: token \"%.64s\" appears twice", src, e->string);
    }
    return TP_OK;
}

static tp_status load_added(tp_tokenizer *t, const cJSON *added, const char *src) {
    if (!added || cJSON_IsNull(added)) return TP_OK;
    if (!cJSON_IsArray(added)) return tp_fail(TP_ERR_FORMAT, "%s: added_tokens: not an array", src);
    int n = cJSON_GetArraySize(added);
    t->added = calloc((size_t)(n ? n : 1), sizeof *t->added);
    if (!t->added) return tp_fail(TP_ERR_NOMEM, "out of memory");
    const cJSON *a;
    cJSON_ArrayForEach(a, added) {
        int64_t id = -1;
        json_int(cJSON_GetObjectItemCaseSensitive(a, "id"), 0, t->n_vocab - 1, &id);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsString(c) || !c->valuestring[0])
            return tp_fail(TP_ERR_FORMAT, "%s: added_tokens (id %lld): missing or empty \"content\"", src, (long long)id);
        tp_added_token *at = &t->added[t->n_added];
        int v[5];
        static const char *flags[] = {"special", "lstrip", "rstrip", "single_word", "normalized"};
        for (int i = 0; i < 5; i++) {
            tp_status rc = json_bool(a, flags[i], i == 4 ? -1 : 0, &v[i], src, "added_tokens[]");
            if (rc) return rc;
        }
        if (v[4] < 0) v[4] = !v[0]; /* HF's default: special tokens are not normalized */
        at->content = strdup(c->valuestring);
        if (!at->content) return tp_fail(TP_ERR_NOMEM, "out of memory");
        at->len = strlen(at->content);
        at->id = (int32_t)id;
        at->special = (uint8_t)v[0];
        at->lstrip = (uint8_t)v[1];
        at->rstrip = (uint8_t)v[2];
        at->single_word = (uint8_t)v[3];
        at->normalized = (uint8_t)v[4];
        t->n_added++;
        int32_t in_vocab = tp_strmap_get(&t->vocab, at->content, at->len);
        if (in_vocab >= 0 && in_vocab != id)
            return tp_fail(TP_ERR_FORMAT, "%s: added_tokens: \"%.64s\" has id %lld but the vocabulary gives it %d", src,
                           at->content, (long long)id, (int)in_vocab);
        if (in_vocab < 0 && id < t->n_model)
            return tp_fail(TP_ERR_FORMAT, "%s: added_tokens: \"%.64s\" has id %lld, which the vocabulary gives to \"%.64s\"",
                           src, at->content, (long long)id, t->piece[id]);
        if (t->is_added[id])
            return tp_fail(TP_ERR_FORMAT, "%s: added_tokens: id %lld appears twice", src, (long long)id);
        t->is_added[id] = 1;
        t->special[id] = at->special;
        if (in_vocab < 0) {
            t->piece[id] = at->content;
            t->piece_len[id] = (uint32_t)at->len;
        }
    }
    return TP_OK;
}

static tp_status load_merges(tp_tokenizer *t, const cJSON *merges, const char *src) {
    if (!merges || cJSON_IsNull(merges)) merges = NULL;
    else if (!cJSON_IsArray(merges)) return tp_fail(TP_ERR_FORMAT, "%s: model.merges: not an array", src);
    int n = merges ? cJSON_GetArraySize(merges) : 0;
    t->merge_pairs = malloc((size_t)(n ? n : 1) * 2 * sizeof *t->merge_pairs);
    if (!t->merge_pairs) return tp_fail(TP_ERR_NOMEM, "out of memory for %d merges", n);
    tp_status rc = tp_pairmap_init(&t->merges, (size_t)n);
    if (rc) return rc;
    t->n_merges = n;
    int rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(m)) {
            const char *s = m->valuestring, *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ') || sp == s || !sp[1])
                return tp_fail(TP_ERR_FORMAT, "%s: model.merges[%d]: \"%.64s\" is not two tokens separated by one space",
                               src, rank, s);
            a = s; la = (size_t)(sp - s); b = sp + 1; lb = strlen(b);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            a = cJSON_GetArrayItem(m, 0)->valuestring; la = strlen(a);
            b = cJSON_GetArrayItem(m, 1)->valuestring; lb = strlen(b);
        } else
            return tp_fail(TP_ERR_FORMAT, "%s: model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", src, rank);
        if ((rc = tp_tok_add_merge(t, a, la, b, lb, src, rank))) return rc;
        rank++;
    }
    return TP_OK;
}

static tp_status load_model(tp_tokenizer *t, const cJSON *model, const char *src) {
    const char *type = json_type(model);
    if (type && strcmp(type, "BPE") != 0)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: model.type \"%s\" is not supported (only BPE)", src, type);
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (x && !cJSON_IsNull(x) && !(cJSON_IsNumber(x) && x->valuedouble == 0.0))
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: model.dropout: BPE dropout is not supported", src);
    static const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        x = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (x && !cJSON_IsNull(x) && !(cJSON_IsString(x) && !x->valuestring[0]))
            return tp_fail(TP_ERR_UNSUPPORTED, "%s: model.%s is not supported", src, affixes[i]);
    }
    int byte_fallback;
    tp_status rc;
    if ((rc = json_bool(model, "byte_fallback", 0, &byte_fallback, src, "model"))) return rc;
    t->byte_fallback = byte_fallback;
    if ((rc = json_bool(model, "fuse_unk", 0, &t->fuse_unk, src, "model"))) return rc;
    if ((rc = json_bool(model, "ignore_merges", 0, &t->ignore_merges, src, "model"))) return rc;
    t->model_unk = -1;
    x = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (x && !cJSON_IsNull(x)) {
        if (!cJSON_IsString(x)) return tp_fail(TP_ERR_FORMAT, "%s: model.unk_token: not a string", src);
        t->model_unk = tp_strmap_get(&t->vocab, x->valuestring, strlen(x->valuestring));
        if (t->model_unk < 0)
            return tp_fail(TP_ERR_FORMAT, "%s: model.unk_token \"%.64s\" is not in the vocabulary", src, x->valuestring);
        t->model_unk_token = strdup(x->valuestring);
        if (!t->model_unk_token) return tp_fail(TP_ERR_NOMEM, "out of memory");
    }
    return load_merges(t, cJSON_GetObjectItemCaseSensitive(model, "merges"), src);
}

/* ---- pipeline components ---- */

/* Metaspace's replacement (one character) and prepend scheme ("first"/"always"/"never", or the
 * older add_prefix_space flag), shared by the pre-tokenizer and the decoder. */
static tp_status parse_metaspace(const cJSON *p, const char *src, const char *where, char rep[8], size_t *rep_len,
                                 tp_prepend_scheme *scheme) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "replacement");
    const char *rs = cJSON_IsString(r) ? r->valuestring : NULL;
    uint32_t cp;
    size_t bad, l = rs && rs[0] ? tp_utf8_decode((const uint8_t *)rs, strlen(rs), &cp, &bad) : 0;
    if (!l || rs[l] != 0) return tp_fail(TP_ERR_FORMAT, "%s: %s: \"replacement\" must be one character", src, where);
    memcpy(rep, rs, l);
    rep[l] = 0;
    *rep_len = l;
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(p, "prepend_scheme");
    if (cJSON_IsString(ps)) {
        if (strcmp(ps->valuestring, "first") == 0) *scheme = TP_PREPEND_FIRST;
        else if (strcmp(ps->valuestring, "always") == 0) *scheme = TP_PREPEND_ALWAYS;
        else if (strcmp(ps->valuestring, "never") == 0) *scheme = TP_PREPEND_NEVER;
        else return tp_fail(TP_ERR_FORMAT, "%s: %s: unknown prepend_scheme \"%.32s\"", src, where, ps->valuestring);
        return TP_OK;
    }
    if (ps && !cJSON_IsNull(ps)) return tp_fail(TP_ERR_FORMAT, "%s: %s: prepend_scheme is not a string", src, where);
    int add;
    tp_status rc = json_bool(p, "add_prefix_space", 1, &add, src, where);
    *scheme = add ? TP_PREPEND_ALWAYS : TP_PREPEND_NEVER;
    return rc;
}

static tp_status parse_pre(tp_tokenizer *t, const cJSON *p, const char *src, int depth) {
    const char *type = json_type(p);
    if (!type) return tp_fail(TP_ERR_FORMAT, "%s: pre_tokenizer: missing \"type\"", src);
    tp_status rc;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *e;
        if (!cJSON_IsArray(list)) return tp_fail(TP_ERR_FORMAT, "%s: pre_tokenizer Sequence: missing \"pretokenizers\"", src);
        if (depth > 4) return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre_tokenizer: Sequences nested too deep", src);
        cJSON_ArrayForEach(e, list) if ((rc = parse_pre(t, e, src, depth + 1))) return rc;
        return TP_OK;
    }
    if (t->n_steps >= TP_MAX_PRE_STEPS)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre_tokenizer: more than %d steps", src, TP_MAX_PRE_STEPS);
    tp_pre_step st = {0};
    if (strcmp(type, "ByteLevel") == 0) {
        st.kind = TP_PRE_BYTELEVEL;
        if ((rc = json_bool(p, "add_prefix_space", 1, &st.add_prefix_space, src, "pre_tokenizer ByteLevel")) ||
            (rc = json_bool(p, "trim_offsets", 1, &st.trim_offsets, src, "pre_tokenizer ByteLevel")) ||
            (rc = json_bool(p, "use_regex", 1, &st.use_regex, src, "pre_tokenizer ByteLevel")))
            return rc;
    } else if (strcmp(type, "Digits") == 0) {
        st.kind = TP_PRE_DIGITS;
        if ((rc = json_bool(p, "individual_digits", 0, &st.individual_digits, src, "pre_tokenizer Digits"))) return rc;
    } else if (strcmp(type, "Split") == 0) {
        st.kind = TP_PRE_SPLIT;
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern"), *v;
        if ((v = cJSON_GetObjectItemCaseSensitive(pat, "Regex")) && cJSON_IsString(v)) st.is_regex = 1;
        else if (!((v = cJSON_GetObjectItemCaseSensitive(pat, "String")) && cJSON_IsString(v)))
            return tp_fail(TP_ERR_FORMAT, "%s: pre_tokenizer Split: \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}", src);
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        if (!cJSON_IsString(beh) || !tp_split_behavior_parse(beh->valuestring, &st.behavior))
            return tp_fail(TP_ERR_FORMAT, "%s: pre_tokenizer Split: unknown \"behavior\"", src);
        if ((rc = json_bool(p, "invert", 0, &st.invert, src, "pre_tokenizer Split"))) return rc;
        st.pattern = strdup(v->valuestring);
        if (!st.pattern) return tp_fail(TP_ERR_NOMEM, "out of memory");
        st.pattern_len = strlen(st.pattern);
        char where[600];
        snprintf(where, sizeof where, "%s: pre_tokenizer Split", src);
        if ((rc = tp_pre_step_prepare(&st, where))) { tp_pre_step_clear(&st); return rc; }
    } else if (strcmp(type, "Metaspace") == 0) {
        st.kind = TP_PRE_METASPACE;
        if ((rc = parse_metaspace(p, src, "pre_tokenizer Metaspace", st.replacement, &st.replacement_len,
                                  &st.prepend_scheme)))
            return rc;
        if ((rc = json_bool(p, "split", 1, &st.split, src, "pre_tokenizer Metaspace"))) return rc;
    } else if (strcmp(type, "Punctuation") == 0) {
        st.kind = TP_PRE_PUNCT;
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        st.behavior = TP_SPLIT_ISOLATED;
        if (beh && !cJSON_IsNull(beh) && (!cJSON_IsString(beh) || !tp_split_behavior_parse(beh->valuestring, &st.behavior)))
            return tp_fail(TP_ERR_FORMAT, "%s: pre_tokenizer Punctuation: unknown \"behavior\"", src);
    } else
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: pre_tokenizer type \"%s\" is not supported (ByteLevel, Digits, "
                       "Split, Metaspace, Punctuation, Sequence)", src, type);
    tp_pre_step *q = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *q);
    if (!q) { tp_pre_step_clear(&st); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    t->steps = q;
    t->steps[t->n_steps++] = st;
    return TP_OK;
}

static tp_status push_ids(int32_t **v, int *n, const int32_t *ids, int k) {
    int32_t *p = realloc(*v, (size_t)(*n + k + 1) * sizeof *p);
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    memcpy(p + *n, ids, (size_t)k * sizeof *ids);
    *v = p;
    *n += k;
    return TP_OK;
}

static tp_status parse_template(tp_tokenizer *t, const cJSON *p, const char *src) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single"), *e;
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
    if (!cJSON_IsArray(single)) return tp_fail(TP_ERR_FORMAT, "%s: post_processor TemplateProcessing: missing \"single\"", src);
    int seen_seq = 0;
    tp_status rc;
    cJSON_ArrayForEach(e, single) {
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        if (seq) {
            if (seen_seq++)
                return tp_fail(TP_ERR_UNSUPPORTED, "%s: post_processor: a single template with two sequences", src);
            continue;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(sp, "id");
        if (!cJSON_IsString(name)) return tp_fail(TP_ERR_FORMAT, "%s: post_processor: template item is neither Sequence nor SpecialToken", src);
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(specials, name->valuestring);
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids"), *x;
        if (!cJSON_IsArray(ids))
            return tp_fail(TP_ERR_FORMAT, "%s: post_processor: special token \"%.64s\" has no ids in special_tokens", src,
                           name->valuestring);
        cJSON_ArrayForEach(x, ids) {
            int64_t id;
            if (!json_int(x, 0, t->n_vocab - 1, &id))
                return tp_fail(TP_ERR_FORMAT, "%s: post_processor: special token \"%.64s\": id out of range", src,
                               name->valuestring);
            int32_t v = (int32_t)id;
            rc = seen_seq ? push_ids(&t->suffix, &t->n_suffix, &v, 1) : push_ids(&t->prefix, &t->n_prefix, &v, 1);
            if (rc) return rc;
        }
    }
    if (!seen_seq) return tp_fail(TP_ERR_FORMAT, "%s: post_processor: single template has no Sequence", src);
    return TP_OK;
}

static tp_status parse_post(tp_tokenizer *t, const cJSON *p, const char *src, int depth) {
    if (!p || cJSON_IsNull(p)) return TP_OK;
    const char *type = json_type(p);
    if (!type) return tp_fail(TP_ERR_FORMAT, "%s: post_processor: missing \"type\"", src);
    if (strcmp(type, "ByteLevel") == 0) return TP_OK; /* offsets only */
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors"), *e;
        if (!cJSON_IsArray(list)) return tp_fail(TP_ERR_FORMAT, "%s: post_processor Sequence: missing \"processors\"", src);
        tp_status rc;
        cJSON_ArrayForEach(e, list) if ((rc = parse_post(t, e, src, depth + 1))) return rc;
        return TP_OK;
    }
    if (t->n_prefix || t->n_suffix)
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: post_processor: more than one processor adds special tokens", src);
    if (strcmp(type, "TemplateProcessing") == 0) return parse_template(t, p, src);
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(p, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(p, "sep");
        int64_t a, b;
        if (!cJSON_IsArray(cls) || !cJSON_IsArray(sep) || !json_int(cJSON_GetArrayItem(cls, 1), 0, t->n_vocab - 1, &a) ||
            !json_int(cJSON_GetArrayItem(sep, 1), 0, t->n_vocab - 1, &b))
            return tp_fail(TP_ERR_FORMAT, "%s: post_processor %s: bad \"cls\" / \"sep\"", src, type);
        int32_t x = (int32_t)a, y = (int32_t)b;
        tp_status rc = push_ids(&t->prefix, &t->n_prefix, &x, 1);
        return rc ? rc : push_ids(&t->suffix, &t->n_suffix, &y, 1);
    }
    return tp_fail(TP_ERR_UNSUPPORTED, "%s: post_processor type \"%s\" is not supported", src, type);
}

static tp_status json_str(const cJSON *o, const char *key, const char *src, const char *where, const char **out) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(x)) return tp_fail(TP_ERR_FORMAT, "%s: %s: \"%s\" missing or not a string", src, where, key);
    *out = x->valuestring;
    return TP_OK;
}

/* {"String": s} of a Replace normalizer or decoder; a Regex pattern is refused. */
static tp_status replace_pattern(const cJSON *o, const char *src, const char *where, const char **pat) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern"), *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(p, "String")) && cJSON_IsString(v) && v->valuestring[0]) {
        *pat = v->valuestring;
        return TP_OK;
    }
    if (cJSON_GetObjectItemCaseSensitive(p, "Regex"))
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: %s: a Regex pattern is not supported (only String)", src, where);
    return tp_fail(TP_ERR_FORMAT, "%s: %s: \"pattern\" must be {\"String\": non-empty text}", src, where);
}

static tp_status push_dec(tp_tokenizer *t, tp_dec_step d) {
    tp_dec_step *p = realloc(t->dsteps, (size_t)(t->n_dsteps + 1) * sizeof *p);
    if (!p) { free(d.a); free(d.b); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    t->dsteps = p;
    t->dsteps[t->n_dsteps++] = d;
    return TP_OK;
}

static tp_status dup_field(char **dst, size_t *len, const char *s) {
    *dst = strdup(s);
    if (!*dst) return tp_fail(TP_ERR_NOMEM, "out of memory");
    *len = strlen(s);
    return TP_OK;
}

static tp_status parse_dec_step(tp_tokenizer *t, const cJSON *d, const char *src) {
    const char *type = json_type(d);
    tp_dec_step st = {0};
    tp_status rc;
    const char *x = NULL;
    if (!type) return tp_fail(TP_ERR_FORMAT, "%s: decoder: missing \"type\"", src);
    if (strcmp(type, "ByteFallback") == 0) st.kind = TP_DS_BYTEFALLBACK;
    else if (strcmp(type, "Fuse") == 0) st.kind = TP_DS_FUSE;
    else if (strcmp(type, "Replace") == 0) {
        st.kind = TP_DS_REPLACE;
        if ((rc = replace_pattern(d, src, "decoder Replace", &x)) || (rc = dup_field(&st.a, &st.la, x))) return rc;
        if ((rc = json_str(d, "content", src, "decoder Replace", &x)) || (rc = dup_field(&st.b, &st.lb, x))) {
            free(st.a);
            return rc;
        }
    } else if (strcmp(type, "Strip") == 0) {
        st.kind = TP_DS_STRIP;
        int64_t a, b;
        if ((rc = json_str(d, "content", src, "decoder Strip", &x))) return rc;
        uint32_t cp;
        size_t bad, l = x[0] ? tp_utf8_decode((const uint8_t *)x, strlen(x), &cp, &bad) : 0;
        if (!l || x[l]) return tp_fail(TP_ERR_FORMAT, "%s: decoder Strip: \"content\" must be one character", src);
        if (!json_int(cJSON_GetObjectItemCaseSensitive(d, "start"), 0, 1 << 20, &a) ||
            !json_int(cJSON_GetObjectItemCaseSensitive(d, "stop"), 0, 1 << 20, &b))
            return tp_fail(TP_ERR_FORMAT, "%s: decoder Strip: \"start\" / \"stop\" must be integers >= 0", src);
        st.start = (int)a;
        st.stop = (int)b;
        if ((rc = dup_field(&st.a, &st.la, x))) return rc;
    } else if (strcmp(type, "Metaspace") == 0) {
        st.kind = TP_DS_METASPACE;
        char rep[8];
        size_t rl;
        if ((rc = parse_metaspace(d, src, "decoder Metaspace", rep, &rl, &st.prepend_scheme)) ||
            (rc = dup_field(&st.a, &st.la, rep)))
            return rc;
    } else
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: decoder type \"%s\" is not supported (ByteLevel alone, or Replace, "
                       "ByteFallback, Fuse, Strip, Metaspace)", src, type);
    return push_dec(t, st);
}

static tp_status parse_decoder(tp_tokenizer *t, const cJSON *d, const char *src) {
    if (!d || cJSON_IsNull(d)) { t->decoder = TP_DEC_NONE; return TP_OK; }
    const char *type = json_type(d);
    if (type && strcmp(type, "ByteLevel") == 0) { t->decoder = TP_DEC_BYTELEVEL; return TP_OK; }
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders"), *e;
        if (!cJSON_IsArray(list)) return tp_fail(TP_ERR_FORMAT, "%s: decoder Sequence: missing \"decoders\"", src);
        if (cJSON_GetArraySize(list) == 1 && json_type(cJSON_GetArrayItem(list, 0)) &&
            strcmp(json_type(cJSON_GetArrayItem(list, 0)), "ByteLevel") == 0)
            return parse_decoder(t, cJSON_GetArrayItem(list, 0), src);
        t->decoder = TP_DEC_CHAIN;
        tp_status rc;
        cJSON_ArrayForEach(e, list) if ((rc = parse_dec_step(t, e, src))) return rc;
        return TP_OK;
    }
    t->decoder = TP_DEC_CHAIN;
    return parse_dec_step(t, d, src);
}

static tp_status push_norm(tp_tokenizer *t, tp_norm_step st) {
    tp_norm_step *p = realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *p);
    if (!p) { tp_norm_step_clear(&st); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    t->norm = p;
    t->norm[t->n_norm++] = st;
    return TP_OK;
}

static tp_status parse_normalizer(tp_tokenizer *t, const cJSON *n, const char *src, int depth) {
    if (!n || cJSON_IsNull(n)) return TP_OK;
    const char *type = json_type(n), *x = NULL;
    tp_status rc;
    if (!type) return tp_fail(TP_ERR_FORMAT, "%s: normalizer: missing \"type\"", src);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        if (!cJSON_IsArray(list)) return tp_fail(TP_ERR_FORMAT, "%s: normalizer Sequence: missing \"normalizers\"", src);
        if (depth > 4) return tp_fail(TP_ERR_UNSUPPORTED, "%s: normalizer: Sequences nested too deep", src);
        cJSON_ArrayForEach(e, list) if ((rc = parse_normalizer(t, e, src, depth + 1))) return rc;
        return TP_OK;
    }
    if (t->n_norm >= 64) return tp_fail(TP_ERR_UNSUPPORTED, "%s: normalizer: more than 64 steps", src);
    tp_norm_step st = {0};
    static const struct { const char *name; tp_norm_kind k; } simple[] = {
        {"NFC", TP_NORM_NFC}, {"NFD", TP_NORM_NFD}, {"NFKC", TP_NORM_NFKC}, {"NFKD", TP_NORM_NFKD},
        {"Lowercase", TP_NORM_LOWERCASE}};
    for (size_t i = 0; i < sizeof simple / sizeof *simple; i++)
        if (strcmp(type, simple[i].name) == 0) {
            st.kind = simple[i].k;
            return push_norm(t, st);
        }
    if (strcmp(type, "Prepend") == 0) {
        st.kind = TP_NORM_PREPEND;
        if ((rc = json_str(n, "prepend", src, "normalizer Prepend", &x)) || (rc = dup_field(&st.a, &st.la, x))) return rc;
    } else if (strcmp(type, "Replace") == 0) {
        st.kind = TP_NORM_REPLACE;
        if ((rc = replace_pattern(n, src, "normalizer Replace", &x)) || (rc = dup_field(&st.a, &st.la, x))) return rc;
        if ((rc = json_str(n, "content", src, "normalizer Replace", &x)) || (rc = dup_field(&st.b, &st.lb, x))) {
            tp_norm_step_clear(&st);
            return rc;
        }
    } else if (strcmp(type, "Strip") == 0) {
        st.kind = TP_NORM_STRIP;
        if ((rc = json_bool(n, "strip_left", 1, &st.left, src, "normalizer Strip")) ||
            (rc = json_bool(n, "strip_right", 1, &st.right, src, "normalizer Strip")))
            return rc;
    } else
        return tp_fail(TP_ERR_UNSUPPORTED, "%s: normalizer \"%s\" is not supported (NFC, NFD, NFKC, NFKD, Prepend, "
                       "Replace, Lowercase, Strip, Sequence)", src, type);
    return push_norm(t, st);
}

/* ---- tokenizer_config.json ---- */

static const char *token_name(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

/* transformers (5.x, TokenizersBackend) takes bos/eos/unk/pad from here; whether BOS is added is
 * the post-processor's business - it ignores add_bos_token / add_eos_token for tokenizers built
 * from tokenizer.json (checked against transformers 5.24 in tests/ref/tok_ref.py), and so do we. */
static tp_status load_config(tp_tokenizer *t, const char *json_path) {
    const char *slash = strrchr(json_path, '/');
    size_t dl = slash ? (size_t)(slash - json_path) + 1 : 0;
    char *path = malloc(dl + 32);
    if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    memcpy(path, json_path, dl);
    strcpy(path + dl, "tokenizer_config.json");
    FILE *f = fopen(path, "rb");
    if (!f) { free(path); return TP_OK; }
    fclose(f);
    char *data;
    size_t len;
    tp_status rc = tp_read_file(path, &data, &len);
    if (rc) { free(path); return rc; }
    cJSON *root = cJSON_ParseWithLength(data, len);
    int valid = root || tp_json_valid(data, len);
    free(data);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        rc = valid && !root ? tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing it", path)
                            : tp_fail(TP_ERR_FORMAT, "%s: not a JSON object", path);
        free(path);
        return rc;
    }
    static const char *keys[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    int32_t *ids[] = {&t->bos, &t->eos, &t->unk, &t->pad};
    for (int i = 0; i < 4 && !rc; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
        if (!v || cJSON_IsNull(v)) continue;
        const char *name = token_name(v);
        if (!name) { rc = tp_fail(TP_ERR_FORMAT, "%s: %s: expected a string or {\"content\": ...}", path, keys[i]); break; }
        int32_t id = tp_tok_find(t, name);
        if (id < 0) rc = tp_fail(TP_ERR_FORMAT, "%s: %s \"%.64s\" is not in the vocabulary", path, keys[i], name);
        *ids[i] = id;
    }
    cJSON_Delete(root);
    free(path);
    return rc;
}

tp_status tp_tok_load_json(const char *path, tp_tokenizer **out) {
    if (!path || !out) return tp_fail(TP_ERR_ARG, "tp_tok_load_json: NULL argument");
    *out = NULL;
    char *data;
    size_t len;
    tp_status rc = tp_read_file(path, &data, &len);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(data, len);
    if (!root && tp_json_valid(data, len)) {
        free(data);
        return tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing it", path);
    }
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        long off = ep && ep >= data && ep <= data + len ? (long)(ep - data) : -1;
        free(data);
        return tp_fail(TP_ERR_FORMAT, "%s: not valid JSON (parse error near byte %ld)", path, off);
    }
    free(data);
    tp_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { cJSON_Delete(root); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    t->bos = t->eos = t->unk = t->pad = -1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (!cJSON_IsObject(root)) rc = tp_fail(TP_ERR_FORMAT, "%s: not a JSON object", path);
    else if (!cJSON_IsObject(model)) rc = tp_fail(TP_ERR_FORMAT, "%s: missing \"model\"", path);
    else if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        rc = tp_fail(TP_ERR_FORMAT, "%s: added_tokens: not an array", path);
    if (!rc) rc = load_vocab(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"), added, path);
    if (!rc) rc = load_added(t, added, path);
    if (!rc) rc = load_model(t, model, path);
    if (!rc) rc = parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, 0);
    if (!rc && pre && !cJSON_IsNull(pre)) rc = parse_pre(t, pre, path, 0);
    if (!rc) rc = parse_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), path, 0);
    if (!rc) rc = parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), path);
    if (!rc) rc = load_config(t, path);
    if (!rc && t->bos < 0 && t->n_prefix) t->bos = t->prefix[0];
    if (!rc) rc = tp_tok_finish(t, path);
    cJSON_Delete(root);
    if (rc) { tp_tok_free(t); return rc; }
    *out = t;
    return TP_OK;
}

/* ---- saving ---- */

static const char *scheme_name(tp_prepend_scheme s) {
    return s == TP_PREPEND_FIRST ? "first" : s == TP_PREPEND_NEVER ? "never" : "always";
}

/* The builders below record a failed allocation in *ok (it stays 0) and free whatever they could
 * not attach, so that a save writes complete files or fails with TP_ERR_NOMEM, never a file with
 * fields missing. */
static void put_str(int *ok, cJSON *o, const char *k, const char *v) {
    if (!cJSON_AddStringToObject(o, k, v)) *ok = 0;
}
static void put_bool(int *ok, cJSON *o, const char *k, int v) {
    if (!cJSON_AddBoolToObject(o, k, v)) *ok = 0;
}
static void put_num(int *ok, cJSON *o, const char *k, double v) {
    if (!cJSON_AddNumberToObject(o, k, v)) *ok = 0;
}
static void put_null(int *ok, cJSON *o, const char *k) {
    if (!cJSON_AddNullToObject(o, k)) *ok = 0;
}
static cJSON *put_obj(int *ok, cJSON *o, const char *k) {
    cJSON *x = cJSON_AddObjectToObject(o, k);
    if (!x) *ok = 0;
    return x;
}
static cJSON *put_arr(int *ok, cJSON *o, const char *k) {
    cJSON *x = cJSON_AddArrayToObject(o, k);
    if (!x) *ok = 0;
    return x;
}
/* item into the object o under k, or appended to the array o when k is NULL; freed on failure. */
static void put(int *ok, cJSON *o, const char *k, cJSON *item) {
    if (item && o && (k ? cJSON_AddItemToObject(o, k, item) : cJSON_AddItemToArray(o, item))) return;
    cJSON_Delete(item);
    *ok = 0;
}
static cJSON *new_obj(int *ok) {
    cJSON *o = cJSON_CreateObject();
    if (!o) *ok = 0;
    return o;
}

static cJSON *pattern_json(int *ok, const char *s) {
    cJSON *p = new_obj(ok);
    if (p) put_str(ok, p, "String", s);
    return p;
}

static cJSON *norm_json(int *ok, const tp_tokenizer *t) {
    if (!t->n_norm) return cJSON_CreateNull();
    cJSON *seq = new_obj(ok);
    put_str(ok, seq, "type", "Sequence");
    cJSON *list = put_arr(ok, seq, "normalizers");
    for (int i = 0; i < t->n_norm && *ok; i++) {
        const tp_norm_step *st = &t->norm[i];
        cJSON *o = new_obj(ok);
        put_str(ok, o, "type", tp_norm_name(st->kind));
        if (st->kind == TP_NORM_PREPEND) put_str(ok, o, "prepend", st->a);
        if (st->kind == TP_NORM_REPLACE) {
            put(ok, o, "pattern", pattern_json(ok, st->a));
            put_str(ok, o, "content", st->b);
        }
        if (st->kind == TP_NORM_STRIP) {
            put_bool(ok, o, "strip_left", st->left);
            put_bool(ok, o, "strip_right", st->right);
        }
        put(ok, list, NULL, o);
    }
    return seq;
}

static cJSON *dec_chain_json(int *ok, const tp_tokenizer *t) {
    cJSON *seq = new_obj(ok);
    put_str(ok, seq, "type", "Sequence");
    cJSON *list = put_arr(ok, seq, "decoders");
    for (int i = 0; i < t->n_dsteps && *ok; i++) {
        const tp_dec_step *d = &t->dsteps[i];
        cJSON *o = new_obj(ok);
        switch (d->kind) {
        case TP_DS_BYTEFALLBACK: put_str(ok, o, "type", "ByteFallback"); break;
        case TP_DS_FUSE: put_str(ok, o, "type", "Fuse"); break;
        case TP_DS_REPLACE:
            put_str(ok, o, "type", "Replace");
            put(ok, o, "pattern", pattern_json(ok, d->a));
            put_str(ok, o, "content", d->b);
            break;
        case TP_DS_STRIP:
            put_str(ok, o, "type", "Strip");
            put_str(ok, o, "content", d->a);
            put_num(ok, o, "start", d->start);
            put_num(ok, o, "stop", d->stop);
            break;
        case TP_DS_METASPACE:
            put_str(ok, o, "type", "Metaspace");
            put_str(ok, o, "replacement", d->a);
            put_str(ok, o, "prepend_scheme", scheme_name(d->prepend_scheme));
            put_bool(ok, o, "split", 1);
            break;
        case TP_DS_BYTELEVEL: put_str(ok, o, "type", "ByteLevel"); break;
        }
        put(ok, list, NULL, o);
    }
    return seq;
}

static cJSON *pre_step_json(int *ok, const tp_pre_step *st) {
    cJSON *o = new_obj(ok);
    if (!o) return NULL;
    switch (st->kind) {
    case TP_PRE_BYTELEVEL:
        put_str(ok, o, "type", "ByteLevel");
        put_bool(ok, o, "add_prefix_space", st->add_prefix_space);
        put_bool(ok, o, "trim_offsets", st->trim_offsets);
        put_bool(ok, o, "use_regex", st->use_regex);
        break;
    case TP_PRE_DIGITS:
        put_str(ok, o, "type", "Digits");
        put_bool(ok, o, "individual_digits", st->individual_digits);
        break;
    case TP_PRE_METASPACE:
        put_str(ok, o, "type", "Metaspace");
        put_str(ok, o, "replacement", st->replacement);
        put_str(ok, o, "prepend_scheme", scheme_name(st->prepend_scheme));
        put_bool(ok, o, "split", st->split);
        break;
    case TP_PRE_PUNCT:
        put_str(ok, o, "type", "Punctuation");
        put_str(ok, o, "behavior", tp_split_behavior_name(st->behavior));
        break;
    case TP_PRE_SPLIT: {
        put_str(ok, o, "type", "Split");
        cJSON *pat = put_obj(ok, o, "pattern");
        if (pat) put_str(ok, pat, st->is_regex ? "Regex" : "String", st->pattern);
        put_str(ok, o, "behavior", tp_split_behavior_name(st->behavior));
        put_bool(ok, o, "invert", st->invert);
        break;
    }
    }
    return o;
}

static cJSON *special_item(int *ok, const tp_tokenizer *t, int32_t id) {
    cJSON *o = new_obj(ok), *sp = put_obj(ok, o, "SpecialToken");
    if (sp) {
        put_str(ok, sp, "id", t->piece[id]);
        put_num(ok, sp, "type_id", 0);
    }
    return o;
}

static cJSON *seq_item(int *ok, const char *name, int type_id) {
    cJSON *o = new_obj(ok), *s = put_obj(ok, o, "Sequence");
    if (s) {
        put_str(ok, s, "id", name);
        put_num(ok, s, "type_id", type_id);
    }
    return o;
}

static cJSON *post_json(int *ok, const tp_tokenizer *t) {
    cJSON *o = new_obj(ok);
    if (!t->n_prefix && !t->n_suffix) {
        put_str(ok, o, "type", "ByteLevel");
        put_bool(ok, o, "add_prefix_space", 1);
        put_bool(ok, o, "trim_offsets", 0);
        put_bool(ok, o, "use_regex", 1);
        return o;
    }
    put_str(ok, o, "type", "TemplateProcessing");
    cJSON *single = put_arr(ok, o, "single"), *pair = put_arr(ok, o, "pair");
    cJSON *sp = put_obj(ok, o, "special_tokens");
    for (int part = 0; part < 2 && *ok; part++) {
        for (int i = 0; i < t->n_prefix; i++) {
            if (!part) put(ok, single, NULL, special_item(ok, t, t->prefix[i]));
            put(ok, pair, NULL, special_item(ok, t, t->prefix[i]));
        }
        if (!part) put(ok, single, NULL, seq_item(ok, "A", 0));
        put(ok, pair, NULL, seq_item(ok, part ? "B" : "A", part));
        for (int i = 0; i < t->n_suffix; i++) {
            if (!part) put(ok, single, NULL, special_item(ok, t, t->suffix[i]));
            put(ok, pair, NULL, special_item(ok, t, t->suffix[i]));
        }
    }
    for (int i = 0; i < t->n_prefix + t->n_suffix && *ok; i++) {
        int32_t id = i < t->n_prefix ? t->prefix[i] : t->suffix[i - t->n_prefix];
        if (cJSON_GetObjectItemCaseSensitive(sp, t->piece[id])) continue;
        cJSON *d = new_obj(ok);
        put_str(ok, d, "id", t->piece[id]);
        cJSON *ids = put_arr(ok, d, "ids"), *toks = put_arr(ok, d, "tokens");
        put(ok, ids, NULL, cJSON_CreateNumber(id));
        put(ok, toks, NULL, cJSON_CreateString(t->piece[id]));
        put(ok, sp, t->piece[id], d);
    }
    return o;
}

/* tokenizer.json of t; NULL when out of memory. */
static cJSON *tokenizer_json(const tp_tokenizer *t) {
    int ok1 = 1, *ok = &ok1;
    cJSON *root = new_obj(ok);
    put_str(ok, root, "version", "1.0");
    put_null(ok, root, "truncation");
    put_null(ok, root, "padding");
    cJSON *added = put_arr(ok, root, "added_tokens");
    for (int i = 0; i < t->n_added && *ok; i++) {
        const tp_added_token *a = &t->added[i];
        cJSON *o = new_obj(ok);
        put_num(ok, o, "id", a->id);
        put_str(ok, o, "content", a->content);
        put_bool(ok, o, "single_word", a->single_word);
        put_bool(ok, o, "lstrip", a->lstrip);
        put_bool(ok, o, "rstrip", a->rstrip);
        put_bool(ok, o, "normalized", a->normalized);
        put_bool(ok, o, "special", a->special);
        put(ok, added, NULL, o);
    }
    put(ok, root, "normalizer", norm_json(ok, t));
    if (t->n_steps == 0) put_null(ok, root, "pre_tokenizer");
    else if (t->n_steps == 1) put(ok, root, "pre_tokenizer", pre_step_json(ok, &t->steps[0]));
    else {
        cJSON *seq = put_obj(ok, root, "pre_tokenizer");
        put_str(ok, seq, "type", "Sequence");
        cJSON *list = put_arr(ok, seq, "pretokenizers");
        for (int i = 0; i < t->n_steps && *ok; i++) put(ok, list, NULL, pre_step_json(ok, &t->steps[i]));
    }
    put(ok, root, "post_processor", post_json(ok, t));
    if (t->decoder == TP_DEC_BYTELEVEL) {
        cJSON *d = put_obj(ok, root, "decoder");
        put_str(ok, d, "type", "ByteLevel");
        put_bool(ok, d, "add_prefix_space", 1);
        put_bool(ok, d, "trim_offsets", 1);
        put_bool(ok, d, "use_regex", 1);
    } else if (t->decoder == TP_DEC_CHAIN) put(ok, root, "decoder", dec_chain_json(ok, t));
    else put_null(ok, root, "decoder");
    cJSON *m = put_obj(ok, root, "model");
    put_str(ok, m, "type", "BPE");
    put_null(ok, m, "dropout");
    if (t->model_unk_token) put_str(ok, m, "unk_token", t->model_unk_token);
    else put_null(ok, m, "unk_token");
    put_null(ok, m, "continuing_subword_prefix");
    put_null(ok, m, "end_of_word_suffix");
    put_bool(ok, m, "fuse_unk", t->fuse_unk);
    put_bool(ok, m, "byte_fallback", t->byte_fallback);
    put_bool(ok, m, "ignore_merges", t->ignore_merges);
    cJSON *v = put_obj(ok, m, "vocab");
    for (int i = 0; i < t->n_model && *ok; i++) put(ok, v, t->piece[i], cJSON_CreateNumber(i));
    cJSON *mg = put_arr(ok, m, "merges");
    for (int r = 0; r < t->n_merges && *ok; r++) {
        const char *pair[2] = {t->piece[t->merge_pairs[2 * r]], t->piece[t->merge_pairs[2 * r + 1]]};
        put(ok, mg, NULL, cJSON_CreateStringArray(pair, 2));
    }
    if (!*ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static void add_token_field(int *ok, cJSON *o, const tp_tokenizer *t, const char *key, int32_t id) {
    if (id >= 0) put_str(ok, o, key, t->piece[id]);
}

static tp_status write_json(cJSON *root, const char *dir, const char *name) {
    if (!root) return tp_fail(TP_ERR_NOMEM, "out of memory building %s", name);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return tp_fail(TP_ERR_NOMEM, "out of memory printing %s", name);
    char *path = tp_path_join(dir, name);
    if (!path) { free(text); return tp_fail(TP_ERR_NOMEM, "out of memory"); }
    tp_status rc = tp_write_file_atomic(path, text, strlen(text));
    free(path);
    free(text);
    return rc;
}

tp_status tp_tok_save_hf(const tp_tokenizer *t, const char *dir) {
    if (!t || !dir) return tp_fail(TP_ERR_ARG, "tp_tok_save_hf: NULL argument");
    if (t->model_kind == TP_MODEL_SPM)
        return tp_fail(TP_ERR_UNSUPPORTED, "tp_tok_save_hf: this tokenizer is SentencePiece-style BPE by piece score "
                       "(GGUF tokenizer model \"llama\"), which tokenizer.json cannot express exactly (its BPE "
                       "merges by rank); not written");
    if (t->nl_whole)
        return tp_fail(TP_ERR_UNSUPPORTED, "tp_tok_save_hf: llama.cpp's Gemma 4 newline rule has no tokenizer.json "
                       "equivalent; not written");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return tp_fail(TP_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    for (int i = 0; i < t->n_model; i++)
        if (!t->piece[i]) return tp_fail(TP_ERR_ARG, "tp_tok_save_hf: vocabulary id %d has no piece", i);
    tp_status rc = write_json(tokenizer_json(t), dir, "tokenizer.json");
    if (rc) return rc;

    int adds_eos = t->eos >= 0 && t->n_suffix == 1 && t->suffix[0] == t->eos;
    int ok1 = 1, *ok = &ok1;
    cJSON *cfg = new_obj(ok);
    /* PreTrainedTokenizerFast: transformers 5 then runs tokenizer.json's own pipeline (with
     * "GPT2Tokenizer" it rebuilds a plain GPT-2 pre-tokenizer and drops e.g. SmolLM2's digit
     * split). */
    put_str(ok, cfg, "tokenizer_class", "PreTrainedTokenizerFast");
    put_bool(ok, cfg, "add_bos_token", tp_tok_adds_bos(t));
    put_bool(ok, cfg, "add_eos_token", adds_eos);
    put_bool(ok, cfg, "clean_up_tokenization_spaces", 0);
    add_token_field(ok, cfg, t, "bos_token", t->bos);
    add_token_field(ok, cfg, t, "eos_token", t->eos);
    add_token_field(ok, cfg, t, "unk_token", t->unk);
    add_token_field(ok, cfg, t, "pad_token", t->pad);
    cJSON *dec = put_obj(ok, cfg, "added_tokens_decoder");
    for (int i = 0; i < t->n_added && *ok; i++) {
        const tp_added_token *a = &t->added[i];
        char key[16];
        snprintf(key, sizeof key, "%d", (int)a->id);
        cJSON *o = new_obj(ok);
        put_str(ok, o, "content", a->content);
        put_bool(ok, o, "lstrip", a->lstrip);
        put_bool(ok, o, "normalized", a->normalized);
        put_bool(ok, o, "rstrip", a->rstrip);
        put_bool(ok, o, "single_word", a->single_word);
        put_bool(ok, o, "special", a->special);
        put(ok, dec, key, o);
    }
    if (!*ok) {
        cJSON_Delete(cfg);
        cfg = NULL;
    }
    if ((rc = write_json(cfg, dir, "tokenizer_config.json"))) return rc;

    cJSON *map = new_obj(ok);
    add_token_field(ok, map, t, "bos_token", t->bos);
    add_token_field(ok, map, t, "eos_token", t->eos);
    add_token_field(ok, map, t, "unk_token", t->unk);
    add_token_field(ok, map, t, "pad_token", t->pad);
    if (!*ok) {
        cJSON_Delete(map);
        map = NULL;
    }
    return write_json(map, dir, "special_tokens_map.json");
}
