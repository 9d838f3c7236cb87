/* taper command-line entry point: dispatches to the cmd_*.c subcommands. */
#include <stdio.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "taper/comm.h"
#include "taper/model.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define TAPER_VERSION "0.1.0"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *what;
} commands[] = {
    {"info", cmd_info, "architecture, parameter counts and tensor table of a model"},
    {"generate", cmd_generate, "generate text from a prompt (greedy or sampled)"},
    {"ppl", cmd_ppl, "perplexity of a text file under stated protocols"},
    {"convert", cmd_convert, "convert between GGUF and HF folders (safetensors)"},
    {"eval", cmd_eval, "zero-shot benchmarks scored as lm-evaluation-harness does"},
    {"importance", cmd_importance, "score heads, neurons, channels and layers on calibration text"},
    {"prune", cmd_prune, "structured pruning (width and depth) to target sizes or a parameter budget"},
    {"search", cmd_search, "architecture search: candidate shapes ranked after a short distillation each"},
    {"sparsify", cmd_sparsify, "unstructured and N:M sparsity (magnitude, Wanda, SparseGPT)"},
    {"tokenize", cmd_tokenize, "turn text / jsonl / directories into binary token shards"},
    {"generate-data", cmd_generate_data, "synthetic training data sampled from a teacher (SDG)"},
    {"train", cmd_train, "causal-LM training with AdamW, checkpoints and exact resume"},
    {"distill", cmd_distill, "knowledge distillation of a student from a teacher (train + KD losses)"},
    {"teacher-cache", cmd_teacher_cache, "precompute a teacher's top-k logits over the training windows"},
    {"compress", cmd_compress, "the whole recipe: importance, prune, distil, evaluate, export, report"},
    {"bench", cmd_bench, "prompt and generation speed, batched (llama-batched-bench's protocol)"},
};

static void usage(FILE *f) {
    fprintf(f, "taper %s — structured pruning + distillation for LLMs\n\n"
               "usage: taper <command> [options]   (taper <command> --help for details)\n\ncommands:\n",
            TAPER_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].what);
    fprintf(f, "\nMODEL is a .gguf file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).\n"
               "Exit codes: 0 ok, 1 failure, 2 usage error. Progress goes to stderr, results to stdout.\n");
}

/* Settings the libraries read before main runs, so taper restarts itself once when it changes
 * one (only those the user did not set):
 * - OpenMP threads that spin at barriers are a disaster when the cores are shared (measured on 2
 *   busy cores: one-token decoding 0.5 tok/s spinning vs 6.9 tok/s sleeping; a 512-token forward
 *   97 vs 203 tok/s): OMP_WAIT_POLICY=PASSIVE.
 * - OpenBLAS 0.3.21 (Debian 12) does not know recent Xeons and falls back to its SSE3 "Prescott"
 *   kernels there; the attention blocks of training run on OpenBLAS, and a bf16 training step
 *   measured 184 tok/s that way against 300 with its AVX-512 kernels. On a CPU with AVX-512
 *   (F, BW, DQ, VL) whose detected kernels are older, OPENBLAS_CORETYPE names the AVX-512 ones:
 *   Cooperlake with AVX512-BF16, SkylakeX without. */
static int weak_blas_core(const char *core) {
    static const char *const good[] = {"skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5"};
    if (!core) return 0;
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        if (!strcasecmp(core, good[i])) return 0;
    return 1;
}

