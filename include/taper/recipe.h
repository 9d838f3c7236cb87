/* The whole compression recipe (Minitron) as one library call: a tp_recipe holds every setting
 * (defaults, JSON read / write / comparison, validation) and tp_compress_run runs the stages into
 * a run directory as plain C calls, resumable stage by stage:
 *   sdg (without data) -> correct (teacher correction) -> teacher-ppl/-tasks -> corrected-ppl/-tasks
 *   -> per round r of `iterate`: importance -> prune -> pruned eval -> distill -> student eval
 *   -> report.json.
 * A finished stage leaves RUN_DIR/.done-<stage> and is skipped when the run is started again; the
 * training stages continue from their own checkpoints. What lives elsewhere: each stage's work
 * (compress.h, trainer.h, distill.h, eval.h, sdg.h); rendering the report for people (cli/). */
#ifndef TAPER_RECIPE_H
#define TAPER_RECIPE_H

#include <signal.h>
#include <stddef.h>
#include "taper/status.h"

struct cJSON;

/* Every setting of a compression run. Strings are owned by the recipe (tp_recipe_set copies). The
 * keys of tp_recipe_set, of the JSON form and of messages are the names in the comments. */
typedef struct {
    char *teacher;        /* "teacher": GGUF file or HF folder (required) */
    char *out;            /* "out": run directory (tp_compress_run's run_dir wins) */
    size_t target_params; /* "target-params": parameters of the student (required; text: 90M, 1.5B) */
    char *axes;           /* "axes": all | width | depth: which axes the search may shrink */
    double tolerance;     /* "tolerance": the search takes shapes within +-tolerance of each target */
    char *search;         /* "search": untrained (default: the shapes ranked by untrained held-out loss)
                             | short-kd (the best "candidates" of them each distilled "search-steps"
                             steps from one teacher cache, ranked by held-out KL: tp_search_run) */
    int candidates;       /* "candidates": shapes distilled by short-kd (default 4) */
    int search_steps;     /* "search-steps": their distillation steps (default 200) */
    char *data;           /* "data": distillation token shards; NULL: the teacher generates them (sdg) */
    char *calib;          /* "calib": calibration text; NULL: the SDG samples (then data must be NULL) */
    int calib_samples, calib_seq, depth_samples; /* "calib-samples", "calib-seq", "depth-samples" */
    char *agg;            /* "agg": BATCH,SEQ aggregation pair the pruning ranks by (e.g. mean,l2);
                             NULL: the score file's default (l2,mean) */
    int sdg_samples, sdg_tokens;                 /* "sdg-samples", "sdg-tokens" */
    int correct_steps;    /* "correct-steps": teacher correction steps (0 = off) */
    float correct_lr;     /* "correct-lr": its peak learning rate (cosine to a tenth) */
    int correct_warmup;   /* "correct-warmup" */
    int iterate;          /* "iterate": prune -> distill rounds */
    char *iterate_teacher; /* "iterate-teacher": original | prev */
    int steps, seq, batch, accum; /* "steps", "seq", "batch", "accum" of every distillation */
    float lr;             /* "lr": peak (cosine to a tenth) */
    int warmup;           /* "warmup" */
    char *kd;             /* "kd": fkl | rkl | jsd | none */
    float tau;            /* "tau" */
    int tau2;             /* "tau2": multiply the logits loss by tau^2 */
    int topk;             /* "topk": 0 = full vocabulary */
    float ce_weight;      /* "ce-weight" */
    char *inter;          /* "inter": none | cosine | mse */
    char *alpha;          /* "alpha": dynamic or a number */
    int emb_loss;         /* "emb-loss" */
    char *precision;      /* "precision": fp32 | bf16, of the training stages */
    int ckpt_every;       /* "ckpt-every" */
    char *eval_text;      /* "eval-text": perplexity text */
    int eval_chunks, eval_ctx; /* "eval-chunks", "eval-ctx" */
    char *tasks;          /* "tasks": comma list ("" = none; NULL until tp_recipe_finalize) */
    int task_limit;       /* "task-limit" */
    char *data_dir;       /* "data-dir": benchmark files (NULL: the caller's default) */
    int threads;          /* "threads": OpenMP threads (0 = leave as set) */
} tp_recipe;

/* One setting: its key, and whether it takes a value (a flag does not). */
typedef struct {
    const char *key;
    int is_flag;
} tp_recipe_key;

