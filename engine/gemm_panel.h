/* Decoding GEMM on a packed copy of x: out[m, n] (+)= sum_k x[m, k] * w[n, k] (+ bias[n])
 * for a few to a few hundred rows of x and a weight matrix in PyTorch's [N, K] layout.
 *
 * Why: at 16-64 rows (batched greedy decoding, beam search) BLAS packs the whole weight
 * matrix on every call and the dot-product kernel of skinny_gemm.h (cyf_skinny_gemm) is bound by
 * its loads, well below the core's FMA peak with weights not in cache. Here x, which is
 * small, is packed once per call into panels of 16 rows stored k-major (xt), and the
 * weights are read in place: the 6 x 16 register tile broadcasts one weight of each of 6
 * rows and multiplies it by two 8-row vectors of the panel, 12 FMAs per 8 loads. Each block
 * of 6 weight rows is read from memory once and reused from L1 for every panel.
 * bench/gemm_paths.py measures the paths against each other (figures in bench/RESULTS.md).
 *
 * Sums run over k in order in one lane, so a result does not depend on how the columns are
 * split between threads. The kernel needs AVX2 and FMA (checked at run time: cyf_panel_ok);
 * elsewhere the caller keeps the other paths.
 *
 * Two bodies, chosen once at run time (cyf_panel_body): AVX2 as above, and AVX-512, whose
 * zmm registers hold a whole 16-row panel: 6 weight rows times two panels (32 rows) in 12
 * accumulators of its 32 registers, 12 FMAs per 8 loads at twice the width. Each output is
 * the same chain of FMAs over k in both bodies, so they give the same bits.
 */
#ifndef CYFORMER_GEMM_PANEL_H
#define CYFORMER_GEMM_PANEL_H

#include <stdlib.h>
#include <string.h>

#define CYF_PANEL 16

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#include "scratch.h"
#define CYF_PANEL_TARGET __attribute__((target("avx2,fma")))

