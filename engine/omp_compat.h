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
#endif
