/* taper sparsify MODEL --method magnitude|wanda|sparsegpt (--sparsity F | --nm N:M) -o OUT_DIR:
 * unstructured or N:M sparsity of the decoder blocks' linear layers; writes the sparse model as
 * an HF folder, the mask file, and a per-layer / per-matrix report. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "taper/compress.h"
#include "taper/model.h"
#include "taper/sparsify.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper sparsify MODEL --method magnitude|wanda|sparsegpt (--sparsity F | --nm N:M)\n"
    "                     [--data FILE] -o OUT_DIR [options]\n\n"
    "Zeroes weights of the seven linear layers of every decoder block (never embeddings or lm_head):\n"
    "  magnitude  smallest |W| per matrix (or across all target matrices with --scope global)\n"
    "  wanda      smallest |W_ij| * ||X_j||_2 per output row (X: the matrix's calibration inputs)\n"
    "  sparsegpt  OBS pruning with the inverse Hessian of 2 X^T X (Frantar & Alistarh 2023), which\n"
    "             also updates the kept weights\n"
    "Wanda and SparseGPT go layer by layer: layer l is calibrated on the hidden states that the\n"
    "already sparsified layers 0..l-1 produce. Ties are broken by index; counts are floor(s*n).\n"
    "Writes OUT_DIR as an HF folder (config.json, model.safetensors with the zeros, tokenizer) and the\n"
    "mask (taper mask file v1, see docs/sparsity.md), and prints the sparsity per layer and matrix.\n\n"
    "  --method M           magnitude, wanda or sparsegpt\n"
    "  --sparsity F         unstructured: prune floor(F*n) of each group (matrix, row or block), F in [0,1)\n"
    "  --nm N:M             semi-structured: keep N of every M consecutive inputs of each row (2:4, 4:8)\n"
    "  --data FILE          calibration text (wanda, sparsegpt): a text file (tokenized whole, no BOS) or\n"
    "                       .jsonl with a \"text\" field; cut into non-overlapping --seq-token samples\n"
    "  --samples N          calibration samples (default 128; all the file has if fewer)\n"
    "  --seq N              tokens per sample (default 512; also --seq-len)\n"
    "  --targets LIST       matrices: q,k,v,o,gate,up,down (default all seven), or attn, mlp, all\n"
    "  --scope S            magnitude, unstructured: layer (each matrix on its own, default) or global\n"
    "  --damp F             sparsegpt: lambda = F * mean(diag H) added to H's diagonal (default 0.01)\n"
    "  --blocksize N        sparsegpt: column block (default 128; a multiple of M with --nm)\n"
    "  --batch N            samples per layer forward (default 8; results do not depend on it)\n"
    "  -o, --out DIR        output HF folder (created)\n"
    "  --mask-out FILE      mask file (default OUT_DIR/mask.tpmask)\n"
    "  --dtype T            stored dtype: F32 (default), BF16 or F16 (zeros stay exact)\n"
    "  --threads N          OpenMP threads (default: all cores)\n"
    "  --json[=FILE]        also write the report as JSON (stdout, or FILE)\n"
    "  -h, --help           this help\n";

static int parse_nm(const char *s, int *n, int *m) {
    char *e1, *e2;
    long a = strtol(s, &e1, 10);
    if (e1 == s || *e1 != ':') return 0;
    long b = strtol(e1 + 1, &e2, 10);
    if (e2 == e1 + 1 || *e2 || a < 1 || b > 64 || a >= b) return 0;
    *n = (int)a;
    *m = (int)b;
    return 1;
}

/* cli_float in double: the sparsity and damping are used in double (counts are floor(s*n)). */
static int parse_double(const char *opt, const char *val, double lo, double hi, double *out) {
    char *end;
    double v = strtod(val, &end);
    if (end == val || *end || !(v >= lo && v <= hi))
        return cli_usage("sparsify", "%s expects a number in [%g, %g), got '%s'", opt, lo, hi, val);
    *out = v;
    return CLI_OK;
}

static double peak_rss_mib(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss / 1024.0 : NAN;
}

static void targets_string(unsigned t, char *buf, size_t n) {
    buf[0] = 0;
    for (int k = 0; k < TP_SP_MATRICES; k++)
        if ((t >> k) & 1) {
            size_t l = strlen(buf);
            snprintf(buf + l, n - l, "%s%s", l ? "," : "", tp_sparse_matrix_name(k));
        }
}

