/* taper eval MODEL --tasks ...: zero-shot benchmarks scored as lm-evaluation-harness scores them
 * (src/eval/tasks.c, src/eval/mc.c; docs/eval.md). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "taper/model.h"
#include "taper/tasks.h"
#include "taper/util.h"

static const char *HELP =
    "usage: taper eval MODEL [--tasks LIST] [--task-file FILE]... [--limit N] [--data-dir DIR]\n"
    "                  [--batch N] [--max-length N] [--precision P] [--threads N]\n"
    "                  [--json[=FILE]]\n\n"
    "Zero-shot log-likelihood benchmarks, scored as lm-evaluation-harness (HF models) scores them:\n"
    "same prompts, target delimiter, tokenization of context/continuation (HFLM._encode_pair),\n"
    "acc = argmax of the continuations' log-likelihoods, acc_norm = argmax of ll / len(choice in\n"
    "characters), standard errors as the harness reports them; WikiText-2 word/byte perplexity and\n"
    "bits per byte from rolling windows of max-length tokens. See docs/eval.md.\n\n"
    "  --tasks LIST       comma-separated: arc_easy, arc_challenge, hellaswag, piqa, winogrande,\n"
    "                     mmlu, wikitext, or all (default: all, unless --task-file is given)\n"
    "  --task-file FILE   also run a task in the generic JSONL format (docs/eval.md); repeatable\n"
    "  --limit N          first N items of each task (mmlu: of each subject, as lm_eval --limit;\n"
    "                     wikitext: documents); default all\n"
    "  --data-dir DIR     benchmark files (default $TAPER_DATA, else ../shared/data)\n"
    "  --batch N          items scored per forward pass (default 8)\n"
    "  --max-length N     context for truncation and rolling windows (default: the model's\n"
    "                     max_position_embeddings, as the harness uses for HF models)\n"
    "  --precision P      fp32 (default) or bf16 weight products (bf16 inputs, fp32 accumulation)\n"
    "  --threads N        OpenMP threads (default: all cores)\n"
    "  --json[=FILE]      also write every number, per item too, and the settings as JSON\n"
    "                     (stdout, or FILE)\n"
    "  -h, --help         this help\n";

#define MAX_TASKS 64

static void add_num(cJSON *o, const char *k, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

static const char *kind_name(tp_task_kind k) {
    return k == TP_TASK_MC ? "multiple_choice" : k == TP_TASK_LL ? "loglikelihood" : "loglikelihood_rolling";
}

static void fmt_time(char *buf, size_t n, double s) {
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%dh%02dm%02ds", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60) snprintf(buf, n, "%dm%02ds", t / 60, t % 60);
    else snprintf(buf, n, "%.1fs", s);
}

static void print_num(double v, int prec) {
    if (isfinite(v)) printf(" %9.*f", prec, v);
    else printf(" %9s", "-");
}

static cJSON *group_json(const tp_group_result *g, int norm) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", g->name ? g->name : "");
    cJSON_AddNumberToObject(o, "items", (double)g->n);
    add_num(o, "acc", g->acc);
    add_num(o, "acc_stderr", g->acc_stderr);
    if (norm) {
        add_num(o, "acc_norm", g->acc_norm);
        add_num(o, "acc_norm_stderr", g->acc_norm_stderr);
    }
    return o;
}

static cJSON *task_json(const tp_task *t, const tp_task_result *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "task", t->name);
    cJSON_AddStringToObject(o, "source", t->source);
    cJSON_AddStringToObject(o, "kind", kind_name(t->kind));
    cJSON_AddStringToObject(o, "format", t->format);
    cJSON_AddNumberToObject(o, "items", (double)t->n_items);
    cJSON *mt = cJSON_AddObjectToObject(o, "metrics");
    if (t->kind == TP_TASK_MC) {
        add_num(mt, "acc", r->acc);
        add_num(mt, "acc_stderr", r->acc_stderr);
        if (t->has_acc_norm) {
            add_num(mt, "acc_norm", r->acc_norm);
            add_num(mt, "acc_norm_stderr", r->acc_norm_stderr);
        }
    } else if (t->kind == TP_TASK_LL) {
        add_num(mt, "acc", r->acc);
        add_num(mt, "acc_stderr", r->acc_stderr);
        add_num(mt, "ll_mean", r->ll_mean);
        add_num(mt, "perplexity", r->perplexity);
    } else {
        add_num(mt, "word_perplexity", r->word_perplexity);
        add_num(mt, "byte_perplexity", r->byte_perplexity);
        add_num(mt, "bits_per_byte", r->bits_per_byte);
        add_num(mt, "ll_sum", r->ll_sum);
        cJSON_AddNumberToObject(mt, "words", (double)r->words);
        cJSON_AddNumberToObject(mt, "bytes", (double)r->bytes);
    }
    cJSON_AddNumberToObject(o, "tokens_forwarded", (double)r->tokens);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    if (r->n_groups) {
        cJSON *g = cJSON_AddArrayToObject(o, "subtasks");
        for (int k = 0; k < r->n_groups; k++) cJSON_AddItemToArray(g, group_json(&r->groups[k], t->has_acc_norm));
    }
    if (r->n_cats) {
        cJSON *g = cJSON_AddArrayToObject(o, "categories");
        for (int k = 0; k < r->n_cats; k++) cJSON_AddItemToArray(g, group_json(&r->cats[k], t->has_acc_norm));
    }
    cJSON *items = cJSON_AddArrayToObject(o, "samples");
    for (size_t i = 0; i < t->n_items; i++) {
        const tp_task_item *it = &t->items[i];
        const tp_item_result *x = &r->items[i];
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "i", (double)i);
        if (t->n_groups) cJSON_AddStringToObject(s, "subtask", t->groups[it->group]);
        cJSON *ll = cJSON_AddArrayToObject(s, "ll");
        cJSON *gr = cJSON_AddArrayToObject(s, "greedy");
        for (int k = 0; k < it->n; k++) {
            cJSON_AddItemToArray(ll, cJSON_CreateNumber(x->ll[k]));
            cJSON_AddItemToArray(gr, cJSON_CreateNumber(x->greedy[k]));
        }
        if (t->kind == TP_TASK_MC) {
            cJSON_AddNumberToObject(s, "gold", it->gold);
            cJSON_AddNumberToObject(s, "pred", x->pred);
            if (t->has_acc_norm) cJSON_AddNumberToObject(s, "pred_norm", x->pred_norm);
        }
        if (t->kind == TP_TASK_ROLLING) {
            cJSON_AddNumberToObject(s, "words", (double)it->words);
            cJSON_AddNumberToObject(s, "bytes", (double)it->bytes);
        }
        cJSON_AddNumberToObject(s, "ctx_tokens", x->n_ctx_tokens);
        cJSON_AddNumberToObject(s, "cont_tokens", x->n_cont_tokens);
        cJSON_AddItemToArray(items, s);
    }
    return o;
}

static void print_row(const tp_task *t, const tp_task_result *r) {
    char tm[32];
    fmt_time(tm, sizeof tm, r->seconds);
    printf("%-18s %7zu", t->name, t->n_items);
    if (t->kind == TP_TASK_ROLLING) {
        printf("  word_perplexity %.4f  byte_perplexity %.4f  bits_per_byte %.4f", r->word_perplexity,
               r->byte_perplexity, r->bits_per_byte);
        printf("  %10s\n", tm);
        return;
    }
    print_num(r->acc, 4);
    print_num(r->acc_stderr, 4);
    print_num(r->acc_norm, 4);
    print_num(r->acc_norm_stderr, 4);
    if (t->kind == TP_TASK_LL) printf("  ll_mean %.4f  perplexity %.4f", r->ll_mean, r->perplexity);
    printf("  %10s\n", tm);
}

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {{"tasks", required_argument, 0, 'T'},
                                         {"task-file", required_argument, 0, 'f'},
                                         {"limit", required_argument, 0, 'l'},
                                         {"data-dir", required_argument, 0, 'd'},
                                         {"batch", required_argument, 0, 'b'},
                                         {"max-length", required_argument, 0, 'm'},
                                         {"threads", required_argument, 0, 't'},
                                         {"precision", required_argument, 0, 'P'},
                                         {"json", optional_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *tasks_arg = NULL, *json = NULL, *data_dir = NULL;
    const char *files[MAX_TASKS];
    int n_files = 0, limit = 0, batch = 8, max_len = 0, threads = 0, c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'T': tasks_arg = optarg; break;
        case 'f':
            if (n_files == MAX_TASKS) return cli_usage("eval", "at most %d --task-file", MAX_TASKS);
            files[n_files++] = optarg;
            break;
        case 'l': if ((rc = cli_int("eval", "--limit", optarg, 0, 1 << 30, &limit))) return rc; break;
        case 'd': data_dir = optarg; break;
        case 'b': if ((rc = cli_int("eval", "--batch", optarg, 1, 4096, &batch))) return rc; break;
        case 'm': if ((rc = cli_int("eval", "--max-length", optarg, 1, 1 << 24, &max_len))) return rc; break;
        case 't': if ((rc = cli_int("eval", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'P': if ((rc = cli_precision("eval", optarg))) return rc; break;
        case 'j':
            json = optarg ? optarg : "-";
            /* also accept "--json out.json" */
            if (!optarg && optind < argc && strlen(argv[optind]) > 5 &&
                !strcmp(argv[optind] + strlen(argv[optind]) - 5, ".json"))
                json = argv[optind++];
            break;
        default: return cli_usage("eval", "unknown option");
        }
    }
    if (optind != argc - 1) return cli_usage("eval", "expects exactly one MODEL");
    const char *model_path = argv[optind];
    if (!data_dir) {
        const char *env = getenv("TAPER_DATA");
        data_dir = env && *env ? env : "../shared/data";
    }
    /* the task list: names validated before the model is loaded */
    size_t n_known;
    const char *const *known = tp_task_names(&n_known);
    const char *names[MAX_TASKS];
    int n_names = 0;
    char *list = NULL;
    if (!tasks_arg && n_files == 0) tasks_arg = "all";
    if (tasks_arg) {
        list = strdup(tasks_arg);
        if (!list) return cli_error(tp_fail(TP_ERR_NOMEM, "out of memory"));
        for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (!*tok) continue;
            if (!strcmp(tok, "all")) {
                for (size_t k = 0; k < n_known && n_names < MAX_TASKS; k++) names[n_names++] = known[k];
                continue;
            }
            size_t k = 0;
            while (k < n_known && strcmp(tok, known[k])) k++;
            if (k == n_known) {
                rc = cli_usage("eval",
                               "unknown task '%s' (known: arc_easy, arc_challenge, hellaswag, piqa, winogrande, "
                               "mmlu, wikitext, all; or --task-file FILE)",
                               tok);
                free(list);
                return rc;
            }
            if (n_names == MAX_TASKS) {
                free(list);
                return cli_usage("eval", "too many tasks");
            }
            names[n_names++] = known[k];
        }
    }
    if (n_names + n_files == 0) {
        free(list);
        return cli_usage("eval", "no task given (--tasks LIST or --task-file FILE)");
    }
    cli_set_threads(threads);
    /* load every task first, so that missing data fails before the model is loaded */
    int n_tasks = n_names + n_files;
    tp_task *tasks[2 * MAX_TASKS] = {0};
    tp_status s = TP_OK;
    for (int k = 0; k < n_tasks && !s; k++)
        s = k < n_names ? tp_task_load(names[k], data_dir, (size_t)limit, &tasks[k])
                        : tp_task_load_file(files[k - n_names], (size_t)limit, &tasks[k]);
    free(list);
    tp_model *m = NULL;
    if (!s) s = tp_model_load(model_path, &m);
    if (!s) s = tp_model_prepare_precision(m, 1);
    if (!s && !m->tok) s = tp_fail(TP_ERR_ARG, "%s has no tokenizer (tokenizer.json)", model_path);
    if (s) {
        for (int k = 0; k < n_tasks; k++) tp_task_free(tasks[k]);
        tp_model_free(m);
        return cli_error(s);
    }
    tp_eval_opts eo = {.max_length = max_len, .batch = batch};
    int eff_len = max_len > 0 ? max_len : m->cfg.max_pos > 0 ? m->cfg.max_pos : 2048;
    char lim[32];
    if (limit) snprintf(lim, sizeof lim, "%d", limit);
    else snprintf(lim, sizeof lim, "none");
    printf("model       %s\ndata        %s\nprotocol    lm-evaluation-harness zero-shot, HFLM scoring; max_length %d; "
           "batch %d; limit %s\n\n",
           model_path, data_dir, eff_len, batch, lim);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", model_path);
    cJSON *set = cJSON_AddObjectToObject(root, "settings");
    cJSON_AddStringToObject(set, "protocol", "lm-evaluation-harness 0.4.13 zero-shot, HFLM loglikelihood scoring");
    cJSON_AddStringToObject(set, "data_dir", data_dir);
    cJSON_AddNumberToObject(set, "max_length", eff_len);
    cJSON_AddNumberToObject(set, "batch", batch);
    cJSON_AddNumberToObject(set, "limit", limit);
    cJSON_AddNumberToObject(set, "num_fewshot", 0);
    cJSON_AddStringToObject(set, "target_delimiter", " ");
    cJSON_AddStringToObject(set, "acc_norm", "argmax of ll / len(choice) in characters");
    cJSON *jt = cJSON_AddArrayToObject(root, "tasks");
    printf("%-18s %7s %9s %9s %9s %9s  %10s\n", "task", "items", "acc", "stderr", "acc_norm", "stderr", "time");
    double sum_acc = 0, sum_best = 0;
    int n_mc = 0;
    for (int k = 0; k < n_tasks && !s; k++) {
        tp_task *t = tasks[k];
        tp_progress prog;
        tp_progress_begin(&prog, t->name, 0, "tok");
        tp_task_result r;
        s = tp_task_run(m, t, &eo, &prog, &r);
        tp_progress_end(&prog);
        if (s) {
            tp_fail_ctx(s, "task %s: ", t->name);
            break;
        }
        print_row(t, &r);
        for (int c = 0; c < r.n_cats; c++) { /* MMLU: its categories, as lm_eval's groups */
            char nm[64];
            snprintf(nm, sizeof nm, " - %s", r.cats[c].name);
            printf("%-18s %7zu", nm, r.cats[c].n);
            print_num(r.cats[c].acc, 4);
            print_num(r.cats[c].acc_stderr, 4);
            printf("\n");
        }
        fflush(stdout);
        if (t->kind == TP_TASK_MC) {
            sum_acc += r.acc;
            sum_best += t->has_acc_norm ? r.acc_norm : r.acc;
            n_mc++;
        }
        cJSON_AddItemToArray(jt, task_json(t, &r));
        tp_task_result_free(&r);
    }
    if (!s && n_mc > 1) {
        printf("%-18s %7d", "macro average", n_mc);
        print_num(sum_acc / n_mc, 4);
        printf(" %9s", "");
        print_num(sum_best / n_mc, 4);
        printf("   (acc over the multiple-choice tasks; acc_norm column: acc_norm where reported, else acc)\n");
        cJSON *mac = cJSON_AddObjectToObject(root, "macro_average");
        cJSON_AddNumberToObject(mac, "tasks", n_mc);
        add_num(mac, "acc", sum_acc / n_mc);
        add_num(mac, "acc_norm_or_acc", sum_best / n_mc);
    }
    for (int k = 0; k < n_tasks; k++) tp_task_free(tasks[k]);
    tp_model_free(m);
    if (s) {
        cJSON_Delete(root);
        return cli_error(s);
    }
    if (json) return cli_json_out(root, json);
    cJSON_Delete(root);
    return CLI_OK;
}
