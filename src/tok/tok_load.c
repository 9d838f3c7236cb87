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

/* chat_template of an HF folder's tokenizer_config.json (absent or odd: none, not an error). */
static char *folder_chat_template(const char *dir) {
    char *q = tp_path_join(dir, "tokenizer_config.json"), *text = NULL, *out = NULL;
    if (q && access(q, R_OK) == 0 && tp_read_file(q, &text, NULL) == TP_OK) {
        cJSON *j = cJSON_Parse(text);
        const cJSON *ct = j ? cJSON_GetObjectItemCaseSensitive(j, "chat_template") : NULL;
        if (cJSON_IsString(ct)) out = strdup(ct->valuestring);
        cJSON_Delete(j);
    }
    free(text);
    free(q);
    return out;
}

static tp_status load_gguf_file(const char *path, tp_tokenizer **tok, char **chat_template) {
    tp_gguf *g = NULL;
    tp_status s = tp_gguf_open(path, &g);
    if (!s) s = tp_tok_load_gguf(g, tok);
    if (!s && chat_template && tp_gguf_find(g, "tokenizer.chat_template"))
        tp_gguf_get_str(g, "tokenizer.chat_template", chat_template);
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
        if (!s && chat_template) *chat_template = folder_chat_template(path);
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
