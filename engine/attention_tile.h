/* The products of the tiled (FlashAttention) path of attention.pyx, as register-tiled
 * AVX-512 or AVX2/FMA kernels: S = scale Q K^T over a tile of keys (and the backward's dP = dO V^T),
 * and O += P V (and the backward's dQ += dS K). The backward's transposed products
 * (dV += P^T dO, dK += dS^T Q) stay with sgemm.
 *
 * Why not sgemm: each tile is small (64-128 query rows x 256 keys x d_k), and BLAS packs
 * both operands on every call; profiles of the sgemm version spent a third of the GEMM time
 * copying Q, K, P and V tiles. Here K is packed once per (sequence, head, chunk of queries)
 * into panels of 16 keys stored dimension-major (kt), reused by every query block of the
 * chunk (and in the backward, V too, once per (sequence, head)); Q and P rows are broadcast
 * in place and V rows are read in place (a head's slice of a row is contiguous), so neither
 * kernel copies anything per tile.
 *
 * Each output element is one sum over the reduction index in order, in one lane: results do
 * not depend on how the rows are split between threads, nor on which of the two kernel sets
 * runs. Needs AVX2 and FMA (checked at run time: cyf_tile_level) and d_k a multiple of 8 for
 * cyf_tile_pv; elsewhere attention.pyx multiplies the tiles by sgemm.
 */
#ifndef CYFORMER_ATTENTION_TILE_H
#define CYFORMER_ATTENTION_TILE_H

#include <string.h>

#define CYF_TILE_PANEL 16

/* K rows [0, n) (ldk floats apart, d_k wide) -> kt: panel p (keys 16p..16p+15) at
 * kt + 16 * p * d_k, element (key j, dimension c) at [16 * c + j % 16]; keys past n are 0.
 * (The layout of gemm_panel.h's cyf_panel_pack, kept apart from that header, which brings
 * the linear kernels' thread-local scratch along.) */
