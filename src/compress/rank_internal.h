/* Orderings shared by the pruning planners (prune.c, per_layer.c). */
#ifndef TAPER_RANK_INTERNAL_H
#define TAPER_RANK_INTERNAL_H

typedef struct {
    double score;
    int idx;
} tp_ranked;

/* qsort order: higher score first; ties keep the lower index first. */
static inline int tp_ranked_desc(const void *a, const void *b) {
    const tp_ranked *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->idx - y->idx;
}

/* qsort order of ints, ascending. */
static inline int tp_int_asc(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

#endif
