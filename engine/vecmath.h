/* Row kernels written so the compiler vectorises them: a polynomial expf, softmax over a
 * column range, LayerNorm with residual, bias + activation.
 *
 * Wheels are built for the x86-64 baseline (SSE2), so the hot row functions are compiled
 * several times with GCC's target_clones and the best one for the running CPU is picked at
 * load time (AVX-512, AVX2+FMA, or the baseline). Reductions use `omp simd`, so sums are
 * evaluated in a fixed, vector-width order: results do not depend on the thread count.
 */
#ifndef CYFORMER_VECMATH_H
#define CYFORMER_VECMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Each engine module includes this header and uses only some of its functions. */
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

/* cond ? a : b without a branch. The functions below are compiled once per ISA
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

CYF_INLINE float cyf_hsum(cyf_v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* pf (or NULL): the next weight rows, fetched into cache while this block computes, so a
 * matrix streaming from memory (the vocabulary projection) does not leave the FMAs waiting */
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

/* exp(x) for float, Cephes-style: 2^n * p(g) with |g| <= ln2/2; about 2 ulp. Below
 * -87.3 (including -inf) it returns exactly 0, so masked scores get no weight. */
CYF_INLINE float cyf_expf(float x) {
    float xc = cyf_select(x < -87.33654f, -87.33654f, x);
    xc = cyf_select(xc > 88.72283f, 88.72283f, xc);
    float fx = xc * 1.44269504088896341f;
    /* round to nearest with the 1.5 * 2^23 trick: branch-free and vectorisable everywhere */
    float r = (fx + 12582912.0f) - 12582912.0f;
    float g = xc - r * 0.693359375f;
    g = g - r * -2.12194440e-4f;
    float z = g * g;
    float y = 1.9875691500E-4f;
    y = y * g + 1.3981999507E-3f;
    y = y * g + 8.3334519073E-3f;
    y = y * g + 4.1665795894E-2f;
    y = y * g + 1.6666665459E-1f;
    y = y * g + 5.0000001201E-1f;
    y = y * z + g + 1.0f;
    int32_t bits = ((int32_t)r + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float out = y * scale;
    return cyf_select(x < -87.33654f, 0.0f, out);
}

/* softmax (log == 0) or log-softmax of x[0:n] in place. Returns 0 (and writes zeros, or
 * -inf for log) when no entry is finite. Loops index from 0 so they vectorise cleanly. */
CYF_INLINE int cyf_softmax_inplace(float* x, int n, int log) {
    int j;
    float m = -INFINITY, s = 0.0f;
    CYF_SIMD_MAX(m)
    for (j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    if (!(m > -INFINITY)) {
        for (j = 0; j < n; j++) x[j] = log ? -INFINITY : 0.0f;
        return 0;
    }
    if (log) {
        CYF_SIMD_SUM(s)
        for (j = 0; j < n; j++) s += cyf_expf(x[j] - m);
        float lse = logf(s);
        /* (x - m) - log(s): subtracting m first keeps the precision of large logits */
        for (j = 0; j < n; j++) x[j] = (x[j] - m) - lse;
    } else {
        CYF_SIMD_SUM(s)
        for (j = 0; j < n; j++) {
            float e = cyf_expf(x[j] - m);
            x[j] = e;
            s += e;
        }
        float inv = 1.0f / s;
        for (j = 0; j < n; j++) x[j] *= inv;
    }
    return 1;
}

/* softmax over x[lo:hi] in place; x[0:lo] and x[hi:width] are set to 0. Entries equal to
 * -inf (masked) get 0. Returns 0 when no entry is finite (the row is all zeros). */
CYF_CLONES static int cyf_softmax_range(float* x, int lo, int hi, int width) {
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    return hi > lo ? cyf_softmax_inplace(x + lo, hi - lo, 0) : 0;
}

/* log_softmax (log != 0) or softmax of x[0:n] in place. */
CYF_CLONES static void cyf_softmax_row(float* x, int n, int log) {
    cyf_softmax_inplace(x, n, log);
}

/* Skinny GEMM for decoding: out[m, n] (+)= sum_k x[m, k] * w[n, k] (+ bias[n]) for all
 * m < M and n0 <= n < n1, with x [M, K] and w [N, K] row-major (PyTorch's weight layout).
 * BLAS packs the whole weight matrix on every call, which for a handful of rows costs
 * more than the product; here each weight row is read once from memory and used for every
 * row of x (kept in cache). The inner block is 3 x-rows by 3 weight rows: 9 vector
 * accumulators plus 6 loaded vectors fit AVX2's 16 registers, and each loaded vector feeds
 * 3 FMAs, so the loop is bound by FMAs, not loads. */
CYF_INLINE void cyf_dot3x3(const float* x0, const float* x1, const float* x2, const float* w0,
                           const float* w1, const float* w2, int K, float acc[9], const float* pf,
                           long ldpf) {
    int k, K8 = K & ~7;
    cyf_v8 a00 = {0}, a01 = {0}, a02 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a20 = {0}, a21 = {0}, a22 = {0};
    for (k = 0; k < K8; k += 8) {
        if (pf && !(k & 15)) {
            __builtin_prefetch(pf + k, 0, 3);
            __builtin_prefetch(pf + ldpf + k, 0, 3);
            __builtin_prefetch(pf + 2 * ldpf + k, 0, 3);
        }
        cyf_v8 u0 = *(const cyf_v8u*)(w0 + k), u1 = *(const cyf_v8u*)(w1 + k), u2 = *(const cyf_v8u*)(w2 + k);
        cyf_v8 v0 = *(const cyf_v8u*)(x0 + k), v1 = *(const cyf_v8u*)(x1 + k), v2 = *(const cyf_v8u*)(x2 + k);
        a00 += v0 * u0; a01 += v0 * u1; a02 += v0 * u2;
        a10 += v1 * u0; a11 += v1 * u1; a12 += v1 * u2;
        a20 += v2 * u0; a21 += v2 * u1; a22 += v2 * u2;
    }
    acc[0] = cyf_hsum(a00); acc[1] = cyf_hsum(a01); acc[2] = cyf_hsum(a02);
    acc[3] = cyf_hsum(a10); acc[4] = cyf_hsum(a11); acc[5] = cyf_hsum(a12);
    acc[6] = cyf_hsum(a20); acc[7] = cyf_hsum(a21); acc[8] = cyf_hsum(a22);
    for (k = K8; k < K; k++) {
        acc[0] += x0[k] * w0[k]; acc[1] += x0[k] * w1[k]; acc[2] += x0[k] * w2[k];
        acc[3] += x1[k] * w0[k]; acc[4] += x1[k] * w1[k]; acc[5] += x1[k] * w2[k];
        acc[6] += x2[k] * w0[k]; acc[7] += x2[k] * w1[k]; acc[8] += x2[k] * w2[k];
    }
}

CYF_INLINE void cyf_dot2x3(const float* x0, const float* x1, const float* w0, const float* w1,
                           const float* w2, int K, float acc[9]) {
    int k, K8 = K & ~7;
    cyf_v8 a00 = {0}, a01 = {0}, a02 = {0}, a10 = {0}, a11 = {0}, a12 = {0};
    for (k = 0; k < K8; k += 8) {
        cyf_v8 u0 = *(const cyf_v8u*)(w0 + k), u1 = *(const cyf_v8u*)(w1 + k), u2 = *(const cyf_v8u*)(w2 + k);
        cyf_v8 v0 = *(const cyf_v8u*)(x0 + k), v1 = *(const cyf_v8u*)(x1 + k);
        a00 += v0 * u0; a01 += v0 * u1; a02 += v0 * u2;
        a10 += v1 * u0; a11 += v1 * u1; a12 += v1 * u2;
    }
    acc[0] = cyf_hsum(a00); acc[1] = cyf_hsum(a01); acc[2] = cyf_hsum(a02);
    acc[3] = cyf_hsum(a10); acc[4] = cyf_hsum(a11); acc[5] = cyf_hsum(a12);
    for (k = K8; k < K; k++) {
        acc[0] += x0[k] * w0[k]; acc[1] += x0[k] * w1[k]; acc[2] += x0[k] * w2[k];
        acc[3] += x1[k] * w0[k]; acc[4] += x1[k] * w1[k]; acc[5] += x1[k] * w2[k];
    }
}

/* One x-row against 6 weight rows (decoding one sequence: bound by reading the weights).
 * pf, when given, is the next block of 6 contiguous rows (6 * K floats), prefetched into L2
 * while this block is read: with short rows (K = 256 is 1 KB) the hardware prefetcher sees
 * each row's stream end before it has ramped up (measured on Zen 3: 12 -> 16 GB/s at
 * K = 256; at K >= 1024 it is slower than the hardware prefetcher alone). */
CYF_INLINE void cyf_dot1x6(const float* x0, const float* w0, const float* w1, const float* w2,
                           const float* w3, const float* w4, const float* w5, int K, float acc[6],
                           const float* pf) {
    int k, K8 = K & ~7;
    cyf_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0};
    for (k = 0; k < K8; k += 8) {
        if (pf) {  /* 48 floats (3 lines) of the next block per 48 read here */
            __builtin_prefetch(pf + 6 * k, 0, 2);
            __builtin_prefetch(pf + 6 * k + 16, 0, 2);
            __builtin_prefetch(pf + 6 * k + 32, 0, 2);
        }
        cyf_v8 v = *(const cyf_v8u*)(x0 + k);
        a0 += v * *(const cyf_v8u*)(w0 + k); a1 += v * *(const cyf_v8u*)(w1 + k);
        a2 += v * *(const cyf_v8u*)(w2 + k); a3 += v * *(const cyf_v8u*)(w3 + k);
        a4 += v * *(const cyf_v8u*)(w4 + k); a5 += v * *(const cyf_v8u*)(w5 + k);
    }
    acc[0] = cyf_hsum(a0); acc[1] = cyf_hsum(a1); acc[2] = cyf_hsum(a2);
    acc[3] = cyf_hsum(a3); acc[4] = cyf_hsum(a4); acc[5] = cyf_hsum(a5);
    for (k = K8; k < K; k++) {
        float v = x0[k];
        acc[0] += v * w0[k]; acc[1] += v * w1[k]; acc[2] += v * w2[k];
        acc[3] += v * w3[k]; acc[4] += v * w4[k]; acc[5] += v * w5[k];
    }
}

CYF_INLINE void cyf_skinny_store(float* out, long ldo, const float* bias, int n, const float* acc,
                                 int mb, int nb, int stride, int accumulate) {
    int i, j;
    for (i = 0; i < mb; i++) {
        float* o = out + (long)i * ldo + n;
        for (j = 0; j < nb; j++) {
            float v = acc[i * stride + j] + (bias ? bias[n + j] : 0.0f);
            o[j] = accumulate ? o[j] + v : v;
        }
    }
}

CYF_CLONES static void cyf_skinny_gemm(const float* x, long ldx, const float* w, long ldw,
                                       const float* bias, float* out, long ldo, int M,
                                       int n0, int n1, int K, int accumulate) {
    int n, m, j;
    float acc[9];
    if (M == 1) {
        int prefetch = ldw == K && K <= 512;
        for (n = n0; n < n1; n += 6) {
            int nb = n1 - n < 6 ? n1 - n : 6;
            const float* wr[6];
            /* short blocks repeat their last row: same work, results dropped */
            for (j = 0; j < 6; j++) wr[j] = w + (long)(n + (j < nb ? j : nb - 1)) * ldw;
            cyf_dot1x6(x, wr[0], wr[1], wr[2], wr[3], wr[4], wr[5], K, acc,
                       prefetch && n + 12 <= n1 ? w + (long)(n + 6) * ldw : NULL);
            cyf_skinny_store(out, ldo, bias, n, acc, 1, nb, 6, accumulate);
        }
        return;
    }
    for (n = n0; n < n1; n += 3) {
        int nb = n1 - n < 3 ? n1 - n : 3;
        const float* w0 = w + (long)n * ldw;
        const float* w1 = w + (long)(n + (nb > 1 ? 1 : 0)) * ldw;
        const float* w2 = w + (long)(n + (nb > 2 ? 2 : nb - 1)) * ldw;
        /* the 3 weight rows stay in L1 while every block of x rows passes over them; rows go
         * in blocks of 3, ending with one or two blocks of 2 (M = 3q + 1 ends 2 + 2) */
        for (m = 0; m < M;) {
            int left = M - m;
            int mb = (left == 2 || left == 4) ? 2 : 3;
            const float* x0 = x + (long)m * ldx;
            if (mb == 3) {
                cyf_dot3x3(x0, x0 + ldx, x0 + 2 * ldx, w0, w1, w2, K, acc,
                           m == 0 && n + 6 <= n1 ? w + (long)(n + 3) * ldw : NULL, ldw);
            } else {
                cyf_dot2x3(x0, x0 + ldx, w0, w1, w2, K, acc);
            }
            cyf_skinny_store(out + (long)m * ldo, ldo, bias, n, acc, mb, nb, 3, accumulate);
            m += mb;
        }
    }
}

/* x += r + bias (each when given), then out = (x - mean) * rstd * gamma + beta.
 * out may alias x. The bias is a sublayer's output bias, folded in here so its GEMM
 * need not pre-fill its output. */
CYF_CLONES static void cyf_layer_norm_row(float* x, const float* r, const float* bias,
                                          const float* gamma, const float* beta, float* out,
                                          int d, float eps, float* mean_out, float* rstd_out) {
    int j;
    float sum = 0.0f, var = 0.0f, mean, rstd;
    if (r && bias) {
        for (j = 0; j < d; j++) x[j] += r[j] + bias[j];
    } else if (r) {
        for (j = 0; j < d; j++) x[j] += r[j];
    } else if (bias) {
        for (j = 0; j < d; j++) x[j] += bias[j];
    }
    CYF_SIMD_SUM(sum)
    for (j = 0; j < d; j++) sum += x[j];
    mean = sum / (float)d;
    /* two passes: the variance of x - mean does not cancel catastrophically */
    CYF_SIMD_SUM(var)
    for (j = 0; j < d; j++) {
        float c = x[j] - mean;
        var += c * c;
    }
    rstd = 1.0f / sqrtf(var / (float)d + eps);
    for (j = 0; j < d; j++) out[j] = (x[j] - mean) * rstd * gamma[j] + beta[j];
    if (mean_out) {
        *mean_out = mean;
        *rstd_out = rstd;
    }
}

/* erf(x), Abramowitz & Stegun 7.1.26 refined (max abs error 1.2e-7), vectorisable. */
CYF_INLINE float cyf_erff(float x) {
    float a = fabsf(x);
    float t = 1.0f / (1.0f + 0.5f * a);
    /* Numerical Recipes erfc Chebyshev fit: fractional error < 1.2e-7 */
    float y = t * cyf_expf(-a * a - 1.26551223f + t * (1.00002368f + t * (0.37409196f +
              t * (0.09678418f + t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f +
              t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f)))))))));
    float e = 1.0f - y;
    return copysignf(e, x);
}