static void cyf_tile_pack(const float* k, long ldk, int n, int d_k, float* kt) {
    int p, j, c;
    for (p = 0; p < n; p += CYF_TILE_PANEL) {
        float* dst = kt + (long)p * d_k;
        int keys = n - p < CYF_TILE_PANEL ? n - p : CYF_TILE_PANEL;
        if (keys < CYF_TILE_PANEL) memset(dst, 0, sizeof(float) * (size_t)d_k * CYF_TILE_PANEL);
        for (j = 0; j < keys; j++) {
            const float* src = k + (long)(p + j) * ldk;
            for (c = 0; c < d_k; c++) dst[(long)c * CYF_TILE_PANEL + j] = src[c];
        }
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define CYF_TILE_TARGET __attribute__((target("avx2,fma"), unused))

#define CYF_TILE512_TARGET __attribute__((target("avx512f,avx2,fma"), unused))

/* The kernels this CPU runs: 2 = AVX-512 (16-float registers), 1 = AVX2/FMA, 0 = none (the
 * caller multiplies by sgemm). Both sets sum in the same order with the same FMAs, so they
 * give the same bits. */
static int cyf_tile_cpu(void) {
    static int level = -1;  /* the same answer from every thread: relaxed atomics suffice */
    int v = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 0
            : __builtin_cpu_supports("avx512f") ? 2 : 1;
        __atomic_store_n(&level, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* the highest level allowed (tests and bench/ force the AVX2 kernels on AVX-512 CPUs) */
static int cyf_tile_cap_level = 2;
static int cyf_tile_level(void) {
    int v = cyf_tile_cpu();
    return v < cyf_tile_cap_level ? v : cyf_tile_cap_level;
}
static void cyf_tile_cap(int level) { cyf_tile_cap_level = level; }
static int cyf_tile_ok(void) { return cyf_tile_level() > 0; }

/* 6 rows x 16 columns: acc r0/r1 += broadcast(a_i[x]) * (b0, b1) */
#define CYF_TILE_FMA(i, a)                                                                    \
    t = _mm256_broadcast_ss(a);                                                               \
    c##i##0 = _mm256_fmadd_ps(t, b0, c##i##0);                                                \
    c##i##1 = _mm256_fmadd_ps(t, b1, c##i##1);

#define CYF_TILE_ZERO                                                                         \
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, \
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, b0, b1, t;

/* s[i * lds + j] = scale * sum_c q_i[c] * key_j[c] for rows i < rows (q rows ldq floats apart)
 * and the keys of panels 0..n_panels-1 of kt (16 * n_panels columns of s). */
CYF_TILE_TARGET static void cyf_tile_qk8(const float* q, long ldq, int rows, const float* kt, int n_panels,
                                        int d_k, float scale, float* s, int lds) {
    int p, r, i, c;
    const __m256 sc = _mm256_set1_ps(scale);
    for (p = 0; p < n_panels; p++) {
        const float* kp = kt + (long)p * CYF_TILE_PANEL * d_k;
        for (r = 0; r < rows; r += 6) {
            int nr = rows - r < 6 ? rows - r : 6;
            /* rows past the end repeat the last one (their sums are not stored) */
            const float* a[6];
            for (i = 0; i < 6; i++) a[i] = q + (long)(r + (i < nr ? i : nr - 1)) * ldq;
            const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
            CYF_TILE_ZERO
            for (c = 0; c < d_k; c++) {
                b0 = _mm256_loadu_ps(kp + 16 * c);
                b1 = _mm256_loadu_ps(kp + 16 * c + 8);
                CYF_TILE_FMA(0, a0 + c) CYF_TILE_FMA(1, a1 + c) CYF_TILE_FMA(2, a2 + c)
                CYF_TILE_FMA(3, a3 + c) CYF_TILE_FMA(4, a4 + c) CYF_TILE_FMA(5, a5 + c)
            }
            __m256 out[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
            for (i = 0; i < nr; i++) {
                float* dst = s + (long)(r + i) * lds + p * CYF_TILE_PANEL;
                _mm256_storeu_ps(dst, _mm256_mul_ps(out[2 * i], sc));
                _mm256_storeu_ps(dst + 8, _mm256_mul_ps(out[2 * i + 1], sc));
            }
        }
    }
}

/* o[i * ldo + c] += sum_{j < n} p[i * ldp + j] * v[j * ldv + c] for rows i < rows and
 * c < d_k (d_k % 8 == 0): 16 columns at a time (then 8), 6 rows at a time, so the tile's
 * slice of V (n x 16 floats) stays in L1 across the row groups. */
CYF_TILE_TARGET static void cyf_tile_pv8(const float* p, int ldp, int rows, const float* v, long ldv, int n,
                                        int d_k, float* o, long ldo) {
    int c0, r, i, j;
    for (c0 = 0; c0 < d_k; c0 += 16) {
        int two = d_k - c0 >= 16;
        for (r = 0; r < rows; r += 6) {
            int nr = rows - r < 6 ? rows - r : 6;
            const float* a[6];
            for (i = 0; i < 6; i++) a[i] = p + (long)(r + (i < nr ? i : nr - 1)) * ldp;
            const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
            const float* vc = v + c0;
            CYF_TILE_ZERO
            if (two) {
                for (j = 0; j < n; j++) {
                    b0 = _mm256_loadu_ps(vc + (long)j * ldv);
                    b1 = _mm256_loadu_ps(vc + (long)j * ldv + 8);
                    CYF_TILE_FMA(0, a0 + j) CYF_TILE_FMA(1, a1 + j) CYF_TILE_FMA(2, a2 + j)
                    CYF_TILE_FMA(3, a3 + j) CYF_TILE_FMA(4, a4 + j) CYF_TILE_FMA(5, a5 + j)
                }
            } else {
                b1 = _mm256_setzero_ps();
                for (j = 0; j < n; j++) {
                    b0 = _mm256_loadu_ps(vc + (long)j * ldv);
                    CYF_TILE_FMA(0, a0 + j) CYF_TILE_FMA(1, a1 + j) CYF_TILE_FMA(2, a2 + j)
                    CYF_TILE_FMA(3, a3 + j) CYF_TILE_FMA(4, a4 + j) CYF_TILE_FMA(5, a5 + j)
                }
            }
            __m256 acc[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
            for (i = 0; i < nr; i++) {
                float* dst = o + (long)(r + i) * ldo + c0;
                _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), acc[2 * i]));
                if (two) _mm256_storeu_ps(dst + 8, _mm256_add_ps(_mm256_loadu_ps(dst + 8), acc[2 * i + 1]));
            }
        }
    }
}

/* The AVX-512 kernels: 8 rows x 32 columns (two 16-float registers) per register tile. */
#define CYF_T16_FMA(i, a)                                                                     \
    t = _mm512_set1_ps(*(a));                                                                 \
    c##i##0 = _mm512_fmadd_ps(t, b0, c##i##0);                                                \
    c##i##1 = _mm512_fmadd_ps(t, b1, c##i##1);

#define CYF_T16_ZERO                                                                          \
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, \
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00,       \
           c61 = c00, c70 = c00, c71 = c00, b0, b1, t;

#define CYF_T16_ROWS(a, x)                                                                    \
    CYF_T16_FMA(0, a[0] + (x)) CYF_T16_FMA(1, a[1] + (x)) CYF_T16_FMA(2, a[2] + (x))          \
    CYF_T16_FMA(3, a[3] + (x)) CYF_T16_FMA(4, a[4] + (x)) CYF_T16_FMA(5, a[5] + (x))          \
    CYF_T16_FMA(6, a[6] + (x)) CYF_T16_FMA(7, a[7] + (x))

/* cyf_tile_qk8 with 8 rows x 2 panels per register tile (an odd last panel is computed
 * twice and stored once) */
CYF_TILE512_TARGET static void cyf_tile_qk16(const float* q, long ldq, int rows, const float* kt,
                                             int n_panels, int d_k, float scale, float* s, int lds) {
    int p, r, i, c;
    const __m512 sc = _mm512_set1_ps(scale);
    for (p = 0; p < n_panels; p += 2) {
        int both = p + 1 < n_panels;
        const float* k0 = kt + (long)p * CYF_TILE_PANEL * d_k;
        const float* k1 = both ? k0 + (long)CYF_TILE_PANEL * d_k : k0;
        for (r = 0; r < rows; r += 8) {
            int nr = rows - r < 8 ? rows - r : 8;
            const float* a[8];
            for (i = 0; i < 8; i++) a[i] = q + (long)(r + (i < nr ? i : nr - 1)) * ldq;
            CYF_T16_ZERO
            for (c = 0; c < d_k; c++) {
                b0 = _mm512_loadu_ps(k0 + 16 * c);
                b1 = _mm512_loadu_ps(k1 + 16 * c);
                CYF_T16_ROWS(a, c)
            }
            __m512 out[16] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71};
            for (i = 0; i < nr; i++) {
                float* dst = s + (long)(r + i) * lds + p * CYF_TILE_PANEL;
                _mm512_storeu_ps(dst, _mm512_mul_ps(out[2 * i], sc));
                if (both) _mm512_storeu_ps(dst + 16, _mm512_mul_ps(out[2 * i + 1], sc));
            }
        }
    }
}

/* cyf_tile_pv8 with 8 rows x 32 columns per register tile; needs d_k % 16 == 0 */
CYF_TILE512_TARGET static void cyf_tile_pv16(const float* p, int ldp, int rows, const float* v, long ldv,
                                             int n, int d_k, float* o, long ldo) {
    int c0, r, i, j;
    for (c0 = 0; c0 < d_k; c0 += 32) {
        int two = d_k - c0 >= 32;
        for (r = 0; r < rows; r += 8) {
            int nr = rows - r < 8 ? rows - r : 8;
            const float* a[8];
            for (i = 0; i < 8; i++) a[i] = p + (long)(r + (i < nr ? i : nr - 1)) * ldp;
            const float* vc = v + c0;
            /* one column register: the second repeats the first (computed, not stored) */
            const float* vc1 = two ? vc + 16 : vc;
            CYF_T16_ZERO
            for (j = 0; j < n; j++) {
                b0 = _mm512_loadu_ps(vc + (long)j * ldv);
                b1 = _mm512_loadu_ps(vc1 + (long)j * ldv);
                CYF_T16_ROWS(a, j)
            }
            __m512 acc[16] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71};
            for (i = 0; i < nr; i++) {
                float* dst = o + (long)(r + i) * ldo + c0;
                _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), acc[2 * i]));
                if (two) _mm512_storeu_ps(dst + 16, _mm512_add_ps(_mm512_loadu_ps(dst + 16), acc[2 * i + 1]));
            }
        }
    }
}

