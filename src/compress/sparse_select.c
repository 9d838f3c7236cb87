/* The selection rules of unstructured and N:M sparsity (sparse_internal.h): exactly k smallest
 * scores, ties broken by index, and n-of-m per group. A leaf: sparsify.c (magnitude, Wanda) and
 * sparse_gpt.c (SparseGPT) both call it, and it calls neither. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "sparse_internal.h"

/* k-th smallest (0-based) of a[0..n) by quickselect (Hoare partition, median-of-three pivot);
 * a is reordered. No NaN in a. */
static double kth_smallest(double *a, size_t n, size_t k) {
    long lo = 0, hi = (long)n - 1, kk = (long)k;
    while (lo < hi) {
        long mid = lo + (hi - lo) / 2;
        double x = a[lo], y = a[mid], z = a[hi];
        double p = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        long i = lo, j = hi;
        do {
            while (a[i] < p) i++;
            while (p < a[j]) j--;
            if (i <= j) {
                double t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        } while (i <= j);
        if (kk <= j) hi = j;
        else if (kk >= i) lo = i;
        else return a[kk]; /* j < k < i: equal to the pivot */
    }
    return a[kk];
}

int sp_select_smallest(const double *score, size_t n, size_t k, double *tmp, unsigned char *pruned) {
    for (size_t i = 0; i < n; i++)
        if (isnan(score[i])) return -1;
    if (k == 0 || n == 0) {
        memset(pruned, 0, n);
        return 0;
    }
    if (k > n) k = n;
    memcpy(tmp, score, n * sizeof *tmp);
    double t = kth_smallest(tmp, n, k - 1);
    size_t less = 0;
    for (size_t i = 0; i < n; i++) less += score[i] < t;
    size_t ties = k - less; /* entries equal to t pruned, first ones by index */
    for (size_t i = 0; i < n; i++) {
        int p = score[i] < t;
        if (!p && score[i] == t && ties) {
            p = 1;
            ties--;
        }
        pruned[i] = (unsigned char)p;
    }
    return 0;
}

int sp_select_nm(const double *score, size_t len, int n, int m, unsigned char *pruned) {
    for (size_t g = 0; g + (size_t)m <= len; g += (size_t)m) {
        const double *s = score + g;
        unsigned char *p = pruned + g;
        for (int i = 0; i < m; i++) {
            if (isnan(s[i])) return -1;
            p[i] = 0;
        }
        for (int r = 0; r < m - n; r++) { /* the smallest unpicked (score, index) */
            int best = -1;
            for (int i = 0; i < m; i++)
                if (!p[i] && (best < 0 || s[i] < s[best])) best = i;
            p[best] = 1;
        }
    }
    return 0;
}

/* Sets the bits of the flagged entries and zeroes those weights. */
