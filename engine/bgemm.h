/* bf16 GEMM: out[m, n] (+)= sum_k x[m, k] * w[n, k] (+ bias[n]) with the weights stored as
 * bfloat16 (the upper 16 bits of a float32, as uint16 [N, K]) and float32 accumulation.
 *
 * Bodies (chosen once from cpuid, cyf_b_best; each can be forced for tests):
 * - AVX512BF16: `vdpbf16ps` on zmm, 32 products per instruction. The activations are rounded
 *   to bf16 once per call (cyf_b_pack, round to nearest even) so both operands are bf16; the
 *   instruction adds each pair of products into float32 lanes;
 * - F32: the weights are widened to float32 in the kernel (a shift) and multiplied with the
 *   float32 activations as they are (any CPU; target_clones picks AVX-512 / AVX2 / SSE2);
 * - AMX: TDPBF16PS tiles (bgemm_amx.h) for GEMMs of 16 rows and more, the AVX512BF16 body
 *   below that; the activations are rounded the same way.
 * The two bodies differ in the activation rounding, so each is tested against its own
 * float64 reference. Tiles of up to 4 x 4 rows in dot-product form as in qgemm.h; every
 * output is one sum in a fixed order, whatever the split of rows or columns between threads.
 */
#ifndef CYFORMER_BGEMM_H
#define CYFORMER_BGEMM_H

#include <stdint.h>
#include <string.h>

#include "vec.h"

enum { CYF_B_F32 = 0, CYF_B_AVX512BF16 = 1, CYF_B_AMX = 2, CYF_B_NPATHS = 3 };
#define CYF_B_MR 4
#define CYF_B_NR 4

/* float32 -> bf16, round to nearest even; NaN stays a (quiet) NaN */
CYF_INLINE uint16_t cyf_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

CYF_INLINE float cyf_bf16_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

CYF_CLONES static void cyf_bf16_round_row(const float* x, int K, uint16_t* out) {
    int k;
    for (k = 0; k < K; k++) out[k] = cyf_bf16(x[k]);
}

/* out[i * CYF_B_NR + j] + bias -> out rows, as the float32 kernels store */
static void cyf_b_store(const float* acc, int mb, int nb, int n, const float* bias, float* out,
                        long ldo, int accumulate) {
    int i, j;
    for (i = 0; i < mb; i++)
        for (j = 0; j < nb; j++) {
            float v = acc[i * CYF_B_NR + j] + (bias ? bias[n + j] : 0.0f);
            float* o = out + (long)i * ldo + n + j;
            *o = accumulate ? *o + v : v;
        }
}

/* A tile: acc[i * NR + j] = sum_k x_i[k] * w_j[k]; x is the caller's float32 rows (F32) or
 * their bf16 copy (AVX512BF16), ldx elements apart. */
typedef void (*cyf_b_tile_fn)(const void* x, long ldx, int mb, const uint16_t* const* w, int K,
                              float* acc);

typedef uint16_t cyf_u16x8 __attribute__((vector_size(16), aligned(2)));
typedef uint32_t cyf_u32x8 __attribute__((vector_size(32)));

CYF_INLINE cyf_v8 cyf_b_widen8(const uint16_t* p) {
    cyf_u32x8 u = __builtin_convertvector(*(const cyf_u16x8*)p, cyf_u32x8) << 16;
    cyf_v8 f;
    memcpy(&f, &u, 32);
    return f;
}

