/* SparseGPT (Frantar & Alistarh 2023) on one matrix: the upper Cholesky factor of the damped
 * inverse Hessian of its inputs, and the column-block OBS sweep that prunes and compensates.
 * Everything in double; rows are independent within a block, so the sweep runs a row per
 * thread and the result does not depend on the thread count. The layer-by-layer driver and the
 * Hessian accumulation are in sparsify.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sparse_internal.h"

#ifdef TP_HAVE_BLAS
/* LAPACK as OpenBLAS exports it (no LAPACKE header needed). Column-major; our matrices are
 * symmetric, and a row-major triangle is the other column-major triangle. */
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);
#endif

/* A pivot at or below this fraction of its original diagonal entry counts as a failure: H is
 * singular to double precision there (the inputs are linearly dependent). */
#define PIVOT_REL_MIN 1e-12

/* In-place lower Cholesky of A (n, n) row-major: on success the lower triangle holds L with
 * A = L L^T (the strict upper triangle is left as it was). Returns the failing column or -1.
 * The BLAS-free path; with BLAS, LAPACK's blocked dpotrf does this. */
#ifndef TP_HAVE_BLAS
static int cholesky_lower(double *A, int n) {
    for (int j = 0; j < n; j++) {
        double *Lj = A + (size_t)j * n;
        double a = Lj[j], s = a;
        for (int k = 0; k < j; k++) s -= Lj[k] * Lj[k];
        if (!(s > PIVOT_REL_MIN * fabs(a))) return j;
        double djj = sqrt(s);
        Lj[j] = djj;
        for (int i = j + 1; i < n; i++) {
            double *Li = A + (size_t)i * n;
            double t = Li[j];
            for (int k = 0; k < j; k++) t -= Li[k] * Lj[k];
            Li[j] = t / djj;
        }
    }
    return -1;
}
#endif

static tp_status not_pd(const char *what, int col, int n, double damp, const char *stage) {
    return tp_fail(TP_ERR_NUMERIC,
                   "SparseGPT: the %s of %s is not positive definite (Cholesky pivot of input %d of %d fails): "
                   "the calibration inputs are linearly dependent there; raise damp (now %g, e.g. 0.01 or 0.1) "
                   "or use more calibration tokens",
                   stage, what, col, n, damp);
}

tp_status sp_gpt_factor(double *H, int c, double damp, unsigned char *dead, double *U, double *work, const char *what) {
    size_t n = (size_t)c;
    double mean = 0;
    for (size_t j = 0; j < n; j++) {
        dead[j] = H[j * n + j] == 0.0;
        if (dead[j]) H[j * n + j] = 1.0;
        mean += H[j * n + j];
    }
    mean /= (double)n;
    if (!isfinite(mean)) return tp_fail(TP_ERR_NUMERIC, "SparseGPT: the Hessian of %s is not finite", what);
    for (size_t j = 0; j < n; j++) H[j * n + j] += damp * mean;
#ifdef TP_HAVE_BLAS
    (void)work;
    double *diag = U; /* scratch: the damped diagonal, for the pivot test */
    for (size_t j = 0; j < n; j++) diag[j] = H[j * n + j];
    int info = 0;
    dpotrf_("L", &c, H, &c, &info);
    if (info > 0) return not_pd(what, info - 1, c, damp, "damped Hessian");
    for (size_t j = 0; j < n; j++) /* L_jj^2 is the pivot */
        if (!(H[j * n + j] * H[j * n + j] > PIVOT_REL_MIN * diag[j])) return not_pd(what, (int)j, c, damp, "damped Hessian");
    dpotri_("L", &c, H, &c, &info);
    if (info) return not_pd(what, info - 1, c, damp, "damped Hessian");
    /* column-major lower = row-major upper: mirror it to the full H^-1 */
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) H[j * n + i] = H[i * n + j];
    for (size_t j = 0; j < n; j++) diag[j] = H[j * n + j];
    dpotrf_("L", &c, H, &c, &info); /* H^-1 = L L^T (column-major) = U^T U, U row-major upper */
    int bad = info > 0 ? info - 1 : -1;
    for (size_t j = 0; j < n && bad < 0; j++)
        if (!(H[j * n + j] * H[j * n + j] > PIVOT_REL_MIN * diag[j])) bad = (int)j;
    if (bad >= 0) return not_pd(what, bad, c, damp, "inverse Hessian");
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) U[i * n + j] = j >= i ? H[i * n + j] : 0.0;
    return TP_OK;
#else
    int bad = cholesky_lower(H, c);
    if (bad >= 0) return not_pd(what, bad, c, damp, "damped Hessian");
    /* LT = (L^-1)^T, upper: column j of L^-1 by forward substitution, stored as row j of LT */
    double *LT = work, *Hi = work + n * n;
#pragma omp parallel for schedule(dynamic, 8) if (n >= 64)
    for (size_t j = 0; j < n; j++) {
        double *x = LT + j * n;
        memset(x, 0, j * sizeof *x);
        x[j] = 1.0 / H[j * n + j];
        for (size_t i = j + 1; i < n; i++) {
            const double *Li = H + i * n;
            double s = 0;
            for (size_t k = j; k < i; k++) s += Li[k] * x[k];
            x[i] = -s / Li[i];
        }
    }
    /* H^-1 = L^-T L^-1: (a, b) = sum over i >= max(a, b) of LT[a][i] LT[b][i] */
