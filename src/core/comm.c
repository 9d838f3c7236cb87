/* The world communicator (include/taper/comm.h): a single process, or MPI when the build found
 * Open MPI (TP_HAVE_MPI) and a launcher started this process. The backend is a small table of
 * operations so that NCCL can sit behind the same calls later.
 *
 * The deterministic sum is a reduce-scatter followed by an all-gather, done in slices: each rank
 * owns a contiguous part of the slice, receives that part from every rank (MPI_Alltoallv), adds
 * the copies in rank order, and the parts are gathered back (MPI_Allgatherv). The traffic per
 * rank is 2 (N-1)/N of the buffer, as a ring all-reduce, and no element's order depends on the
 * transport's choice of algorithm. */
#include "taper/comm.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TP_HAVE_MPI
#include <mpi.h>
#endif

#include "taper/util.h"
#include "core/internal.h"

typedef struct {
    const char *name;
    tp_status (*sum)(tp_comm *c, void *buf, size_t n, int f64);
    tp_status (*max_f64)(tp_comm *c, double *buf, size_t n);
    tp_status (*bcast)(tp_comm *c, void *buf, size_t bytes, int root);
    tp_status (*allgather)(tp_comm *c, const void *mine, void *all, size_t bytes);
    tp_status (*barrier)(tp_comm *c);
} comm_ops;

struct tp_comm {
    const comm_ops *ops;
    int rank, size, local_rank, local_size;
    void *scratch; /* the receive buffer of the sliced sum */
    size_t scratch_bytes;
    tp_comm_stats stats;
};

/* ---------------------------------------------------------------- single process */

static tp_status single_sum(tp_comm *c, void *buf, size_t n, int f64) {
    (void)c, (void)buf, (void)n, (void)f64;
    return TP_OK;
}
static tp_status single_max(tp_comm *c, double *buf, size_t n) {
    (void)c, (void)buf, (void)n;
    return TP_OK;
}
static tp_status single_bcast(tp_comm *c, void *buf, size_t bytes, int root) {
    (void)c, (void)buf, (void)bytes, (void)root;
    return TP_OK;
}
static tp_status single_allgather(tp_comm *c, const void *mine, void *all, size_t bytes) {
    (void)c;
    if (bytes && all != mine) memmove(all, mine, bytes);
    return TP_OK;
}
static tp_status single_barrier(tp_comm *c) {
    (void)c;
    return TP_OK;
}

static const comm_ops single_ops = {"single", single_sum, single_max, single_bcast, single_allgather, single_barrier};

static tp_comm world = {&single_ops, 0, 1, 0, 1, NULL, 0, {0, 0, 0}};
static int world_started;

void tp_comm_share(size_t n, int r, int size, size_t *lo, size_t *hi) {
    if (size < 1) size = 1;
    size_t q = n / (size_t)size, rem = n % (size_t)size, ru = (size_t)(r < 0 ? 0 : r);
    if (ru > (size_t)size) ru = (size_t)size;
    *lo = ru * q + (ru < rem ? ru : rem);
    *hi = *lo + q + (ru < rem ? 1 : 0);
    if (ru == (size_t)size) *hi = *lo = n;
}

/* ---------------------------------------------------------------- MPI */

#ifdef TP_HAVE_MPI

static tp_status mpi_fail(int rc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return tp_fail(TP_ERR_IO, "MPI %s failed: %s", what, msg);
}

#define SLICE_BYTES ((size_t)16 << 20)

