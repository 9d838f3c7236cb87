/* taper eval MODEL --tasks ...: zero-shot benchmarks scored as lm-evaluation-harness scores them
 * (src/eval/tasks.c, src/eval/mc.c; docs/eval.md). Options -> tp_eval_job (src/eval/eval_job.c) -> the table. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "taper/tasks.h"

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

/* Live table: the header once the model is loaded (k = -1), then each task's row as it finishes. */
static void on_task(void *user, const tp_eval_job_result *res, int k) {
    const tp_eval_job *j = user;
    if (k < 0) {
        char lim[32];
        if (j->limit) snprintf(lim, sizeof lim, "%d", j->limit);
        else snprintf(lim, sizeof lim, "none");
        printf("model       %s\ndata        %s\nprotocol    lm-evaluation-harness zero-shot, HFLM scoring; "
               "max_length %d; batch %d; limit %s\n\n",
               j->model, j->data_dir, res->max_length, j->batch, lim);
        printf("%-18s %7s %9s %9s %9s %9s  %10s\n", "task", "items", "acc", "stderr", "acc_norm", "stderr", "time");
        return;
    }
    const tp_task_result *r = &res->results[k];
    print_row(res->tasks[k], r);
    for (int c = 0; c < r->n_cats; c++) { /* MMLU: its categories, as lm_eval's groups */
        char nm[64];
        snprintf(nm, sizeof nm, " - %s", r->cats[c].name);
        printf("%-18s %7zu", nm, r->cats[c].n);
        print_num(r->cats[c].acc, 4);
        print_num(r->cats[c].acc_stderr, 4);
        printf("\n");
    }
    fflush(stdout);
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
    tp_eval_job job;
    tp_eval_job_default(&job);
    const char *json = NULL;
    const char *files[MAX_TASKS];
    int threads = 0, c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); return CLI_OK;
        case 'T': job.tasks = optarg; break;
        case 'f':
            if (job.n_task_files == MAX_TASKS) return cli_usage("eval", "at most %d --task-file", MAX_TASKS);
            files[job.n_task_files++] = optarg;
            break;
        case 'l': if ((rc = cli_int("eval", "--limit", optarg, 0, 1 << 30, &job.limit))) return rc; break;
        case 'd': job.data_dir = optarg; break;
        case 'b': if ((rc = cli_int("eval", "--batch", optarg, 1, 4096, &job.batch))) return rc; break;
        case 'm': if ((rc = cli_int("eval", "--max-length", optarg, 1, 1 << 24, &job.max_length))) return rc; break;
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
    job.model = argv[optind];
    job.task_files = files;
    if (!job.data_dir) {
        const char *env = getenv("TAPER_DATA");
        job.data_dir = env && *env ? env : "../shared/data";
    }
    /* the task list is a usage error, before anything is loaded */
    const char *names[MAX_TASKS];
    int n_names = 0;
    if (tp_task_list_parse(job.tasks ? job.tasks : job.n_task_files ? NULL : "all", names, MAX_TASKS, &n_names))
        return cli_usage("eval", "%s", tp_errmsg());
    if (n_names + job.n_task_files == 0) return cli_usage("eval", "no task given (--tasks LIST or --task-file FILE)");
    cli_set_threads(threads);
    if (json && strcmp(json, "-")) job.json_path = json;
    job.on_task = on_task;
    job.user = &job;
    tp_eval_job_result res;
    tp_status s = tp_eval_job_run(&job, &res);
    if (s) return cli_error(s);
    if (res.n_mc > 1) {
        printf("%-18s %7d", "macro average", res.n_mc);
        print_num(res.macro_acc, 4);
        printf(" %9s", "");
        print_num(res.macro_acc_norm_or_acc, 4);
        printf("   (acc over the multiple-choice tasks; acc_norm column: acc_norm where reported, else acc)\n");
    }
    rc = CLI_OK;
    if (json && !job.json_path) {
        cJSON *j = tp_eval_job_json(&job, &res);
        rc = j ? cli_json_out(j, "-") : cli_error(tp_fail(TP_ERR_NOMEM, "out of memory building the JSON"));
    }
    tp_eval_job_result_free(&res);
    return rc;
}