#pragma omp parallel for schedule(dynamic, 8) if (n >= 64)
    for (size_t a = 0; a < n; a++)
        for (size_t b = a; b < n; b++) {
            const double *ra = LT + a * n, *rb = LT + b * n;
            double s = 0;
            for (size_t i = b; i < n; i++) s += ra[i] * rb[i];
            Hi[a * n + b] = s;
            Hi[b * n + a] = s;
        }
    bad = cholesky_lower(Hi, c);
    if (bad >= 0) return not_pd(what, bad, c, damp, "inverse Hessian");
    /* U = C^T for H^-1 = C C^T */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) U[i * n + j] = j >= i ? Hi[j * n + i] : 0.0;
    return TP_OK;
#endif
}

tp_status sp_gpt_prune(float *W, int rows, int cols, const double *U, const unsigned char *dead,
                       const tp_sparsify_opts *o, unsigned char *pruned, const char *name) {
    size_t R = (size_t)rows, C = (size_t)cols, bs = (size_t)o->blocksize;
    int nm = o->nm_m > 0;
    size_t bsz = bs < C ? bs : C;
    double *Wd = malloc(R * C * sizeof *Wd);
    double *err = malloc(R * bsz * sizeof *err);
    double *score = nm ? NULL : malloc(R * bsz * sizeof *score);
    double *tmp = nm ? NULL : malloc(R * bsz * sizeof *tmp);
    unsigned char *bmask = malloc(R * bsz);
    if (!Wd || !err || !bmask || (!nm && (!score || !tmp))) {
        free(Wd); free(err); free(score); free(tmp); free(bmask);
        return tp_fail(TP_ERR_NOMEM, "SparseGPT %s: out of memory for %d x %d", name, rows, cols);
    }
    for (size_t i = 0; i < R * C; i++) Wd[i] = dead[i % C] ? 0.0 : (double)W[i];
    tp_status s = TP_OK;
    size_t done = 0; /* elements of the blocks before this one (unstructured count split) */
    for (size_t i1 = 0; i1 < C && !s; i1 += bs) {
        size_t i2 = i1 + bs < C ? i1 + bs : C, bc = i2 - i1;
        if (!nm) {
            size_t kb = tp_sparse_count(o->sparsity, done + R * bc) - tp_sparse_count(o->sparsity, done);
            done += R * bc;
            for (size_t r = 0; r < R; r++)
                for (size_t c = 0; c < bc; c++) {
                    double w = Wd[r * C + i1 + c], d = U[(i1 + c) * C + i1 + c];
                    score[r * bc + c] = w * w / (d * d);
                }
            if (sp_select_smallest(score, R * bc, kb, tmp, bmask)) {
                s = tp_fail(TP_ERR_NUMERIC, "SparseGPT %s: NaN in the weights or the Hessian (columns %zu..%zu)", name,
                            i1, i2 - 1);
                break;
            }
        }
        int nan_row = 0;
#pragma omp parallel for schedule(static) reduction(| : nan_row) if (R * bc * (C - i1) >= 65536)
        for (size_t r = 0; r < R; r++) {
            double *w = Wd + r * C, *e = err + r * bc;
            unsigned char *pm = bmask + r * bc;
            for (size_t c = 0; c < bc; c++) {
                size_t j = i1 + c;
                if (nm && c % (size_t)o->nm_m == 0) {
                    double sc[64];
                    for (int g = 0; g < o->nm_m; g++) {
                        double d = U[(j + g) * C + j + g];
                        sc[g] = w[j + g] * w[j + g] / (d * d);
                    }
                    if (sp_select_nm(sc, (size_t)o->nm_m, o->nm_n, o->nm_m, pm + c)) nan_row = 1;
                }
                double q = pm[c] ? 0.0 : w[j];
                double ej = (w[j] - q) / U[j * C + j];
                e[c] = ej;
                if (ej != 0.0) {
                    const double *u = U + j * C;
                    for (size_t t = j + 1; t < i2; t++) w[t] -= ej * u[t];
                }
                w[j] = q;
            }
            for (size_t c = 0; c < bc; c++) {
                double ej = e[c];
                if (ej == 0.0) continue;
                const double *u = U + (i1 + c) * C;
                for (size_t t = i2; t < C; t++) w[t] -= ej * u[t];
            }
        }
        if (nan_row) {
            s = tp_fail(TP_ERR_NUMERIC, "SparseGPT %s: NaN in the weights or the Hessian (columns %zu..%zu)", name, i1, i2 - 1);
            break;
        }
        for (size_t r = 0; r < R; r++) memcpy(pruned + r * C + i1, bmask + r * bc, bc);
    }
    if (!s)
        for (size_t i = 0; i < R * C; i++) {
            if (!isfinite(Wd[i])) {
                s = tp_fail(TP_ERR_NUMERIC, "SparseGPT %s: weight %zu became %g (raise damp)", name, i, Wd[i]);
                break;
            }
            W[i] = (float)Wd[i];
        }
    free(Wd); free(err); free(score); free(tmp); free(bmask);
    return s;
}