static int cyf_panel_ok(void) {
    static int ok = -1;  /* the same answer from every thread: relaxed atomics suffice */
    int v = __atomic_load_n(&ok, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        __atomic_store_n(&ok, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* the bodies: CYF_PANEL_AVX2, CYF_PANEL_AVX512 */
enum { CYF_PANEL_AVX2 = 0, CYF_PANEL_AVX512 = 1 };

static int cyf_panel_avx512_ok(void) {
    __builtin_cpu_init();
    return cyf_panel_ok() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}

/* The body in use: the widest this CPU runs, unless forced (cyf_panel_set_body, for tests). */
static int cyf_panel_body_v = -1;
static int cyf_panel_body(void) {
    int v = __atomic_load_n(&cyf_panel_body_v, __ATOMIC_RELAXED);
    if (v < 0) {
        v = cyf_panel_avx512_ok() ? CYF_PANEL_AVX512 : CYF_PANEL_AVX2;
        __atomic_store_n(&cyf_panel_body_v, v, __ATOMIC_RELAXED);
    }
    return v;
}
/* 0 when this CPU lacks the body; body < 0: back to the run-time choice */
static int cyf_panel_set_body(int body) {
    if (body == CYF_PANEL_AVX512 && !cyf_panel_avx512_ok()) return 0;
    if (body == CYF_PANEL_AVX2 && !cyf_panel_ok()) return 0;
    __atomic_store_n(&cyf_panel_body_v, body < 0 ? -1 : body, __ATOMIC_RELAXED);
    return 1;
}

/* x [M, K] (row stride ldx) -> xt: panel p (rows 16p..16p+15) at xt + 16 * p * K, element
 * (i, k) at [16 * k + i]; rows past M are zero. xt is 32-byte aligned. */
static void cyf_panel_pack(const float* x, long ldx, int M, int K, float* xt) {
    int p, i, k;
    for (p = 0; p < M; p += CYF_PANEL) {
        float* dst = xt + (long)p * K;
        int rows = M - p < CYF_PANEL ? M - p : CYF_PANEL;
        if (rows < CYF_PANEL) memset(dst, 0, sizeof(float) * (size_t)K * CYF_PANEL);
        for (i = 0; i < rows; i++) {
            const float* src = x + (long)(p + i) * ldx;
            for (k = 0; k < K; k++) dst[(long)k * CYF_PANEL + i] = src[k];
        }
    }
}

/* The next block of 6 contiguous weight rows (6 * K floats) is prefetched into L2 during
 * the first panel's pass: short rows (K = 256 is 1 KB) end before the hardware prefetcher
 * has ramped up. 6 lines per 16 k, the rate this block is read at. */
#define CYF_PANEL_PREFETCH(pf, k)                                                             \
    if (pf && !((k) & 15) && (k) + 16 <= K) { /* stays inside the next block */              \
        const char* p_ = (const char*)((pf) + 6 * (k));                                      \
        _mm_prefetch(p_, _MM_HINT_T1); _mm_prefetch(p_ + 64, _MM_HINT_T1);                    \
        _mm_prefetch(p_ + 128, _MM_HINT_T1); _mm_prefetch(p_ + 192, _MM_HINT_T1);             \
        _mm_prefetch(p_ + 256, _MM_HINT_T1); _mm_prefetch(p_ + 320, _MM_HINT_T1);             \
    }

#define CYF_FMA2(w, r0, r1)                                                                   \
    b = _mm256_broadcast_ss((w) + k);                                                         \
    r0 = _mm256_fmadd_ps(b, x0, r0);                                                          \
    r1 = _mm256_fmadd_ps(b, x1, r1);
#define CYF_FMA1(w, r0)                                                                       \
    b = _mm256_broadcast_ss((w) + k);                                                         \
    r0 = _mm256_fmadd_ps(b, x0, r0);

/* tile[16 * j + i] = sum_k w_j[k] * panel(i, k) for the 6 weight rows w[j], 16 panel rows */
CYF_PANEL_TARGET static inline void cyf_panel_6x16(const float* xt, const float* const* w, int K,
                                                   float* tile, const float* pf) {
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5];
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, b;
    int k;
    for (k = 0; k < K; k++) {
        CYF_PANEL_PREFETCH(pf, k)
        __m256 x0 = _mm256_load_ps(xt + CYF_PANEL * k), x1 = _mm256_load_ps(xt + CYF_PANEL * k + 8);
        CYF_FMA2(w0, c00, c01) CYF_FMA2(w1, c10, c11) CYF_FMA2(w2, c20, c21)
        CYF_FMA2(w3, c30, c31) CYF_FMA2(w4, c40, c41) CYF_FMA2(w5, c50, c51)
    }
    _mm256_store_ps(tile + 0, c00); _mm256_store_ps(tile + 8, c01);
    _mm256_store_ps(tile + 16, c10); _mm256_store_ps(tile + 24, c11);
    _mm256_store_ps(tile + 32, c20); _mm256_store_ps(tile + 40, c21);
    _mm256_store_ps(tile + 48, c30); _mm256_store_ps(tile + 56, c31);
    _mm256_store_ps(tile + 64, c40); _mm256_store_ps(tile + 72, c41);
    _mm256_store_ps(tile + 80, c50); _mm256_store_ps(tile + 88, c51);
}

/* The same for a panel's first 8 rows only (the last panel when it holds <= 8 rows). */
CYF_PANEL_TARGET static inline void cyf_panel_6x8(const float* xt, const float* const* w, int K,
                                                  float* tile, const float* pf) {
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5];
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, b;
    int k;
    for (k = 0; k < K; k++) {
        CYF_PANEL_PREFETCH(pf, k)
        __m256 x0 = _mm256_load_ps(xt + CYF_PANEL * k);
        CYF_FMA1(w0, c0) CYF_FMA1(w1, c1) CYF_FMA1(w2, c2)
        CYF_FMA1(w3, c3) CYF_FMA1(w4, c4) CYF_FMA1(w5, c5)
    }
    _mm256_store_ps(tile + 0, c0); _mm256_store_ps(tile + 16, c1);
    _mm256_store_ps(tile + 32, c2); _mm256_store_ps(tile + 48, c3);
    _mm256_store_ps(tile + 64, c4); _mm256_store_ps(tile + 80, c5);
}

/* AVX-512: tile[16 * j + i] for panel xt and tile2[16 * j + i] for the next panel (xt2),
 * 6 weight rows; each lane's FMA chain is the AVX2 body's. */
#define CYF_PANEL_T512 __attribute__((target("avx512f,avx2,fma")))
#define CYF_FMA512(w, r0, r1)                                                                 \
    b5 = _mm512_set1_ps((w)[k]);                                                              \
    r0 = _mm512_fmadd_ps(b5, x0, r0);                                                         \
    r1 = _mm512_fmadd_ps(b5, x1, r1);
CYF_PANEL_T512 static inline void cyf_panel512_6x32(const float* xt, const float* xt2,
                                                     const float* const* w, int K, float* tile,
                                                     float* tile2, const float* pf) {
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5];
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, b5;
    int k;
    for (k = 0; k < K; k++) {
        CYF_PANEL_PREFETCH(pf, k)
        __m512 x0 = _mm512_load_ps(xt + CYF_PANEL * k), x1 = _mm512_load_ps(xt2 + CYF_PANEL * k);
        CYF_FMA512(w0, c00, c01) CYF_FMA512(w1, c10, c11) CYF_FMA512(w2, c20, c21)
        CYF_FMA512(w3, c30, c31) CYF_FMA512(w4, c40, c41) CYF_FMA512(w5, c50, c51)
    }
    _mm512_store_ps(tile + 0, c00); _mm512_store_ps(tile2 + 0, c01);
    _mm512_store_ps(tile + 16, c10); _mm512_store_ps(tile2 + 16, c11);
    _mm512_store_ps(tile + 32, c20); _mm512_store_ps(tile2 + 32, c21);
    _mm512_store_ps(tile + 48, c30); _mm512_store_ps(tile2 + 48, c31);
    _mm512_store_ps(tile + 64, c40); _mm512_store_ps(tile2 + 64, c41);
    _mm512_store_ps(tile + 80, c50); _mm512_store_ps(tile2 + 80, c51);
}