/* The table on stdout and the same numbers as JSON into j (may be NULL). */
static void report(const tp_model *m, const tp_mask *mk, cJSON *j) {
    int L = m->cfg.n_layers;
    printf("\n%5s", "layer");
    for (int k = 0; k < TP_SP_MATRICES; k++) printf(" %7s", tp_sparse_matrix_name(k));
    printf(" %8s\n", "all");
    cJSON *layers = j ? cJSON_AddArrayToObject(j, "layers") : NULL;
    double tot_p = 0, tot_n = 0, mat_p[TP_SP_MATRICES] = {0}, mat_n[TP_SP_MATRICES] = {0};
    for (int l = 0; l < L; l++) {
        double lp = 0, ln = 0;
        cJSON *lo = layers ? cJSON_CreateObject() : NULL, *mats = NULL;
        if (lo) {
            cJSON_AddNumberToObject(lo, "layer", l);
            mats = cJSON_AddObjectToObject(lo, "matrices");
        }
        printf("%5d", l);
        for (int k = 0; k < TP_SP_MATRICES; k++) {
            const tp_mask_tensor *t = NULL;
            for (int i = 0; i < mk->n && !t; i++)
                if (mk->t[i].layer == l && mk->t[i].matrix == k) t = &mk->t[i];
            if (!t) {
                printf(" %7s", "-");
                continue;
            }
            double n = (double)t->rows * t->cols, p = (double)t->n_pruned;
            printf(" %6.2f%%", 100.0 * p / n);
            lp += p;
            ln += n;
            mat_p[k] += p;
            mat_n[k] += n;
            if (mats) {
                cJSON *o = cJSON_AddObjectToObject(mats, tp_sparse_matrix_name(k));
                cJSON_AddStringToObject(o, "tensor", t->name);
                cJSON_AddNumberToObject(o, "pruned", p);
                cJSON_AddNumberToObject(o, "total", n);
                cJSON_AddNumberToObject(o, "sparsity", p / n);
            }
        }
        printf(" %7.2f%%\n", ln > 0 ? 100.0 * lp / ln : 0.0);
        if (lo) {
            cJSON_AddNumberToObject(lo, "sparsity", ln > 0 ? lp / ln : 0.0);
            cJSON_AddItemToArray(layers, lo);
        }
        tot_p += lp;
        tot_n += ln;
    }
    printf("%5s", "all");
    for (int k = 0; k < TP_SP_MATRICES; k++) {
        if (mat_n[k] > 0) printf(" %6.2f%%", 100.0 * mat_p[k] / mat_n[k]);
        else printf(" %7s", "-");
    }
    printf(" %7.2f%%\n", tot_n > 0 ? 100.0 * tot_p / tot_n : 0.0);
    /* zeros actually in the target weights (SparseGPT's dead inputs can add kept zeros) */
    double zeros = 0;
    for (int i = 0; i < mk->n; i++) {
        int r, c;
        const float *w = tp_sparse_matrix_data(m, mk->t[i].layer, mk->t[i].matrix, &r, &c);
        for (size_t e = 0; e < (size_t)r * c; e++) zeros += w[e] == 0.0f;
    }
    double all_params = (double)tp_config_n_params(&m->cfg);
    printf("\npruned %.0f of %.0f target weights (%.2f%%; %.0f zeros in them), %.2f%% of all %.0f parameters\n", tot_p,
           tot_n, tot_n > 0 ? 100.0 * tot_p / tot_n : 0.0, zeros, 100.0 * tot_p / all_params, all_params);
    if (j) {
        cJSON *t = cJSON_AddObjectToObject(j, "total");
        cJSON_AddNumberToObject(t, "pruned", tot_p);
        cJSON_AddNumberToObject(t, "total", tot_n);
        cJSON_AddNumberToObject(t, "sparsity", tot_n > 0 ? tot_p / tot_n : 0.0);
        cJSON_AddNumberToObject(t, "zeros", zeros);
        cJSON_AddNumberToObject(t, "model_parameters", all_params);
        cJSON *pm = cJSON_AddObjectToObject(j, "per_matrix");
        for (int k = 0; k < TP_SP_MATRICES; k++)
            if (mat_n[k] > 0) cJSON_AddNumberToObject(pm, tp_sparse_matrix_name(k), mat_p[k] / mat_n[k]);
    }
}