static tp_status mpi_sum(tp_comm *c, void *buf, size_t n, int f64) {
    int N = c->size, me = c->rank;
    if (N == 1 || n == 0) return TP_OK;
    size_t es = f64 ? sizeof(double) : sizeof(float), slice = SLICE_BYTES / es;
    if (!c->scratch || c->scratch_bytes < SLICE_BYTES + (size_t)N * es) {
        free(c->scratch);
        c->scratch_bytes = 0;
        c->scratch = malloc(SLICE_BYTES + (size_t)N * es);
        if (!c->scratch) return tp_fail(TP_ERR_NOMEM, "all-reduce: out of memory for a %zu-byte slice", SLICE_BYTES);
        c->scratch_bytes = SLICE_BYTES + (size_t)N * es;
    }
    int *cnt = malloc(4 * (size_t)N * sizeof(int));
    if (!cnt) return tp_fail(TP_ERR_NOMEM, "all-reduce: out of memory");
    int *dsp = cnt + N, *rcnt = cnt + 2 * N, *rdsp = cnt + 3 * N;
    MPI_Datatype type = f64 ? MPI_DOUBLE : MPI_FLOAT;
    tp_status s = TP_OK;
    for (size_t off = 0; off < n && !s; off += slice) {
        size_t len = n - off < slice ? n - off : slice;
        for (int r = 0; r < N; r++) {
            size_t lo, hi;
            tp_comm_share(len, r, N, &lo, &hi);
            cnt[r] = (int)(hi - lo);
            dsp[r] = (int)lo;
        }
        int part = cnt[me];
        for (int r = 0; r < N; r++) {
            rcnt[r] = part;
            rdsp[r] = r * part;
        }
        char *base = (char *)buf + off * es;
        int rc = MPI_Alltoallv(base, cnt, dsp, type, c->scratch, rcnt, rdsp, type, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) {
            s = mpi_fail(rc, "Alltoallv (all-reduce)");
            break;
        }
        if (f64) {
            const double *in = c->scratch;
            double *out = (double *)(void *)base + dsp[me];
            for (int i = 0; i < part; i++) {
                double a = in[i];
                for (int r = 1; r < N; r++) a += in[(size_t)r * (size_t)part + (size_t)i];
                out[i] = a;
            }
        } else {
            const float *in = c->scratch;
            float *out = (float *)(void *)base + dsp[me];
            for (int i = 0; i < part; i++) {
                float a = in[i];
                for (int r = 1; r < N; r++) a += in[(size_t)r * (size_t)part + (size_t)i];
                out[i] = a;
            }
        }
        rc = MPI_Allgatherv(MPI_IN_PLACE, 0, type, base, cnt, dsp, type, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) s = mpi_fail(rc, "Allgatherv (all-reduce)");
    }
    free(cnt);
    return s;
}

static tp_status mpi_max(tp_comm *c, double *buf, size_t n) {
    (void)c;
    for (size_t off = 0; off < n; off += (size_t)1 << 24) {
        size_t len = n - off < ((size_t)1 << 24) ? n - off : ((size_t)1 << 24);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)len, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "Allreduce (max)");
    }
    return TP_OK;
}

static tp_status mpi_bcast(tp_comm *c, void *buf, size_t bytes, int root) {
    (void)c;
    for (size_t off = 0; off < bytes; off += (size_t)1 << 30) {
        size_t len = bytes - off < ((size_t)1 << 30) ? bytes - off : ((size_t)1 << 30);
        int rc = MPI_Bcast((char *)buf + off, (int)len, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "Bcast");
    }
    return TP_OK;
}

static tp_status mpi_allgather(tp_comm *c, const void *mine, void *all, size_t bytes) {
    if (bytes > (size_t)1 << 30) return tp_fail(TP_ERR_ARG, "all-gather: %zu bytes per rank is over 1 GiB", bytes);
    char *dst = (char *)all + (size_t)c->rank * bytes;
    if (dst != mine && bytes) memmove(dst, mine, bytes);
    int rc = MPI_Allgather(MPI_IN_PLACE, 0, MPI_BYTE, all, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? TP_OK : mpi_fail(rc, "Allgather");
}

static tp_status mpi_barrier(tp_comm *c) {
    (void)c;
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? TP_OK : mpi_fail(rc, "Barrier");
}

static const comm_ops mpi_ops = {"mpi", mpi_sum, mpi_max, mpi_bcast, mpi_allgather, mpi_barrier};

#endif /* TP_HAVE_MPI */

/* ---------------------------------------------------------------- the world */

/* The rank count a launcher announced through the environment, or 0 when none started us. */
static int launcher_size(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", NULL};
    for (int i = 0; vars[i]; i++) {
        const char *e = getenv(vars[i]);
        if (e && *e) return atoi(e) > 0 ? atoi(e) : 1;
    }
    if (getenv("PMIX_RANK") || getenv("PMI_RANK")) return 1; /* a launcher without a size variable */
    return 0;
}

tp_status tp_comm_init(int *argc, char ***argv) {
    if (world_started) return TP_OK;
    world_started = 1;
    int n = launcher_size();
    (void)argc, (void)argv;
    if (n == 0) return TP_OK;
#ifdef TP_HAVE_MPI
    int provided = 0, rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "Init");
    MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world.size);
    MPI_Comm local;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world.rank, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
        MPI_Comm_rank(local, &world.local_rank);
        MPI_Comm_size(local, &world.local_size);
        MPI_Comm_free(&local);
    }
    world.ops = &mpi_ops;
    return TP_OK;
