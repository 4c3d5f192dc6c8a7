/* OpenMP entry points that also compile without OpenMP (serial build). */
#ifndef CYFORMER_OMP_COMPAT_H
#define CYFORMER_OMP_COMPAT_H
#ifdef _OPENMP
#include <omp.h>
#define CYFORMER_HAVE_OPENMP 1
#else
#define CYFORMER_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_procs(void) { return 1; }
static inline void omp_set_num_threads(int n) { (void)n; }
#endif

/* OpenMP threads worth starting for `rows` independent rows of `row_len` floats: one per
 * ~16K floats (below that, starting and joining a thread costs about what its share of
 * the rows does: a decoding step's LayerNorm of one row ran slower on 2 threads than on
 * 1), at most one per row, at most n_threads. Row results do not depend on the count. */
static inline int cyf_row_team(int n_threads, long rows, long row_len) {
    long by_work = rows * row_len / 16384;
    long t = n_threads < rows ? n_threads : rows;
    if (by_work < t) t = by_work;
    return t < 1 ? 1 : (int)t;
}
#endif