enum { CYF_IDENTITY = 0, CYF_RELU = 1, CYF_GELU = 2, CYF_SILU = 3, CYF_GELU_TANH = 4 };

/* row = act(row + bias) in place; bias may be NULL. */
CYF_CLONES static void cyf_bias_act_row(float* row, const float* bias, int n, int code) {
    int j;
    if (bias) {
        for (j = 0; j < n; j++) row[j] += bias[j];
    }
    switch (code) {
    case CYF_RELU:
        for (j = 0; j < n; j++) row[j] = cyf_select(row[j] > 0.0f, row[j], 0.0f);
        break;
    case CYF_GELU:
        for (j = 0; j < n; j++) row[j] = 0.5f * row[j] * (1.0f + cyf_erff(row[j] * 0.70710678118654752f));
        break;
    case CYF_SILU:
        for (j = 0; j < n; j++) row[j] = row[j] / (1.0f + cyf_expf(-row[j]));
        break;
    case CYF_GELU_TANH:
        for (j = 0; j < n; j++) {
            float z = row[j];
            float u = 0.7978845608028654f * (z + 0.044715f * z * z * z);
            /* tanh(u) = 1 - 2 / (exp(2u) + 1) */
            float th = 1.0f - 2.0f / (cyf_expf(2.0f * u) + 1.0f);
            row[j] = 0.5f * z * (1.0f + th);
        }
        break;
    default:
        break;
    }
}