#else
    if (n > 1)
        return tp_fail(TP_ERR_UNSUPPORTED,
                       "a launcher started %d ranks, but this taper was built without MPI (install libopenmpi-dev and "
                       "rebuild; `make config` shows MPI=1 when it is found)",
                       n);
    return TP_OK;
#endif
}

void tp_comm_finalize(void) {
#ifdef TP_HAVE_MPI
    if (world.ops == &mpi_ops) {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Finalize();
    }
#endif
    free(world.scratch);
    world.scratch = NULL;
    world.scratch_bytes = 0;
}

_Noreturn void tp_comm_abort(int code) {
    fflush(stdout);
    fflush(stderr);
#ifdef TP_HAVE_MPI
    if (world.ops == &mpi_ops && world.size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    exit(code);
}

tp_comm *tp_comm_world(void) { return &world; }
int tp_comm_rank(const tp_comm *c) { return c ? c->rank : 0; }
int tp_comm_size(const tp_comm *c) { return c ? c->size : 1; }
int tp_comm_local_rank(const tp_comm *c) { return c ? c->local_rank : 0; }
int tp_comm_local_size(const tp_comm *c) { return c ? c->local_size : 1; }
const char *tp_comm_backend(const tp_comm *c) { return c ? c->ops->name : "single"; }

int tp_comm_built_with_mpi(void) {
#ifdef TP_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

static tp_status timed_sum(tp_comm *c, void *buf, size_t n, int f64) {
    if (!c) return TP_OK;
    if (n && !buf) return tp_fail(TP_ERR_ARG, "all-reduce: NULL buffer");
    double t0 = tp_time_s();
    tp_status s = c->ops->sum(c, buf, n, f64);
    c->stats.seconds += tp_time_s() - t0;
    c->stats.bytes += (double)n * (f64 ? 8.0 : 4.0);
    c->stats.calls++;
    return s;
}

tp_status tp_comm_sum_f32(tp_comm *c, float *buf, size_t n) { return timed_sum(c, buf, n, 0); }
tp_status tp_comm_sum_f64(tp_comm *c, double *buf, size_t n) { return timed_sum(c, buf, n, 1); }

tp_status tp_comm_max_f64(tp_comm *c, double *buf, size_t n) {
    if (!c || !n) return TP_OK;
    return c->ops->max_f64(c, buf, n);
}

tp_status tp_comm_bcast(tp_comm *c, void *buf, size_t bytes, int root) {
    if (!c || !bytes) return TP_OK;
    if (root < 0 || root >= c->size) return tp_fail(TP_ERR_ARG, "broadcast: root %d of %d ranks", root, c->size);
    return c->ops->bcast(c, buf, bytes, root);
}

tp_status tp_comm_allgather(tp_comm *c, const void *mine, void *all, size_t bytes) {
    if (!c) return TP_OK;
    return c->ops->allgather(c, mine, all, bytes);
}

tp_status tp_comm_barrier(tp_comm *c) { return c ? c->ops->barrier(c) : TP_OK; }

void tp_comm_get_stats(const tp_comm *c, tp_comm_stats *out) {
    memset(out, 0, sizeof *out);
    if (c) *out = c->stats;
}
