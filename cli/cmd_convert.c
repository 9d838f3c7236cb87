/* taper convert MODEL --to hf|gguf OUT: GGUF <-> HF folder. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "taper/gguf.h"
#include "taper/model.h"

static const char *HELP =
    "usage: taper convert MODEL --to hf|gguf OUT [--dtype source|f32|f16|bf16|q8_0]\n\n"
    "Writes MODEL (a .gguf file or an HF folder) as an HF folder (config.json, generation_config.json,\n"
    "model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json) that plain\n"
    "transformers loads, or as a GGUF file that llama.cpp loads. Quantised GGUF tensors are\n"
    "dequantised to fp32 first.\n\n"
    "  --to hf|gguf     output format (required)\n"
    "  --dtype T        stored type: source (default: the source's f32 / f16 / bf16, f32 for a quantised\n"
    "                   GGUF), f32, f16, bf16; q8_0 for GGUF only (rows that are not a multiple of 32\n"
    "                   are stored f16; norms stay f32)\n"
    "  -h, --help       this help\n";

int cmd_convert(int argc, char **argv) {
    static const struct option opts[] = {{"to", required_argument, 0, 'o'},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *to = NULL, *dtype = "source";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') { fputs(HELP, stdout); return CLI_OK; }
        else if (c == 'o') to = optarg;
        else if (c == 'd') dtype = optarg;
        else return cli_usage("convert", "unknown option");
    }
    if (optind != argc - 2) return cli_usage("convert", "expects MODEL and OUT");
    if (!to || (strcmp(to, "hf") && strcmp(to, "gguf")))
        return cli_usage("convert", "--to must be hf or gguf");
    const char *st_dtype = NULL;
    int gg = -1;
    if (!strcasecmp(dtype, "source")) st_dtype = "source";
    else if (!strcasecmp(dtype, "f32")) { st_dtype = "F32"; gg = TP_GGML_F32; }
    else if (!strcasecmp(dtype, "f16")) { st_dtype = "F16"; gg = TP_GGML_F16; }
    else if (!strcasecmp(dtype, "bf16")) { st_dtype = "BF16"; gg = TP_GGML_BF16; }
    else if (!strcasecmp(dtype, "q8_0")) gg = TP_GGML_Q8_0;
    else return cli_usage("convert", "--dtype must be source, f32, f16, bf16 or q8_0, got '%s'", dtype);
    if (!strcmp(to, "hf") && !st_dtype) return cli_usage("convert", "--dtype q8_0 is for --to gguf only");
    tp_model *m = NULL;
    tp_status s = tp_model_load(argv[optind], &m);
    if (s) return cli_error(s);
    const char *out = argv[optind + 1];
    if (!strcmp(st_dtype ? st_dtype : "", "source")) { /* the stored type of the source's matrices */
        st_dtype = tp_model_source_dtype(m);
        gg = !strcmp(st_dtype, "F16") ? TP_GGML_F16 : !strcmp(st_dtype, "BF16") ? TP_GGML_BF16 : TP_GGML_F32;
        dtype = st_dtype;
    }
    s = !strcmp(to, "hf") ? tp_model_save_hf(m, out, st_dtype) : tp_model_save_gguf(m, out, gg);
    if (!s) fprintf(stderr, "taper convert: wrote %s (%s, %s, %.1fM parameters)\n", out, to, dtype,
                    (double)m->n_params / 1e6);
    if (!s && !strcmp(to, "hf")) cli_note_hf_tokenizer(out);
    tp_model_free(m);
    return s ? cli_error(s) : CLI_OK;
}
