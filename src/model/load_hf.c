/* HF folder -> tp_model: config.json, safetensors (single or sharded), tokenizer.json and the
 * chat template from tokenizer_config.json. Tensor names are the transformers Llama names. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "taper/gguf.h"
#include "taper/model.h"
#include "taper/safetensors.h"
#include "taper/util.h"
#include "core/internal.h"
#include "model_internal.h"

static tp_status load_st(const tp_safetensors *st, const char *dir, const char *name, float *dst, size_t rows,
                         size_t cols) {
    const tp_st_tensor *t = tp_st_find(st, name);
    if (!t) return tp_fail(TP_ERR_FORMAT, "%s: tensor %s is missing", dir, name);
    int ok = rows == 1 ? (t->n_dims == 1 && t->shape[0] == cols)
                       : (t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols);
    if (!ok)
        return tp_fail(TP_ERR_FORMAT, "%s: tensor %s has %d dims [%llu, %llu, ...], expected [%zu, %zu]", dir,
                       name, t->n_dims, (unsigned long long)(t->n_dims > 0 ? t->shape[0] : 0),
                       (unsigned long long)(t->n_dims > 1 ? t->shape[1] : 0), rows, cols);
    tp_status s = tp_st_to_f32(t, dst);
    tp_mmap_release(t->data, t->nbytes); /* the file's pages leave the resident set: only the fp32 copy counts */
    if (s) return tp_fail_ctx(s, "%s: tensor %s: ", dir, name);
    return TP_OK;
}

/* The tensors of the model's table (tp_model_tensors: HF names and shapes) whose names start with
 * prefix, from the file. */
tp_status tp_hf_load_prefix(const tp_safetensors *st, const char *dir, const tp_model *m, const char *prefix) {
    int n = tp_model_tensors(m, NULL, 0);
    tp_tensor_ref *refs = malloc((size_t)n * sizeof *refs);
    if (!refs) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_model_tensors(m, refs, n);
    size_t pl = strlen(prefix);
    tp_status s = TP_OK;
    for (int i = 0; i < n && !s; i++)
        if (refs[i].data && strncmp(refs[i].name, prefix, pl) == 0)
            s = load_st(st, dir, refs[i].name, refs[i].data, refs[i].rows ? refs[i].rows : 1, refs[i].cols);
    free(refs);
    return s;
}

/* chat_template from tokenizer_config.json, if there is one, into *out (NULL if none). A missing or
 * odd file is not an error (the template is only carried along to exports); running out of
 * memory is: a load must not quietly lose the template. */
static tp_status read_chat_template(const char *dir, char **out) {
    *out = NULL;
    char *path = tp_path_join(dir, "tokenizer_config.json"), *text = NULL;
    if (!path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = TP_OK;
    if (access(path, R_OK) == 0 && (s = tp_read_file(path, &text, NULL)) == TP_OK) {
        cJSON *j = cJSON_Parse(text);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
        if (!j && tp_json_valid(text, strlen(text)))
            s = tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing it", path);
        else if (cJSON_IsString(t) && !(*out = strdup(t->valuestring)))
            s = tp_fail(TP_ERR_NOMEM, "%s: out of memory for the chat template", path);
        cJSON_Delete(j);
    }
    if (s != TP_ERR_NOMEM) {
        s = TP_OK;
        tp_clear_error();
    }
    free(text);
    free(path);
    return s;
}

/* tokenizer.gguf: the GGUF tokenizer keys alone, which taper writes into an HF folder when
 * tokenizer.json cannot express the tokenizer (save.c). Absent: no tokenizer, no error. */
static tp_status load_tok_gguf(const char *dir, tp_tokenizer **tok) {
    char *p = tp_path_join(dir, "tokenizer.gguf");
    if (!p) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = TP_OK;
    if (access(p, R_OK) == 0) {
        tp_gguf *g = NULL;
        if (!(s = tp_gguf_open(p, &g))) s = tp_tok_load_gguf(g, tok);
        tp_gguf_close(g);
        if (s) s = tp_fail_ctx(s, "%s: ", p);
    }
    free(p);
    return s;
}

tp_status tp_hf_load_meta(const char *dir, tp_model *m) {
    char *tok_path = tp_path_join(dir, "tokenizer.json");
    if (!tok_path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = TP_OK;
    if (access(tok_path, R_OK) == 0) s = tp_tok_load_json(tok_path, &m->tok);
    free(tok_path);
    if (!s && !m->tok) s = load_tok_gguf(dir, &m->tok);
    if (!s) s = read_chat_template(dir, &m->chat_template);
    if (s) return s;
    m->source = strdup(dir);
    m->source_format = strdup("hf");
    return m->source && m->source_format ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
}

tp_status tp_model_load_hf(const char *dir, tp_model **out) {
    *out = NULL;
    char *cfg_path = tp_path_join(dir, "config.json"), *json = NULL;
    tp_safetensors *st = NULL;
    tp_model *m = NULL;
    tp_config c;
    tp_status s;
    if (!cfg_path) return tp_fail(TP_ERR_NOMEM, "out of memory");
    if ((s = tp_read_file(cfg_path, &json, NULL))) goto done;
    if ((s = tp_config_from_json(json, cfg_path, &c))) goto done;
    if ((s = tp_st_open(dir, &st))) goto done;
    if ((s = tp_model_alloc(&c, &m))) goto done;
    if ((s = tp_hf_load_prefix(st, dir, m, ""))) goto done;
    s = tp_hf_load_meta(dir, m);
done:
    tp_st_close(st);
    free(cfg_path);
    free(json);
    if (s) tp_model_free(m);
    else *out = m;
    return s;
}