/* the kernel of this CPU's level (cyf_tile_level() > 0) */
static void cyf_tile_qk(const float* q, long ldq, int rows, const float* kt, int n_panels, int d_k,
                        float scale, float* s, int lds) {
    if (cyf_tile_level() >= 2) cyf_tile_qk16(q, ldq, rows, kt, n_panels, d_k, scale, s, lds);
    else cyf_tile_qk8(q, ldq, rows, kt, n_panels, d_k, scale, s, lds);
}
static void cyf_tile_pv(const float* p, int ldp, int rows, const float* v, long ldv, int n, int d_k,
                        float* o, long ldo) {
    if (cyf_tile_level() >= 2 && d_k % 16 == 0) cyf_tile_pv16(p, ldp, rows, v, ldv, n, d_k, o, ldo);
    else cyf_tile_pv8(p, ldp, rows, v, ldv, n, d_k, o, ldo);
}

#else
static int cyf_tile_level(void) { return 0; }
static void cyf_tile_cap(int level) { (void)level; }
static int cyf_tile_ok(void) { return 0; }
static void cyf_tile_qk(const float* q, long ldq, int rows, const float* kt, int n_panels, int d_k,
                        float scale, float* s, int lds) {
    (void)q; (void)ldq; (void)rows; (void)kt; (void)n_panels; (void)d_k; (void)scale; (void)s; (void)lds;
}
static void cyf_tile_pv(const float* p, int ldp, int rows, const float* v, long ldv, int n, int d_k,
                        float* o, long ldo) {
    (void)p; (void)ldp; (void)rows; (void)v; (void)ldv; (void)n; (void)d_k; (void)o; (void)ldo;
}
#endif

#endif