static void restart_with_settings(char **argv) {
    int changed = 0;
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT") && setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0)
        changed = 1;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (!getenv("OPENBLAS_CORETYPE") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && weak_blas_core(tp_gemm_blas_core()) &&
        setenv("OPENBLAS_CORETYPE", __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX", 1) == 0)
        changed = 1;
#endif
    if (changed) execv("/proc/self/exe", argv); /* returns only on failure: then carry on as we are */
}

/* glibc gives allocations above its mmap threshold (at most 32 MiB) fresh pages from the kernel
 * each time, and the kernel zeroes them: the per-chunk logits (256 x 49152 floats = 48 MiB) and
 * the forward buffers of every micro-batch made clear_page ~10 % of a distillation step. Serving
 * them from the heap and keeping freed memory (up to 1 GiB) reuses the same pages; peak RSS is
 * unchanged (the same buffers are live at the peak). MALLOC_* environment settings win. */
static void keep_freed_memory(void) {
#ifdef __GLIBC__
    if (getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_") || getenv("GLIBC_TUNABLES")) return;
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

/* The environment the library does not read itself: TAPER_PROGRESS, TAPER_GEMM, TAPER_MEM_LIMIT,
 * TAPER_PRECISION (a command's --precision and --mem-limit still override the last two). */
static int apply_environment(void) {
    const char *e = getenv("TAPER_PROGRESS");
    if (e && e[0] == '0') tp_progress_set_mode(0);
    else if (e && e[0] == '1') tp_progress_set_mode(1);
    e = getenv("TAPER_GEMM");
    if (e && *e && tp_set_gemm_backend(e)) fprintf(stderr, "taper: TAPER_GEMM: %s; using the default\n", tp_errmsg());
    tp_set_mem_limit(cli_mem_limit_env()); /* 0 when unset: the memory available */
    e = getenv("TAPER_PRECISION");
    if (e && *e && tp_set_precision(e)) {
        fprintf(stderr, "taper: TAPER_PRECISION: %s\n", tp_errmsg());
        return CLI_USAGE;
    }
    return CLI_OK;
}

/* Several ranks on one machine share its cores: unless told (OMP_NUM_THREADS, --threads), each
 * rank takes its share of the cores it may run on. Rank 0 alone logs, draws progress and prints
 * the results (every rank computes them alike). */
static void settle_ranks(void) {
    tp_comm *w = tp_comm_world();
    if (tp_comm_size(w) < 2) return;
#ifdef _OPENMP
    if (!getenv("OMP_NUM_THREADS")) {
        int n = omp_get_num_procs() / (tp_comm_local_size(w) > 0 ? tp_comm_local_size(w) : 1);
        omp_set_num_threads(n > 0 ? n : 1);
    }
#endif
    if (tp_comm_rank(w) != 0) { /* its errors still reach stderr, with its rank */
        tp_set_log(NULL, NULL);
        tp_progress_set_mode(0);
        if (!freopen("/dev/null", "w", stdout)) fprintf(stderr, "taper: rank %d: cannot silence stdout\n", tp_comm_rank(w));
    }
}

static int run_command(int argc, char **argv);

static int wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return 1;
    return 0;
}

/* The commands whose work is shared out over several ranks (the others refuse to run N copies). */
static int is_parallel(const char *cmd) {
    return !strcmp(cmd, "train") || !strcmp(cmd, "distill") || !strcmp(cmd, "teacher-cache") ||
           !strcmp(cmd, "importance");
}

int main(int argc, char **argv) {
    restart_with_settings(argv);
    keep_freed_memory();
    if (tp_comm_init(&argc, &argv)) {
        fprintf(stderr, "taper: error: %s\n", tp_errmsg());
        return CLI_FAIL;
    }
    int rc = run_command(argc, argv);
    tp_comm *w = tp_comm_world();
    if (tp_comm_size(w) > 1 && rc != CLI_OK && rc != CLI_USAGE && rc != 130 && rc != 143) {
        /* This rank failed (its message is above): the others may be waiting for it in a
         * collective, so the whole job goes down now rather than hang. A usage error is every
         * rank's alike (same arguments), before any collective: each returns it. */
        fprintf(stderr, "taper: rank %d of %d failed (exit %d): stopping every rank\n", tp_comm_rank(w),
                tp_comm_size(w), rc);
        tp_comm_abort(rc);
    }
    tp_comm_finalize();
    return rc;
}

static int run_command(int argc, char **argv) {
    int env_rc = apply_environment();
    if (env_rc != CLI_OK) return env_rc;
    settle_ranks();
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return CLI_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("taper %s\nmpi %s\n", TAPER_VERSION, tp_comm_built_with_mpi() ? "yes" : "no");
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name)) continue;
        tp_comm *w = tp_comm_world();
        if (tp_comm_size(w) > 1 && !is_parallel(argv[1]) && !wants_help(argc - 1, argv + 1)) {
            if (tp_comm_rank(w) == 0)
                fprintf(stderr,
                        "taper %s runs in one process: start it without mpirun/srun (%d ranks were started). Data "
                        "parallelism covers train, distill, teacher-cache and importance (docs/distributed.md).\n",
                        argv[1], tp_comm_size(w));
            return CLI_USAGE;
        }
        return commands[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "taper: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return CLI_USAGE;
}
