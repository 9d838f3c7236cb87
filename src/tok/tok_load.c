/* tp_tok_load_any: the tokenizer of whatever a user names (a .gguf file, an HF folder, a
 * tokenizer.json), without loading any weights. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "taper/gguf.h"
#include "taper/tokenizer.h"
#include "taper/util.h"
#include "core/internal.h"

/* chat_template of an HF folder's tokenizer_config.json into *out (NULL if none). An absent or odd
 * file is not an error; running out of memory is (the template must not be lost quietly). */
static tp_status folder_chat_template(const char *dir, char **out) {
    *out = NULL;
    char *q = tp_path_join(dir, "tokenizer_config.json"), *text = NULL;
    if (!q) return tp_fail(TP_ERR_NOMEM, "out of memory");
    tp_status s = TP_OK;
    if (access(q, R_OK) == 0 && (s = tp_read_file(q, &text, NULL)) == TP_OK) {
        cJSON *j = cJSON_Parse(text);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
        if (!j && tp_json_valid(text, strlen(text)))
            s = tp_fail(TP_ERR_NOMEM, "%s: out of memory while parsing it", q);
        else if (cJSON_IsString(ct) && !(*out = strdup(ct->valuestring)))
            s = tp_fail(TP_ERR_NOMEM, "%s: out of memory for the chat template", q);
        cJSON_Delete(j);
    }
    if (s != TP_ERR_NOMEM) {
        s = TP_OK;
        tp_clear_error();
    }
    free(text);
    free(q);
    return s;
}

static tp_status load_gguf_file(const char *path, tp_tokenizer **tok, char **chat_template) {
    tp_gguf *g = NULL;
    tp_status s = tp_gguf_open(path, &g);
    if (!s) s = tp_tok_load_gguf(g, tok);
    if (!s && chat_template && tp_gguf_find(g, "tokenizer.chat_template") &&
        tp_gguf_get_str(g, "tokenizer.chat_template", chat_template) == TP_ERR_NOMEM) {
        s = TP_ERR_NOMEM; /* a template of another type stays ignored, as before */
        tp_tok_free(*tok);
        *tok = NULL;
    }
    tp_gguf_close(g);
    return s ? tp_fail_ctx(s, "%s: tokenizer: ", path) : TP_OK;
}

tp_status tp_tok_load_any(const char *path, tp_tokenizer **tok, char **chat_template) {
    *tok = NULL;
    if (chat_template) *chat_template = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return tp_fail(TP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        char *js = tp_path_join(path, "tokenizer.json"), *gg = tp_path_join(path, "tokenizer.gguf");
        tp_status s = js && gg ? TP_OK : tp_fail(TP_ERR_NOMEM, "out of memory");
        if (!s && access(js, R_OK) == 0) s = tp_tok_load_json(js, tok);
        else if (!s && access(gg, R_OK) == 0) s = load_gguf_file(gg, tok, NULL);
        if (!s && chat_template && (s = folder_chat_template(path, chat_template))) {
            tp_tok_free(*tok);
            *tok = NULL;
        }
        free(js);
        free(gg);
        return s;
    }
    char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return tp_fail(TP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got == 4 && memcmp(magic, "GGUF", 4) == 0) return load_gguf_file(path, tok, chat_template);
    return tp_tok_load_json(path, tok);
}
