/* Communication between the processes of one job: data-parallel training, distillation, teacher
 * caching and importance run one process per rank (launched by mpirun or srun) and meet only
 * through these calls. Two implementations sit behind them: a single process (every call is a
 * no-op or a copy) and MPI (built when Open MPI is found; MPI=0 builds without). A CUDA backend
 * adds NCCL behind the same calls, its unique id broadcast through tp_comm_bcast.
 *
 * Sums are deterministic: element i of a reduced buffer is ((x_0 + x_1) + x_2) + ... in rank
 * order, whatever the transport, so two runs with the same ranks give the same bits, and two
 * ranks reproduce exactly the order in which one process accumulates the same two halves. */
#ifndef TAPER_COMM_H
#define TAPER_COMM_H

#include <stddef.h>

#include "taper/status.h"

typedef struct tp_comm tp_comm;

/* Starts the world communicator. Under a launcher (mpirun, srun: detected from the environment
 * they set) and with MPI built, initialises MPI; otherwise, or when MPI was not built, a single
 * process. Called once by the CLI before anything else; library callers that never call it get
 * the single-process world. Fails (TP_ERR_UNSUPPORTED) when a launcher started several ranks but
 * this build has no MPI, so that N copies of one job never run side by side by mistake. */
tp_status tp_comm_init(int *argc, char ***argv);
/* Ends MPI cleanly after a successful run (a barrier; nothing when single). */
void tp_comm_finalize(void);
/* Takes every rank down at once (MPI_Abort) after this rank printed why; a single process exits. */
_Noreturn void tp_comm_abort(int code);

tp_comm *tp_comm_world(void);
int tp_comm_rank(const tp_comm *c);
int tp_comm_size(const tp_comm *c);
int tp_comm_local_rank(const tp_comm *c);  /* rank among the ranks on this machine */
int tp_comm_local_size(const tp_comm *c);
const char *tp_comm_backend(const tp_comm *c); /* "single" | "mpi" */
int tp_comm_built_with_mpi(void);

/* In-place sums over all ranks, in rank order (see above). n may be 0. */
tp_status tp_comm_sum_f32(tp_comm *c, float *buf, size_t n);
tp_status tp_comm_sum_f64(tp_comm *c, double *buf, size_t n);
/* In-place maximum over all ranks. */
tp_status tp_comm_max_f64(tp_comm *c, double *buf, size_t n);
/* root's bytes into every rank's buf. */
tp_status tp_comm_bcast(tp_comm *c, void *buf, size_t bytes, int root);
/* Every rank's `bytes` bytes of mine, in rank order, into all (size * bytes). */
tp_status tp_comm_allgather(tp_comm *c, const void *mine, void *all, size_t bytes);
tp_status tp_comm_barrier(tp_comm *c);

/* Time spent inside the reducing calls and the bytes they reduced, since the start (per rank). */
typedef struct {
    double seconds;
    double bytes;
    long calls;
} tp_comm_stats;
void tp_comm_get_stats(const tp_comm *c, tp_comm_stats *out);

/* The share [*lo, *hi) of n items that rank r of size takes: contiguous, sizes differ by at most
 * one, the first n % size ranks one larger. */
void tp_comm_share(size_t n, int r, int size, size_t *lo, size_t *hi);

#endif