/* one panel, 16 rows, 6 weight rows on zmm (the last panel of an odd count) */
CYF_PANEL_T512 static inline void cyf_panel512_6x16(const float* xt, const float* const* w, int K,
                                                     float* tile, const float* pf) {
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5];
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, b5;
    int k;
    for (k = 0; k < K; k++) {
        CYF_PANEL_PREFETCH(pf, k)
        __m512 x0 = _mm512_load_ps(xt + CYF_PANEL * k);
        b5 = _mm512_set1_ps(w0[k]); c0 = _mm512_fmadd_ps(b5, x0, c0);
        b5 = _mm512_set1_ps(w1[k]); c1 = _mm512_fmadd_ps(b5, x0, c1);
        b5 = _mm512_set1_ps(w2[k]); c2 = _mm512_fmadd_ps(b5, x0, c2);
        b5 = _mm512_set1_ps(w3[k]); c3 = _mm512_fmadd_ps(b5, x0, c3);
        b5 = _mm512_set1_ps(w4[k]); c4 = _mm512_fmadd_ps(b5, x0, c4);
        b5 = _mm512_set1_ps(w5[k]); c5 = _mm512_fmadd_ps(b5, x0, c5);
    }
    _mm512_store_ps(tile + 0, c0); _mm512_store_ps(tile + 16, c1);
    _mm512_store_ps(tile + 32, c2); _mm512_store_ps(tile + 48, c3);
    _mm512_store_ps(tile + 64, c4); _mm512_store_ps(tile + 80, c5);
}

/* out[p + i, n + j] (+)= tile[16 * j + i] + bias[n + j] (+ 0 without a bias) for i < rows, j < nb */
static inline void cyf_panel_store(const float* tile, int rows, int nb, int n, const float* bias,
                                   float* out, long ldo, int accumulate) {
    int i, j;
    for (i = 0; i < rows; i++) {
        float* o = out + (long)i * ldo + n;
        for (j = 0; j < nb; j++) {
            float v = tile[CYF_PANEL * j + i] + (bias ? bias[n + j] : 0.0f);
            o[j] = accumulate ? o[j] + v : v;
        }
    }
}

/* The same in vectors for the AVX-512 body: the tile's 6 columns x 16 rows transposed 8 rows
 * at a time (an 8 x 8 transpose, the two missing columns zero), each row's nb values written
 * by one masked store (AVX-512VL's; AVX2's vmaskmovps store is slow on AMD cores). The same
 * additions, so the same bits. */
