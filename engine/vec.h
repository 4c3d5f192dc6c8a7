/* What every row kernel shares: CPU dispatch, forced inlining, fixed-order SIMD reductions,
 * the branch-free select, 8-float vectors, dot and axpy.
 *
 * Wheels are built for the x86-64 baseline (SSE2), so the hot row functions (those marked
 * CYF_CLONES in the per-operation headers) are compiled several times with GCC's
 * target_clones and the best one for the running CPU is picked at load time (AVX-512,
 * AVX2+FMA, or the baseline). Reductions use `omp simd` or the vector accumulators below,
 * so sums are evaluated in a fixed, vector-width order: results do not depend on the thread
 * count.
 */
#ifndef CYFORMER_VEC_H
#define CYFORMER_VEC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Each engine module includes only the operation headers it uses; within one, it may use
 * only some functions (hence `unused`). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(CYFORMER_NO_CLONES)
#define CYF_CLONES __attribute__((unused, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__GNUC__)
#define CYF_CLONES __attribute__((unused))
#else
#define CYF_CLONES
#endif

#define CYF_PRAGMA(x) _Pragma(#x)
/* Helpers are forced inline: a call left inside a loop of a target_clones function stops
 * that clone's loop from vectorising (the AVX2 clone then ran exp one float at a time). */
#if defined(__GNUC__)
#define CYF_INLINE static inline __attribute__((always_inline))
#else
#define CYF_INLINE static inline
#endif
#if defined(_OPENMP) || defined(__clang__)
#define CYF_SIMD_SUM(v) CYF_PRAGMA(omp simd reduction(+:v))
#define CYF_SIMD_MAX(v) CYF_PRAGMA(omp simd reduction(max:v))
#define CYF_SIMD_SUM2(a, b) CYF_PRAGMA(omp simd reduction(+:a, b))
#else
#define CYF_SIMD_SUM2(a, b)
#define CYF_SIMD_SUM(v)
#define CYF_SIMD_MAX(v)
#endif

/* cond ? a : b without a branch. The CYF_CLONES functions are compiled once per ISA
 * (target_clones) from a body first optimised for the baseline, where a plain ?: becomes a
 * jump that the AVX2 clone's vectoriser then cannot undo; a bit blend stays a blend. */
CYF_INLINE float cyf_select(int cond, float a, float b) {
    union { float f; uint32_t u; } x, y;
    uint32_t m = 0u - (uint32_t)(cond != 0);
    x.f = a;
    y.f = b;
    x.u = (x.u & m) | (y.u & ~m);
    return x.f;
}

/* 8-float vectors (GCC/clang vector extensions): AVX registers in the AVX2/AVX-512 clones,
 * pairs of SSE registers in the baseline one. Accumulating in them keeps the reduction at
 * the end to a few shuffles, where `omp simd` left a serial sum of each vector's lanes. */
typedef float cyf_v8 __attribute__((vector_size(32)));
typedef float cyf_v8u __attribute__((vector_size(32), aligned(4)));  /* unaligned loads */

/* the 8 lanes of v summed in a fixed pairwise order */
CYF_INLINE float cyf_hsum(cyf_v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* a[0:n] . b[0:n] with two vector accumulators (the FMA latency is hidden) */
CYF_INLINE float cyf_dot(const float* a, const float* b, int n) {
    int k, n16 = n & ~15;
    cyf_v8 s0 = {0}, s1 = {0};
    for (k = 0; k < n16; k += 16) {
        s0 += *(const cyf_v8u*)(a + k) * *(const cyf_v8u*)(b + k);
        s1 += *(const cyf_v8u*)(a + k + 8) * *(const cyf_v8u*)(b + k + 8);
    }
    float r = cyf_hsum(s0 + s1);
    for (k = n16; k < n; k++) r += a[k] * b[k];
    return r;
}

/* y[0:n] += a * x[0:n] for rows of different matrices (restrict: no overlap, so it vectorises) */
CYF_INLINE void cyf_axpy(float* __restrict y, const float* __restrict x, float a, int n) {
    int c;
    for (c = 0; c < n; c++) y[c] += a * x[c];
}

/* FN(x, ldx, MB, w, K, acc) with MB the constant 1, 2, 3 or 4 equal to mb: the quantized
 * GEMMs' tiles (qgemm.h, bgemm.h) are always-inlined functions of a constant row count, so
 * that their accumulator arrays become registers. */
#define CYF_MR_SWITCH(FN, x, ldq, mb, w, K, acc)                                                \
    switch (mb) {                                                                               \
    case 1: FN(x, ldq, 1, w, K, acc); break;                                                    \
    case 2: FN(x, ldq, 2, w, K, acc); break;                                                    \
    case 3: FN(x, ldq, 3, w, K, acc); break;                                                    \
    default: FN(x, ldq, 4, w, K, acc); break;                                                   \
    }

#endif
