/* CLI behaviour: --help everywhere, exit codes (0 ok, 1 failure, 2 usage), clear messages for
 * bad input, JSON output. Runs the built binary ($TAPER_BIN, set by make test). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "taper/util.h"
#include "tt.h"

TT_TEST(cli_help_and_usage_errors) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char *out, *help;
    TT_CHECK(tt_taper("--help", &help) == 0 && strstr(help, "commands:"), "taper --help");
    TT_CHECK(tt_taper("frobnicate", &out) == 2 && strstr(out, "unknown command"), "unknown command -> 2");
    free(out);
    /* every command listed by taper --help: --help exits 0, an unknown option exits 2 */
    int n = 0;
    const char *p = strstr(help, "commands:");
    for (p = p ? strchr(p, '\n') : NULL; p && p[1] == ' ' && p[2] == ' '; p = strchr(p + 1, '\n')) {
        char name[32];
        if (sscanf(p + 1, " %31s", name) != 1) break;
        char a[96];
        snprintf(a, sizeof a, "%s --help", name);
        TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "usage: taper"), "%s --help exits 0 with usage", name);
        free(out);
        snprintf(a, sizeof a, "%s --no-such-option x", name);
        TT_CHECK(tt_taper(a, &out) == 2, "%s with an unknown option exits 2", name);
        free(out);
        n++;
    }
    TT_CHECK(n >= 13, "taper --help lists %d commands", n);
    free(help);
    TT_CHECK(tt_taper("ppl model.gguf --data x --ctx abc", &out) == 2 && strstr(out, "--ctx"), "bad --ctx names it");
    free(out);
    TT_CHECK(tt_taper("convert a b --to onnx", &out) == 2 && strstr(out, "--to"), "bad --to -> 2");
    free(out);
}

TT_TEST(cli_bad_files_fail_cleanly) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    char *out;
    TT_CHECK(tt_taper("info /nonexistent/model.gguf", &out) == 1 && strstr(out, "/nonexistent/model.gguf"),
             "missing file -> exit 1 naming it: %s", out);
    free(out);
    char *junk = tt_path(tt_tmp_dir(), "junk.gguf");
    FILE *f = fopen(junk, "wb");
    fputs("GGUF\x03\x00\x00\x00 this is not a model", f);
    fclose(f);
    char a[512];
    snprintf(a, sizeof a, "info %s", junk);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, junk), "truncated GGUF -> exit 1 naming the file: %s", out);
    free(out);
    snprintf(a, sizeof a, "info %s", tt_tmp_dir());
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "config.json"), "folder without config.json -> exit 1: %s", out);
    free(out);
    free(junk);
}

TT_TEST(cli_info_ppl_generate_on_default_model) {
    if (!tt_bin()) { tt_skip("TAPER_BIN not set (run through make test)"); return; }
    const char *model = tt_model_path();
    if (!model) { tt_skip("default model not found (run make deps)"); return; }
    char a[1024], *out;
    char *js = tt_path(tt_tmp_dir(), "info.json");
    snprintf(a, sizeof a, "info %s --tensors --json=%s", model, js);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "blk.0.attn_q.weight"), "info lists tensors");
    free(out);
    char *text = NULL;
    cJSON *j = NULL;
    if (tp_read_file(js, &text, NULL) == TP_OK) j = cJSON_Parse(text);
    TT_CHECK(j && cJSON_GetObjectItem(j, "n_params")->valuedouble == 134515008.0,
             "info --json: n_params of SmolLM2-135M is 134515008");
    TT_CHECK(j && cJSON_GetObjectItem(j, "n_kv_heads")->valueint == 3, "info --json: 3 KV heads");
    cJSON_Delete(j);
    free(text);
    /* ppl on a small text: the GPL-3 licence text shipped by Debian's base-files */
    const char *lic = "/usr/share/common-licenses/GPL-3";
    snprintf(a, sizeof a, "ppl %s --data %s --ctx 128 --max-chunks 2 --json", model, lic);
    int rc = tt_taper(a, &out);
    TT_CHECK(rc == 0 && strstr(out, "\"protocol\":\t\"chunks\"") && strstr(out, "llama.cpp"),
             "ppl prints both protocols as JSON (rc %d): %s", rc, out);
    free(out);
    snprintf(a, sizeof a, "generate %s --prompt 'The capital of France is' --max-tokens 8 --json", model);
    TT_CHECK(tt_taper(a, &out) == 0 && strstr(out, "\"generated_ids\""), "generate --json");
    free(out);
    snprintf(a, sizeof a, "generate %s --prompt '' --max-tokens 4", model);
    TT_CHECK(tt_taper(a, &out) == 1 && strstr(out, "no tokens"), "empty prompt is a clear error: %s", out);
    free(out);
    free(js);
}