/* Counter-based dropout: element `index` of stream `seed` is kept when a 32-bit hash of
 * the pair is >= threshold (= p * 2^32). The mask is a pure function of (seed, index), so
 * the backward pass regenerates it instead of storing it, and it does not depend on the
 * thread count or on how a row is split into calls. The high half of the index and the
 * seed are mixed once per call (SplitMix64); each element then costs one 32-bit hash
 * (lowbias32) of its low half, which vectorises. */
CYF_INLINE uint32_t cyf_mix64to32(uint64_t seed, uint32_t high) {
    uint64_t z = seed + (uint64_t)high * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (uint32_t)(z >> 32);
}

CYF_INLINE uint32_t cyf_hash_low(uint32_t key, uint32_t low) {
    uint32_t x = (low * 0x9E3779B9u) ^ key;
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

CYF_INLINE void cyf_dropout_span(float* x, int n, uint32_t key, uint32_t low, uint32_t threshold,
                                    float inv_keep) {
    int j;
    for (j = 0; j < n; j++) {
        /* branch-free select: all-ones bits where kept */
        uint32_t keep = 0u - (uint32_t)(cyf_hash_low(key, low + (uint32_t)j) >= threshold);
        union { float f; uint32_t u; } v;
        v.f = x[j] * inv_keep;
        v.u &= keep;
        x[j] = v.f;
    }
}

/* x[0:n] *= keep(seed, first + j) / (1 - p), dropped entries become 0. */
CYF_CLONES static void cyf_dropout_row(float* x, int n, uint64_t seed, uint64_t first,
                                       uint32_t threshold, float inv_keep) {
    while (n > 0) {
        uint32_t low = (uint32_t)first;
        /* elements up to the next multiple of 2^32 share the high half of their index */
        uint64_t room = ((uint64_t)1 << 32) - low;
        int m = (uint64_t)n < room ? n : (int)room;
        cyf_dropout_span(x, m, cyf_mix64to32(seed, (uint32_t)(first >> 32)), low, threshold, inv_keep);
        x += m;
        first += (uint64_t)m;
        n -= m;
    }
}

/* LayerNorm backward for one row. x is the LayerNorm input (the residual sum), dy the
 * gradient of its output: dx (+)= rstd * (g - mean(g) - xhat * mean(g * xhat)) with
 * g = dy * gamma and xhat = (x - mean) * rstd. dgamma / dbeta are reduced elsewhere
 * (over rows, by column ranges) so threads never share them. dx may alias dy. */
CYF_CLONES static void cyf_layer_norm_backward_row(const float* x, const float* dy, const float* gamma,
                                                   float mean, float rstd, float* dx, int d,
                                                   int accumulate) {
    int j;
    float sg = 0.0f, sgx = 0.0f;
    CYF_SIMD_SUM(sg)
    for (j = 0; j < d; j++) sg += dy[j] * gamma[j];
    CYF_SIMD_SUM(sgx)
    for (j = 0; j < d; j++) sgx += dy[j] * gamma[j] * (x[j] - mean) * rstd;
    float mg = sg / (float)d, mgx = sgx / (float)d;
    if (accumulate) {
        for (j = 0; j < d; j++)
            dx[j] += rstd * (dy[j] * gamma[j] - mg - (x[j] - mean) * rstd * mgx);
    } else {
        for (j = 0; j < d; j++)
            dx[j] = rstd * (dy[j] * gamma[j] - mg - (x[j] - mean) * rstd * mgx);
    }
}

/* dgamma[c] += sum_i dy[i, c] * xhat[i, c]; dbeta[c] += sum_i dy[i, c], for columns [c0, c1). */
CYF_CLONES static void cyf_layer_norm_param_grads(const float* x, const float* dy, const float* mean,
                                                  const float* rstd, float* dgamma, float* dbeta,
                                                  long n, int d, int c0, int c1) {
    long i;
    int j;
    for (i = 0; i < n; i++) {
        const float* xr = x + i * d;
        const float* gr = dy + i * d;
        float mu = mean[i], rs = rstd[i];
        for (j = c0; j < c1; j++) {
            dgamma[j] += gr[j] * (xr[j] - mu) * rs;
            dbeta[j] += gr[j];
        }
    }
}

/* Training form of cyf_bias_act_row in one pass: pre += bias (kept for the backward pass),
 * out = act(pre). */
CYF_CLONES static void cyf_bias_act_save_row(float* pre, const float* bias, float* out, int n, int code) {
    int j;
    if (bias) {
        for (j = 0; j < n; j++) {
            float p = pre[j] + bias[j];
            pre[j] = p;
            out[j] = p;
        }
    } else {
        memcpy(out, pre, sizeof(float) * (size_t)n);
    }
    cyf_bias_act_row(out, NULL, n, code);
}

/* dh[0:n] *= act'(pre[0:n]) where pre is the activation's input (bias included). */
CYF_CLONES static void cyf_act_backward_row(float* dh, const float* pre, int n, int code) {
    int j;
    switch (code) {
    case CYF_RELU:
        for (j = 0; j < n; j++) dh[j] = cyf_select(pre[j] > 0.0f, dh[j], 0.0f);
        break;
    case CYF_GELU:
        /* d/dz [z * Phi(z)] = Phi(z) + z * phi(z) */
        for (j = 0; j < n; j++) {
            float z = pre[j];
            float cdf = 0.5f * (1.0f + cyf_erff(z * 0.70710678118654752f));
            float pdf = 0.39894228040143268f * cyf_expf(-0.5f * z * z);
            dh[j] *= cdf + z * pdf;
        }
        break;
    case CYF_SILU:
        /* d/dz [z * s(z)] = s(z) * (1 + z * (1 - s(z))) */
        for (j = 0; j < n; j++) {
            float z = pre[j];
            float sg = 1.0f / (1.0f + cyf_expf(-z));
            dh[j] *= sg * (1.0f + z * (1.0f - sg));
        }
        break;
    case CYF_GELU_TANH:
        for (j = 0; j < n; j++) {
            float z = pre[j];
            float u = 0.7978845608028654f * (z + 0.044715f * z * z * z);
            float th = 1.0f - 2.0f / (cyf_expf(2.0f * u) + 1.0f);
            float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * z * z);
            dh[j] *= 0.5f * (1.0f + th) + 0.5f * z * (1.0f - th * th) * du;
        }
        break;
    default:
        break;
    }
}