/* The settings in order (the JSON form lists them so). */
int tp_recipe_n_keys(void);
const tp_recipe_key *tp_recipe_key_at(int i);

/* Fills r with the defaults (teacher, out and target unset). tp_recipe_free releases the strings. */
tp_status tp_recipe_init(tp_recipe *r);
void tp_recipe_free(tp_recipe *r);
/* Sets key from text (numbers parsed whole and range-checked, counts like 90M, flags "1"/"true"
 * or "0"/"false"). Fails naming the key with TP_ERR_ARG. */
tp_status tp_recipe_set(tp_recipe *r, const char *key, const char *text);
/* Same, naming the setting label in messages (a front end's name for it, e.g. "--steps"). */
tp_status tp_recipe_set_as(tp_recipe *r, const char *key, const char *text, const char *label);
/* Applies a JSON object of settings (strings, numbers, booleans for flags) on top of r; origin
 * names it in messages. Unknown or repeated keys fail. */
tp_status tp_recipe_apply_json(tp_recipe *r, const char *json_text, const char *origin);
/* The effective settings as a JSON object (teacher first, then every key in order). */
struct cJSON *tp_recipe_to_json(const tp_recipe *r);
/* Lists into buf the keys whose values differ between two JSON forms (old, cur), one per line as
 * "  key: OLD in the run, NEW now"; settings free to change (threads, out) are not compared.
 * Returns the number of differences. */
int tp_recipe_diff(const struct cJSON *old, const struct cJSON *cur, char *buf, size_t n);
/* Fills what the recipe leaves to its surroundings: tasks (when unset: arc_easy,piqa,winogrande
 * if data_dir, else default_data_dir, holds their files; else none). */
tp_status tp_recipe_finalize(tp_recipe *r, const char *default_data_dir);
/* Checks the settings together (required ones, choices, files that must exist); names the key. */
tp_status tp_recipe_validate(const tp_recipe *r);
/* Parameter target of round r (1-based) from a teacher of p0 parameters: round(p0 (N/p0)^(r/K)),
 * the last round exactly N. */
size_t tp_recipe_round_target(const tp_recipe *r, size_t p0, int round);

/* ---- running ---- */

typedef enum { TP_STAGE_BEGIN = 0, TP_STAGE_SKIPPED, TP_STAGE_DONE, TP_STAGE_FAILED } tp_stage_event;

typedef struct {
    /* NULL, or told about every stage (name as in .done-<name>; seconds for DONE / FAILED) */
    void (*on_stage)(void *user, const char *stage, tp_stage_event ev, double seconds);
    void *user;
    volatile sig_atomic_t *stop; /* NULL, or a flag (set by a signal handler): stop at the next
                                    step or stage boundary, after writing a checkpoint */
    int isolate;                 /* run each stage in a child process (fork, then the same call) */
    int force;                   /* go on when RUN_DIR/recipe.json holds other settings */
    const char *data_dir;        /* benchmark files when the recipe names none (data-dir) */
} tp_compress_hooks;

typedef struct {
    int stopped;          /* stopped on request (hooks->stop) before the end */
    char failed_stage[64]; /* the stage that failed ("" when none did) */
    size_t teacher_params;
    double seconds;       /* this invocation */
} tp_compress_result;

/* Runs (or resumes) the recipe in run_dir (created): keeps RUN_DIR/recipe.json (a rerun whose
 * settings differ fails with TP_ERR_ARG, listing them, unless hooks->force), runs every stage not
 * done yet, and writes RUN_DIR/report.json. hooks and res may be NULL. */
tp_status tp_compress_run(const tp_recipe *r, const char *run_dir, const tp_compress_hooks *hooks,
                          tp_compress_result *res);

/* The report of a finished (or partial) run as JSON, from the run directory's files: every model
 * (teacher, corrected teacher, per round the pruned model and the student) with its shape,
 * parameters, perplexity and task scores, the correction and distillation curves' ends. */
tp_status tp_compress_report(const tp_recipe *r, const char *run_dir, struct cJSON **out);

/* File and stage names of round r: base with one round, base-r with several ("pruned-2"). */
char *tp_recipe_round_name(const tp_recipe *r, const char *base, int round, const char *suffix);
/* Round r's student folder relative to the run directory ("student" for the last round). */
char *tp_recipe_student_dir(const tp_recipe *r, int round);

#endif