CYF_CLONES static void cyf_b_tile_f32(const void* xv, long ldx, int mb, const uint16_t* const* w,
                                      int K, float* acc) {
    const float* x = (const float*)xv;
    int i, j, k, K8 = K & ~7;
    for (i = 0; i < mb; i++) {
        const float* xi = x + (long)i * ldx;
        cyf_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (k = 0; k < K8; k += 8) {
            cyf_v8 v = *(const cyf_v8u*)(xi + k);
            a0 += v * cyf_b_widen8(w[0] + k);
            a1 += v * cyf_b_widen8(w[1] + k);
            a2 += v * cyf_b_widen8(w[2] + k);
            a3 += v * cyf_b_widen8(w[3] + k);
        }
        float s[CYF_B_NR] = {cyf_hsum(a0), cyf_hsum(a1), cyf_hsum(a2), cyf_hsum(a3)};
        for (j = 0; j < CYF_B_NR; j++) {
            for (k = K8; k < K; k++) s[j] += xi[k] * cyf_bf16_float(w[j][k]);
            acc[i * CYF_B_NR + j] = s[j];
        }
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define CYF_B_HAVE_X86 1
#define CYF_B_T512 __attribute__((target("avx512f,avx512bw,avx512bf16")))

CYF_B_T512 static inline __attribute__((always_inline)) void
cyf_b_bf16_mr(const uint16_t* x, long ldx, const int mb, const uint16_t* const* w, int K, float* acc) {
    __m512 a[CYF_B_MR][CYF_B_NR];
    int i, j, k;
    for (i = 0; i < mb; i++)
        for (j = 0; j < CYF_B_NR; j++) a[i][j] = _mm512_setzero_ps();
    for (k = 0; k + 32 <= K; k += 32) {
        __m512bh wv[CYF_B_NR];
        for (j = 0; j < CYF_B_NR; j++) wv[j] = (__m512bh)_mm512_loadu_si512((const void*)(w[j] + k));
        for (i = 0; i < mb; i++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512((const void*)(x + (long)i * ldx + k));
            for (j = 0; j < CYF_B_NR; j++) a[i][j] = _mm512_dpbf16_ps(a[i][j], xv, wv[j]);
        }
    }
    if (k < K) {  /* masked tail: zero pairs add nothing */
        __mmask32 m = (~0u) >> (32 - (K - k));
        __m512bh wv[CYF_B_NR];
        for (j = 0; j < CYF_B_NR; j++) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(m, w[j] + k);
        for (i = 0; i < mb; i++) {
            __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, x + (long)i * ldx + k);
            for (j = 0; j < CYF_B_NR; j++) a[i][j] = _mm512_dpbf16_ps(a[i][j], xv, wv[j]);
        }
    }
    for (i = 0; i < mb; i++)
        for (j = 0; j < CYF_B_NR; j++) acc[i * CYF_B_NR + j] = _mm512_reduce_add_ps(a[i][j]);
}

CYF_B_T512 static void cyf_b_tile_bf16(const void* x, long ldx, int mb, const uint16_t* const* w,
                                       int K, float* acc) {
    const uint16_t* xb = (const uint16_t*)x;
    CYF_MR_SWITCH(cyf_b_bf16_mr, xb, ldx, mb, w, K, acc)
}

static int cyf_b_cpu_has(int path) {
    __builtin_cpu_init();
    if (path == CYF_B_AVX512BF16)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512bf16");
    return path == CYF_B_F32;
}
#else
#define CYF_B_HAVE_X86 0
static int cyf_b_cpu_has(int path) { return path == CYF_B_F32; }
#endif

static int cyf_ba_status(void);
#include "amx.h"

static int cyf_b_supported(int path) {
    static int known[CYF_B_NPATHS] = {-1, -1, -1};
    int v;
    if (path < 0 || path >= CYF_B_NPATHS) return 0;
    if (path == CYF_B_AMX)   /* the tiles, or their model when a test asks for it */
        return CYF_B_HAVE_X86 && cyf_b_supported(CYF_B_AVX512BF16) &&
               (cyf_amx_emulate || cyf_ba_status() == CYF_AMX_OK);
    v = __atomic_load_n(&known[path], __ATOMIC_RELAXED);
    if (v < 0) {
        v = cyf_b_cpu_has(path);
        __atomic_store_n(&known[path], v, __ATOMIC_RELAXED);
    }
    return v;
}

/* the tiles where the hardware has them (never the model), else AVX512BF16, else F32 */
static int cyf_b_best(void) {
    if (!cyf_b_supported(CYF_B_AVX512BF16)) return CYF_B_F32;
    return cyf_ba_status() == CYF_AMX_OK ? CYF_B_AMX : CYF_B_AVX512BF16;
}

/* whether the body reads bf16 activations (the caller packs them with cyf_bf16_round_row; the
 * AMX tiles' own packing is cyf_ba_pack, for 16 rows and more) */
static int cyf_b_packs(int path) { return path == CYF_B_AVX512BF16 || path == CYF_B_AMX; }

/* Rows m0..m1, columns n0..n1 of out; x is the float32 rows (ldx floats apart) or, for a body
 * that packs, their bf16 copy (ldx uint16 apart). */
static void cyf_b_gemm(int path, const void* x, long ldx, int m0, int m1, const uint16_t* w,
                       long ldw, const float* bias, float* out, long ldo, int n0, int n1, int K,
                       int accumulate) {
    cyf_b_tile_fn tile = cyf_b_tile_f32;
    size_t esize = cyf_b_packs(path) ? sizeof(uint16_t) : sizeof(float);
    float acc[CYF_B_MR * CYF_B_NR];
    const uint16_t* wr[CYF_B_NR];
    long chunk = (256L * 1024) / ((long)esize * (ldx > 0 ? ldx : 1));
    int mc, m, n, j;
#if CYF_B_HAVE_X86
    if (path == CYF_B_AVX512BF16 || path == CYF_B_AMX) tile = cyf_b_tile_bf16;
#endif
    if (chunk < CYF_B_MR) chunk = CYF_B_MR;
    chunk -= chunk % CYF_B_MR;
    for (mc = m0; mc < m1; mc += (int)chunk) {
        int mc1 = m1 - mc < chunk ? m1 : mc + (int)chunk;
        for (n = n0; n < n1; n += CYF_B_NR) {
            int nb = n1 - n < CYF_B_NR ? n1 - n : CYF_B_NR;
            for (j = 0; j < CYF_B_NR; j++) wr[j] = w + (long)(n + (j < nb ? j : nb - 1)) * ldw;
            for (m = mc; m < mc1; m += CYF_B_MR) {
                int mb = mc1 - m < CYF_B_MR ? mc1 - m : CYF_B_MR;
                tile((const char*)x + (size_t)m * ldx * esize, ldx, mb, wr, K, acc);
                cyf_b_store(acc, mb, nb, n, bias, out + (long)m * ldo, ldo, accumulate);
            }
        }
    }
}

#include "bgemm_amx.h"

#endif