#define CYF_PANEL_T512VL __attribute__((target("avx512f,avx512vl,avx2,fma")))
CYF_PANEL_T512VL static inline void cyf_panel_store512(const float* tile, int rows, int nb, int n,
                                                       const float* bias, float* out, long ldo,
                                                       int accumulate) {
    __mmask8 m = (__mmask8)((1u << nb) - 1u);
    __m256 b = bias ? _mm256_maskz_loadu_ps(m, bias + n) : _mm256_setzero_ps();
    int h, i;
    for (h = 0; h < rows; h += 8) {
        __m256 r0 = _mm256_load_ps(tile + h), r1 = _mm256_load_ps(tile + CYF_PANEL + h);
        __m256 r2 = _mm256_load_ps(tile + 2 * CYF_PANEL + h), r3 = _mm256_load_ps(tile + 3 * CYF_PANEL + h);
        __m256 r4 = _mm256_load_ps(tile + 4 * CYF_PANEL + h), r5 = _mm256_load_ps(tile + 5 * CYF_PANEL + h);
        __m256 z = _mm256_setzero_ps();
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 u4 = _mm256_shuffle_ps(t4, z, 0x44), u5 = _mm256_shuffle_ps(t4, z, 0xEE);
        __m256 u6 = _mm256_shuffle_ps(t5, z, 0x44), u7 = _mm256_shuffle_ps(t5, z, 0xEE);
        __m256 c[8];
        c[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
        c[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
        c[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
        c[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
        c[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
        c[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
        c[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
        c[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
        for (i = 0; i < 8 && h + i < rows; i++) {   /* c[i]: row h + i, columns n .. n + 5 */
            float* o = out + (long)(h + i) * ldo + n;
            __m256 v = _mm256_add_ps(c[i], b);
            if (accumulate) v = _mm256_add_ps(_mm256_maskz_loadu_ps(m, o), v);
            _mm256_mask_storeu_ps(o, m, v);
        }
    }
}

/* Columns n0 <= n < n1 of out, all M rows, from the packed xt (cyf_panel_pack). */
CYF_PANEL_TARGET static void cyf_panel_gemm(const float* xt, int M, const float* w, long ldw,
                                            const float* bias, float* out, long ldo, int n0,
                                            int n1, int K, int accumulate) {
    float tile[6 * CYF_PANEL] __attribute__((aligned(64)));
    float tile2[6 * CYF_PANEL] __attribute__((aligned(64)));
    const float* wr[6];
    int n, p, j;
    int prefetch = ldw == K && K <= 512;
    int wide = cyf_panel_body() == CYF_PANEL_AVX512;
    for (n = n0; n < n1; n += 6) {
        int nb = n1 - n < 6 ? n1 - n : 6;
        /* a short last block repeats its last row: same work, results dropped */
        for (j = 0; j < 6; j++) wr[j] = w + (long)(n + (j < nb ? j : nb - 1)) * ldw;
        for (p = 0; p < M; p += CYF_PANEL) {
            int rows = M - p < CYF_PANEL ? M - p : CYF_PANEL;
            const float* pf = prefetch && p == 0 && n + 12 <= n1 ? wr[0] + 6 * ldw : NULL;
            if (wide && M - p > CYF_PANEL) {   /* this panel and the next */
                int rows2 = M - p - CYF_PANEL < CYF_PANEL ? M - p - CYF_PANEL : CYF_PANEL;
                cyf_panel512_6x32(xt + (long)p * K, xt + (long)(p + CYF_PANEL) * K, wr, K, tile, tile2, pf);
                cyf_panel_store512(tile, rows, nb, n, bias, out + (long)p * ldo, ldo, accumulate);
                cyf_panel_store512(tile2, rows2, nb, n, bias, out + (long)(p + CYF_PANEL) * ldo, ldo, accumulate);
                p += CYF_PANEL;
                continue;
            }
            if (wide && rows > 8)
                cyf_panel512_6x16(xt + (long)p * K, wr, K, tile, pf);
            else if (rows > 8)
                cyf_panel_6x16(xt + (long)p * K, wr, K, tile, pf);
            else
                cyf_panel_6x8(xt + (long)p * K, wr, K, tile, pf);
            if (wide)
                cyf_panel_store512(tile, rows, nb, n, bias, out + (long)p * ldo, ldo, accumulate);
            else
                cyf_panel_store(tile, rows, nb, n, bias, out + (long)p * ldo, ldo, accumulate);
        }
    }
}

/* A per-thread scratch buffer of at least n floats (scratch.h, slot 0): the pack of x is
 * rewritten on every GEMM. NULL when out of memory (the caller then takes another path). */
static float* cyf_scratch(size_t n) { return (float*)cyf_scratch_bytes(0, n * sizeof(float)); }

#else  /* not x86-64 GCC/clang: no panel kernel */
enum { CYF_PANEL_AVX2 = 0, CYF_PANEL_AVX512 = 1 };
static int cyf_panel_ok(void) { return 0; }
static int cyf_panel_avx512_ok(void) { return 0; }
static int cyf_panel_body(void) { return CYF_PANEL_AVX2; }
static int cyf_panel_set_body(int body) { (void)body; return 0; }
static void cyf_panel_pack(const float* x, long ldx, int M, int K, float* xt) {
    (void)x; (void)ldx; (void)M; (void)K; (void)xt;
}
static void cyf_panel_gemm(const float* xt, int M, const float* w, long ldw, const float* bias,
                           float* out, long ldo, int n0, int n1, int K, int accumulate) {
    (void)xt; (void)M; (void)w; (void)ldw; (void)bias; (void)out; (void)ldo; (void)n0;
    (void)n1; (void)K; (void)accumulate;
}
static float* cyf_scratch(size_t n) { (void)n; return NULL; }
#endif

#endif