int cmd_sparsify(int argc, char **argv) {
    static const struct option opts[] = {{"method", required_argument, 0, 'M'},
                                         {"sparsity", required_argument, 0, 's'},
                                         {"nm", required_argument, 0, 'N'},
                                         {"data", required_argument, 0, 'd'},
                                         {"samples", required_argument, 0, 'n'},
                                         {"seq", required_argument, 0, 'T'},
                                         {"seq-len", required_argument, 0, 'T'},
                                         {"targets", required_argument, 0, 'g'},
                                         {"scope", required_argument, 0, 'S'},
                                         {"damp", required_argument, 0, 'D'},
                                         {"blocksize", required_argument, 0, 'B'},
                                         {"batch", required_argument, 0, 'b'},
                                         {"out", required_argument, 0, 'o'},
                                         {"mask-out", required_argument, 0, 'k'},
                                         {"dtype", required_argument, 0, 'y'},
                                         {"threads", required_argument, 0, 't'},
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *method = NULL, *data = NULL, *out = NULL, *mask_out = NULL, *json = NULL, *targets = NULL;
    const char *dtype = "F32", *scope = "layer";
    int samples = 128, seq = 512, threads = 0, has_sparsity = 0, has_nm = 0, c, rc;
    double sparsity = 0, damp = 0.01;
    tp_sparsify_opts o;
    tp_sparsify_opts_default(&o);
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'M': method = optarg; break;
        case 's':
            if ((rc = parse_double("--sparsity", optarg, 0.0, 1.0, &sparsity))) return rc;
            if (sparsity >= 1.0) return cli_usage("sparsify", "--sparsity expects a number in [0, 1), got '%s'", optarg);
            has_sparsity = 1;
            break;
        case 'N':
            if (!parse_nm(optarg, &o.nm_n, &o.nm_m))
                return cli_usage("sparsify", "--nm expects N:M with 1 <= N < M <= 64 (e.g. 2:4), got '%s'", optarg);
            has_nm = 1;
            break;
        case 'd': data = optarg; break;
        case 'n': if ((rc = cli_int("sparsify", "--samples", optarg, 1, 1 << 24, &samples))) return rc; break;
        case 'T': if ((rc = cli_int("sparsify", "--seq", optarg, 1, 1 << 20, &seq))) return rc; break;
        case 'g': targets = optarg; break;
        case 'S': scope = optarg; break;
        case 'D': if ((rc = parse_double("--damp", optarg, 0.0, 1e6, &damp))) return rc; break;
        case 'B': if ((rc = cli_int("sparsify", "--blocksize", optarg, 1, 1 << 20, &o.blocksize))) return rc; break;
        case 'b': if ((rc = cli_int("sparsify", "--batch", optarg, 1, 4096, &o.batch))) return rc; break;
        case 'o': out = optarg; break;
        case 'k': mask_out = optarg; break;
        case 'y': dtype = optarg; break;
        case 't': if ((rc = cli_int("sparsify", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'j': json = optarg ? optarg : "-"; break;
        default: return cli_usage("sparsify", "unknown option");
        }
    }
    if (optind != argc - 1) return cli_usage("sparsify", "expects exactly one MODEL");
    if (!method) return cli_usage("sparsify", "--method magnitude|wanda|sparsegpt is required");
    if (tp_sparse_method_parse(method, &o.method)) return cli_usage("sparsify", "--method: %s", tp_errmsg());
    if (!has_sparsity && !has_nm) return cli_usage("sparsify", "give --sparsity or --nm");
    if (has_sparsity && has_nm) return cli_usage("sparsify", "give --sparsity or --nm, not both");
    if (!out) return cli_usage("sparsify", "-o OUT_DIR is required");
    if (targets && tp_sparse_targets_parse(targets, &o.targets)) return cli_usage("sparsify", "--targets: %s", tp_errmsg());
    if (strcmp(scope, "layer") && strcmp(scope, "global"))
        return cli_usage("sparsify", "--scope must be layer or global, got '%s'", scope);
    o.global = !strcmp(scope, "global");
    if (o.global && (o.method != TP_SPARSE_MAGNITUDE || has_nm))
        return cli_usage("sparsify", "--scope global is for unstructured magnitude pruning only");
    if (strcmp(dtype, "F32") && strcmp(dtype, "BF16") && strcmp(dtype, "F16"))
        return cli_usage("sparsify", "--dtype must be F32, BF16 or F16, got '%s'", dtype);
    int calib = o.method != TP_SPARSE_MAGNITUDE;
    if (calib && !data) return cli_usage("sparsify", "--method %s needs --data FILE (calibration text)", method);
    if (!calib && data) fprintf(stderr, "taper sparsify: magnitude pruning does not use --data; ignored\n");
    o.sparsity = has_sparsity ? sparsity : 0.0;
    if (!has_nm) o.nm_n = o.nm_m = 0;
    o.damp = damp;
    cli_set_threads(threads);

    tp_model *m = NULL;
    tp_status s = tp_model_load(argv[optind], &m);
    if (s) return cli_error(s);
    int32_t *ids = NULL;
    size_t n = 0;
    if (calib) {
        size_t avail = 0;
        if ((s = tp_calib_load(m->tok, data, seq, &ids, &avail))) {
            tp_model_free(m);
            return cli_error(s);
        }
        n = (size_t)samples;
        if (avail < n) {
            fprintf(stderr, "taper sparsify: %s has %zu samples of %d tokens; using all of them (asked for %d)\n", data,
                    avail, seq, samples);
            n = avail;
        }
    }
    tp_progress prog;
    tp_progress_begin(&prog, "sparsify", 0, "tok");
    o.progress = calib ? &prog : NULL;
    tp_mask *mk = NULL;
    tp_sparsify_stats st;
    s = tp_sparsify(m, ids, n, seq, &o, &mk, &st);
    tp_progress_end(&prog);
    free(ids);
    if (s) {
        tp_model_free(m);
        /* tp_sparsify_opts fields the library's messages name, as flags */
        static const char *const flags[] = {"damp", "--damp", "blocksize", "--blocksize", NULL};
        return cli_error_map(s, flags);
    }
    double ts = tp_time_s();
    char *mpath = NULL;
    if (!mask_out) {
        size_t l = strlen(out) + 16;
        mpath = malloc(l);
        if (mpath) snprintf(mpath, l, "%s/mask.tpmask", out);
    }
    s = tp_model_save_hf(m, out, dtype);
    if (!s) cli_note_hf_tokenizer(out);
    if (!s) s = tp_mask_save(mk, mask_out ? mask_out : mpath);
    double save_s = tp_time_s() - ts;
    if (s) {
        free(mpath);
        tp_mask_free(mk);
        tp_model_free(m);
        return cli_error(s);
    }
    char tl[64], pattern[32];
    targets_string(o.targets, tl, sizeof tl);
    if (o.nm_m) snprintf(pattern, sizeof pattern, "%d:%d", o.nm_n, o.nm_m);
    else snprintf(pattern, sizeof pattern, "%.4g%% unstructured", 100.0 * o.sparsity);
    printf("model        %s (%d layers)\n", argv[optind], m->cfg.n_layers);
    printf("method       %s, %s", method, pattern);
    if (o.method == TP_SPARSE_MAGNITUDE && !o.nm_m) printf(", scope %s", scope);
    if (o.method == TP_SPARSE_SPARSEGPT) printf(", damp %g, blocksize %d", o.damp, o.blocksize);
    printf(", targets %s\n", tl);
    if (calib) printf("calibration  %s: %zu samples x %d tokens (%zu tokens)\n", data, n, seq, st.calib_tokens);
    printf("time         %.2f s (layer forwards + statistics %.2f s, scoring/solving %.2f s), saving %.2f s; peak RSS %.0f MiB\n",
           st.seconds, st.forward_seconds, st.solve_seconds, save_s, peak_rss_mib());
    printf("wrote        %s (%s), mask %s\n", out, dtype, mask_out ? mask_out : mpath);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", argv[optind]);
    cJSON_AddStringToObject(j, "method", method);
    cJSON_AddStringToObject(j, "pattern", o.nm_m ? pattern : "unstructured");
    if (!o.nm_m) cJSON_AddNumberToObject(j, "sparsity", o.sparsity);
    cJSON_AddStringToObject(j, "scope", scope);
    cJSON_AddStringToObject(j, "targets", tl);
    if (o.method == TP_SPARSE_SPARSEGPT) {
        cJSON_AddNumberToObject(j, "damp", o.damp);
        cJSON_AddNumberToObject(j, "blocksize", o.blocksize);
    }
    if (calib) {
        cJSON_AddStringToObject(j, "data", data);
        cJSON_AddNumberToObject(j, "samples", (double)n);
        cJSON_AddNumberToObject(j, "seq_len", seq);
        cJSON_AddNumberToObject(j, "calibration_tokens", (double)st.calib_tokens);
    }
    cJSON_AddNumberToObject(j, "seconds", st.seconds);
    cJSON_AddNumberToObject(j, "forward_seconds", st.forward_seconds);
    cJSON_AddNumberToObject(j, "solve_seconds", st.solve_seconds);
    cJSON_AddNumberToObject(j, "peak_rss_mib", peak_rss_mib());
    cJSON_AddStringToObject(j, "output", out);
    cJSON_AddStringToObject(j, "dtype", dtype);
    cJSON_AddStringToObject(j, "mask", mask_out ? mask_out : mpath);
    report(m, mk, j);
    free(mpath);
    tp_mask_free(mk);
    tp_model_free(m);
    /* the report also lands beside the model */
    size_t l = strlen(out) + 20;
    char *rp = malloc(l);
    if (rp) {
        snprintf(rp, l, "%s/sparsify.json", out);
        s = tp_write_json_atomic(rp, j);
    }
    free(rp);
    if (s) {
        cJSON_Delete(j);
        return cli_error(s);
    }
    if (json) return cli_json_out(j, json);
    cJSON_Delete(j);
    return CLI_OK;
}