/* Cross-entropy with label smoothing for one row of logits x[0:V] and label y, as
 * PyTorch's CrossEntropyLoss(label_smoothing=eps): the target is (1 - eps) on y plus eps/V
 * on every class. Returns the loss and writes the NLL of y to *nll. With grad != 0 the row
 * becomes scale * (softmax(x) - target). */
CYF_CLONES static float cyf_cross_entropy_row(float* x, int V, int y, float eps, float scale,
                                              int grad, float* nll) {
    int j;
    float m = -INFINITY, s = 0.0f, sx = 0.0f, x_y = x[y];
    CYF_SIMD_MAX(m)
    for (j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
    if (grad) {
        /* one exp per entry, kept in x for the gradient pass */
        CYF_SIMD_SUM2(s, sx)
        for (j = 0; j < V; j++) {
            float z = x[j] - m, e = cyf_expf(z);
            x[j] = e;
            s += e;
            sx += z;
        }
    } else {
        CYF_SIMD_SUM2(s, sx)
        for (j = 0; j < V; j++) {
            float z = x[j] - m;
            s += cyf_expf(z);
            sx += z;
        }
    }
    float lse = logf(s);
    float nll_y = lse - (x_y - m);
    /* -mean_j log p_j = lse - mean_j (x_j - m) */
    float smooth = lse - sx / (float)V;
    *nll = nll_y;
    if (grad) {
        float a = scale / s, b = scale * eps / (float)V;
        for (j = 0; j < V; j++) x[j] = x[j] * a - b;
        x[y] -= scale * (1.0f - eps);
    }
    return (1.0f - eps) * nll_y + eps * smooth;
}

/* y[0:n] += a * x[0:n] for rows of different matrices (restrict: no overlap, so it vectorises) */
CYF_INLINE void cyf_axpy(float* __restrict y, const float* __restrict x, float a, int n) {
    int c;
    for (c = 0; c < n; c++) y[c] += a * x[c];
}

/* p[0:hi-lo] = softmax over keys [lo, hi) of scale * q . k_j (-inf where mask[j] == 0).
 * k rows are ldk floats apart. Returns 0 (p all zero) when no key is visible. */
CYF_INLINE int cyf_row_probs(const float* q, const float* k, long ldk, int lo, int hi, int d_k,
                             float scale, const uint8_t* mask, float* p) {
    int j, n = hi - lo;
    if (n <= 0) return 0;
    for (j = 0; j < n; j++) {
        float dot = cyf_dot(q, k + (long)(lo + j) * ldk, d_k);
        p[j] = (mask && !mask[lo + j]) ? -INFINITY : dot * scale;
    }
    return cyf_softmax_inplace(p, n, 0);
}

/* Attention of one query row against keys [lo, hi) of one head: the decoding path and the
 * row analogue of the block path for short sequences (a GEMM call per tiny block costs more
 * than its arithmetic). Probabilities into scores[0:hi-lo] (before dropout); with
 * threshold != 0, dropout with the mask of indices first + lo + j (dropped: scratch for
 * hi - lo floats); out[0:d_k] = sum_j p_j v_j. Returns 0 (out = 0) when no key is visible. */
CYF_CLONES static int cyf_attend_row(const float* q, const float* k, long ldk, const float* v,
                                     long ldv, float* out, int lo, int hi, int d_k, float scale,
                                     const uint8_t* mask, float* scores, float* dropped,
                                     uint64_t seed, uint64_t first, uint32_t threshold, float inv_keep) {
    int j, c, n = hi - lo;
    for (c = 0; c < d_k; c++) out[c] = 0.0f;
    if (!cyf_row_probs(q, k, ldk, lo, hi, d_k, scale, mask, scores)) return 0;
    const float* p = scores;
    if (threshold) {
        memcpy(dropped, scores, sizeof(float) * (size_t)n);
        cyf_dropout_row(dropped, n, seed, first + (uint64_t)lo, threshold, inv_keep);
        p = dropped;
    }
    for (j = 0; j < n; j++) {
        const float* vj = v + (long)(lo + j) * ldv;
        float pj = p[j];
        for (c = 0; c < d_k; c++) out[c] += pj * vj[c];
    }
    return 1;
}

/* Backward of cyf_attend_row for one query row: dq[0:d_k] is written, dk / dv rows
 * [lo, hi) are added to. p, t, u: scratch of hi - lo floats each.
 *   P = softmax; Pd = dropout(P); dV_j += Pd_j dO; dP_j = dropout(dO . v_j);
 *   dS_j = P_j (dP_j - sum_l P_l dP_l); dq = scale sum_j dS_j k_j; dK_j += scale dS_j q */
CYF_CLONES static void cyf_attend_row_backward(const float* q, const float* k, long ldk, const float* v,
                                               long ldv, const float* dout, float* dq, float* dk, long lddk,
                                               float* dv, long lddv, int lo, int hi, int d_k, float scale,
                                               const uint8_t* mask, float* p, float* t, float* u,
                                               uint64_t seed, uint64_t first, uint32_t threshold,
                                               float inv_keep) {
    int j, c, n = hi - lo;
    for (c = 0; c < d_k; c++) dq[c] = 0.0f;
    if (!cyf_row_probs(q, k, ldk, lo, hi, d_k, scale, mask, p)) return;
    for (j = 0; j < n; j++) {
        const float* vj = v + (long)(lo + j) * ldv;
        t[j] = cyf_dot(dout, vj, d_k);
    }
    memcpy(u, p, sizeof(float) * (size_t)n);
    if (threshold) {
        cyf_dropout_row(u, n, seed, first + (uint64_t)lo, threshold, inv_keep);
        cyf_dropout_row(t, n, seed, first + (uint64_t)lo, threshold, inv_keep);
    }
    float sum = 0.0f;
    for (j = 0; j < n; j++) sum += p[j] * t[j];
    for (j = 0; j < n; j++) {
        float* dvj = dv + (long)(lo + j) * lddv;
        float* dkj = dk + (long)(lo + j) * lddk;
        const float* kj = k + (long)(lo + j) * ldk;
        float pd = u[j];
        float ds = p[j] * (t[j] - sum) * scale;
        cyf_axpy(dvj, dout, pd, d_k);
        cyf_axpy(dkj, q, ds, d_k);
        cyf_axpy(dq, kj, ds, d_k);
    }
}

#endif
