/* int8 GEMM: out[m, n] (+)= (sum_k xq[m, k] * wq[n, k]) * (xs[m] * ws[n]) (+ bias[n]).
 *
 * Weights are int8 [N, K] (PyTorch's layout) with one float scale per output row (ws);
 * activations are quantized per row at run time, symmetric: xs[m] = max_k |x[m, k]| / 127,
 * xq[m, k] = rint(x[m, k] / xs[m]) in [-127, 127]. The products are summed exactly in int32
 * and dequantized once per output, so every body below gives the same int32 sums and, with
 * the one shared store (cyf_q_store), the same float bits.
 *
 * Bodies (chosen once from cpuid, cyf_q_best; any supported one can be forced for tests):
 * - VNNI512: AVX-512 VNNI `vpdpbusd` on zmm (64 products per instruction). vpdpbusd
 *   multiplies an unsigned byte by a signed one, so activations are packed shifted,
 *   u = q + 128 in [1, 255], and the sum is corrected by the per-row compensation
 *   comp[n] = 128 * sum_k wq[n, k] (computed once with the weights: cyf_q_compensation);
 * - VNNI256: the same on ymm through AVX512-VL (for CPUs whose zmm units are slow to wake);
 * - AVXVNNI: the VEX-encoded 256-bit `vpdpbusd` of AVX-VNNI (Alder Lake and later, Zen 5);
 * - AVX2: `vpmaddubsw` + `vpmaddwd`. vpmaddubsw adds two u8 x s8 products into an int16 with
 *   saturation; with u = q + 128 two products reach 2 * 255 * 127 and would saturate, so this
 *   body uses the sign trick instead: |w| (unsigned, <= 127) times sign(w) * q (signed,
 *   |.| <= 127), two products at most 2 * 127 * 127 = 32258 < 32767: exact, no compensation;
 * - PORTABLE: plain C over the signed values (any CPU);
 * - AMX: TDPBUSD tiles over the packed weights (qgemm_amx.h) for 16 rows and more, the packed
 *   VNNI512 body below that (and the VNNI512 tile over row-major weights).
 *
 * Tiles of up to 4 activation rows x 4 weight rows, dot-product form over k; a short block
 * repeats its last row (same work, results dropped). Tails of k use masked loads (AVX-512) or
 * a scalar loop. Nothing is allocated here: the caller packs x once per call.
 */
#ifndef CYFORMER_QGEMM_H
#define CYFORMER_QGEMM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vec.h"

enum { CYF_Q_PORTABLE = 0, CYF_Q_AVX2 = 1, CYF_Q_AVXVNNI = 2, CYF_Q_VNNI256 = 3, CYF_Q_VNNI512 = 4,
       CYF_Q_AMX = 5, CYF_Q_NPATHS = 6 };

/* rows of a tile (activation rows x weight rows) */
#define CYF_Q_MR 4
#define CYF_Q_NR 4

/* the activation packing of a body: shifted (u8 = q + 128) for the vpdpbusd bodies */
static int cyf_q_shifted(int path) {
    return path == CYF_Q_VNNI512 || path == CYF_Q_VNNI256 || path == CYF_Q_AVXVNNI || path == CYF_Q_AMX;
}

/* ---- quantization (shared by every body) ------------------------------------------------ */

/* One row: scale = amax / 127 and q[k] = rint(x[k] * (127 / amax)) (+ 128 when shifted);
 * an all-zero row has scale 0 and q = 0. The
 * float operations are the same in every clone (max, one multiply, round to nearest even),
 * so every clone gives the same bytes. A row holding NaN or inf gets a NaN scale. */
CYF_CLONES static void cyf_q_quantize_row_c(const float* x, int K, uint8_t* q, float* scale, int shift) {
    float amax = 0.0f, inv;
    int k, bad = 0;
    CYF_SIMD_MAX(amax)
    for (k = 0; k < K; k++) {
        float a = fabsf(x[k]);
        amax = a > amax ? a : amax;
    }
    for (k = 0; k < K; k++) bad |= !(fabsf(x[k]) <= 3.40282347e38f);  /* NaN or inf */
    if (bad) {  /* NaN out, as the float32 product would give: no integer stands for it */
        *scale = NAN;
        memset(q, shift ? 128 : 0, (size_t)K);
        return;
    }
    *scale = amax / 127.0f;
    inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (k = 0; k < K; k++) {
        float r = nearbyintf(x[k] * inv);
        r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
        q[k] = (uint8_t)((int)r + (shift ? 128 : 0));
    }
}

/* comp[n] = 128 * sum_k w[n, k]: what the shifted activations add to each output */
static void cyf_q_compensation(const int8_t* w, long ldw, int N, int K, int32_t* comp) {
    int n, k;
    for (n = 0; n < N; n++) {
        int32_t s = 0;
        const int8_t* r = w + (long)n * ldw;
        for (k = 0; k < K; k++) s += r[k];
        comp[n] = 128 * s;
    }
}

/* ---- the one store: exact sums -> float (never inlined into an FMA-enabled body, so no
 * body contracts it differently) ---------------------------------------------------------- */

/* acc[i * CYF_Q_NR + j] for mb rows x nb columns at out[i, n + j]; raw != NULL: the int32
 * sums are written there instead ([M, N], ldr apart), for tests of the accumulators. */
__attribute__((noinline)) static void cyf_q_store(const int32_t* acc, int mb, int nb, int n,
                                                  const float* xs, const float* ws,
                                                  const int32_t* comp, const float* bias,
                                                  float* out, long ldo, int accumulate,
                                                  int32_t* raw, long ldr) {
    int i, j;
    for (i = 0; i < mb; i++) {
        for (j = 0; j < nb; j++) {
            int32_t s = acc[i * CYF_Q_NR + j] - (comp ? comp[n + j] : 0);
            if (raw) {
                raw[(long)i * ldr + n + j] = s;
            } else {
                float v = (float)s * (xs[i] * ws[n + j]);
#if defined(__GNUC__) && defined(__x86_64__)
                __asm__("" : "+x"(v));  /* no multiply-add contraction (-march=native) */
#endif
                if (bias) v = v + bias[n + j];
                out[(long)i * ldo + n + j] = accumulate ? out[(long)i * ldo + n + j] + v : v;
            }
        }
    }
}

/* A tile body: acc[i * CYF_Q_NR + j] = sum_k x_i[k] * w_j[k] over the packed rows x_i
 * (x + i * ldq) and the 4 weight rows w[j], for i < mb (1..4). */
typedef void (*cyf_q_tile_fn)(const uint8_t* x, long ldq, int mb, const int8_t* const* w,
                              int K, int32_t* acc);

/* portable body: signed activations */
static void cyf_q_tile_portable(const uint8_t* x, long ldq, int mb, const int8_t* const* w,
                                int K, int32_t* acc) {
    int i, j, k;
    for (i = 0; i < mb; i++) {
        const int8_t* xi = (const int8_t*)(x + (long)i * ldq);
        for (j = 0; j < CYF_Q_NR; j++) {
            int32_t s = 0;
            const int8_t* wj = w[j];
            for (k = 0; k < K; k++) s += (int32_t)xi[k] * (int32_t)wj[k];
            acc[i * CYF_Q_NR + j] = s;
        }
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define CYF_Q_HAVE_X86 1

/* The MR = 1..4 versions of each body are one always-inlined function called with a
 * constant mb (CYF_MR_SWITCH, vec.h), so the accumulator arrays become registers. */

/* ---- AVX-512 VNNI, zmm ---- */
#define CYF_Q_T512 __attribute__((target("avx512f,avx512bw,avx512vnni")))
CYF_Q_T512 static inline __attribute__((always_inline)) void
cyf_q_vnni512_mr(const uint8_t* x, long ldq, const int mb, const int8_t* const* w, int K, int32_t* acc) {
    __m512i a[CYF_Q_MR][CYF_Q_NR];
    int i, j, k;
    for (i = 0; i < mb; i++)
        for (j = 0; j < CYF_Q_NR; j++) a[i][j] = _mm512_setzero_si512();
    for (k = 0; k + 64 <= K; k += 64) {
        __m512i wv[CYF_Q_NR];
        for (j = 0; j < CYF_Q_NR; j++) wv[j] = _mm512_loadu_si512((const void*)(w[j] + k));
        for (i = 0; i < mb; i++) {
            __m512i xv = _mm512_loadu_si512((const void*)(x + (long)i * ldq + k));
            for (j = 0; j < CYF_Q_NR; j++) a[i][j] = _mm512_dpbusd_epi32(a[i][j], xv, wv[j]);
        }
    }
    if (k < K) {  /* the tail: masked loads, zero bytes contribute nothing */
        __mmask64 m = (~0ULL) >> (64 - (K - k));
        __m512i wv[CYF_Q_NR];
        for (j = 0; j < CYF_Q_NR; j++) wv[j] = _mm512_maskz_loadu_epi8(m, w[j] + k);
        for (i = 0; i < mb; i++) {
            __m512i xv = _mm512_maskz_loadu_epi8(m, x + (long)i * ldq + k);
            for (j = 0; j < CYF_Q_NR; j++) a[i][j] = _mm512_dpbusd_epi32(a[i][j], xv, wv[j]);
        }
    }
    for (i = 0; i < mb; i++)
        for (j = 0; j < CYF_Q_NR; j++) acc[i * CYF_Q_NR + j] = _mm512_reduce_add_epi32(a[i][j]);
}

CYF_Q_T512 static void cyf_q_tile_vnni512(const uint8_t* x, long ldq, int mb, const int8_t* const* w,
                                          int K, int32_t* acc) {
    CYF_MR_SWITCH(cyf_q_vnni512_mr, x, ldq, mb, w, K, acc)
}

/* ---- vpdpbusd on ymm: AVX512-VL VNNI or AVX-VNNI (one body, two encodings) ---- */
__attribute__((target("avx2"))) CYF_INLINE int32_t cyf_q_hsum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* the ymm body for one dot-product instruction DP(acc, u8, s8); the k tail (< 32) is scalar
 * over the packed bytes as they are (shifted: the compensation covers the whole row) */
#define CYF_Q_YMM_BODY(NAME, TARGET, DP)                                                        \
    TARGET static inline __attribute__((always_inline)) void                                     \
    NAME##_mr(const uint8_t* x, long ldq, const int mb, const int8_t* const* w, int K,          \
              int32_t* acc) {                                                                   \
        __m256i a[CYF_Q_MR][CYF_Q_NR];                                                          \
        int i, j, k, K32 = K & ~31;                                                             \
        for (i = 0; i < mb; i++)                                                                \
            for (j = 0; j < CYF_Q_NR; j++) a[i][j] = _mm256_setzero_si256();                    \
        for (k = 0; k < K32; k += 32) {                                                         \
            __m256i wv[CYF_Q_NR];                                                               \
            for (j = 0; j < CYF_Q_NR; j++) wv[j] = _mm256_loadu_si256((const __m256i*)(w[j] + k)); \
            for (i = 0; i < mb; i++) {                                                          \
                __m256i xv = _mm256_loadu_si256((const __m256i*)(x + (long)i * ldq + k));       \
                for (j = 0; j < CYF_Q_NR; j++) a[i][j] = DP(a[i][j], xv, wv[j]);                \
            }                                                                                   \
        }                                                                                       \
        for (i = 0; i < mb; i++)                                                                \
            for (j = 0; j < CYF_Q_NR; j++) {                                                    \
                int32_t s = cyf_q_hsum256(a[i][j]);                                             \
                for (k = K32; k < K; k++) s += (int32_t)x[(long)i * ldq + k] * (int32_t)w[j][k]; \
                acc[i * CYF_Q_NR + j] = s;                                                      \
            }                                                                                   \
    }                                                                                           \
    TARGET static void NAME(const uint8_t* x, long ldq, int mb, const int8_t* const* w, int K,  \
                            int32_t* acc) {                                                     \
        CYF_MR_SWITCH(NAME##_mr, x, ldq, mb, w, K, acc)                                         \
    }

#define CYF_Q_DP_VL(a, x, w) _mm256_dpbusd_epi32(a, x, w)
#define CYF_Q_DP_AVX(a, x, w) _mm256_dpbusd_avx_epi32(a, x, w)
CYF_Q_YMM_BODY(cyf_q_tile_vnni256, __attribute__((target("avx2,avx512f,avx512vl,avx512vnni"))), CYF_Q_DP_VL)
CYF_Q_YMM_BODY(cyf_q_tile_avxvnni, __attribute__((target("avx2,avxvnni"))), CYF_Q_DP_AVX)

/* ---- AVX2: vpmaddubsw with the sign trick (exact, see the top) ---- */
#define CYF_Q_SIGN_DP(a, x, w, wabs, ones)                                                      \
    _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(x, w)), ones))
#define CYF_Q_TAVX2 __attribute__((target("avx2")))
CYF_Q_TAVX2 static inline __attribute__((always_inline)) void
cyf_q_avx2_mr(const uint8_t* x, long ldq, const int mb, const int8_t* const* w, int K, int32_t* acc) {
    __m256i a[CYF_Q_MR][CYF_Q_NR];
    const __m256i ones = _mm256_set1_epi16(1);
    int i, j, k, K32 = K & ~31;
    for (i = 0; i < mb; i++)
        for (j = 0; j < CYF_Q_NR; j++) a[i][j] = _mm256_setzero_si256();
    for (k = 0; k < K32; k += 32) {
        for (j = 0; j < CYF_Q_NR; j++) {
            __m256i wv = _mm256_loadu_si256((const __m256i*)(w[j] + k));
            __m256i wabs = _mm256_sign_epi8(wv, wv);  /* |w|: weights are >= -127 */
            for (i = 0; i < mb; i++) {
                __m256i xv = _mm256_loadu_si256((const __m256i*)(x + (long)i * ldq + k));
                a[i][j] = CYF_Q_SIGN_DP(a[i][j], xv, wv, wabs, ones);
            }
        }
    }
    for (i = 0; i < mb; i++)
        for (j = 0; j < CYF_Q_NR; j++) {
            int32_t s = cyf_q_hsum256(a[i][j]);
            const int8_t* xi = (const int8_t*)(x + (long)i * ldq);
            for (k = K32; k < K; k++) s += (int32_t)xi[k] * (int32_t)w[j][k];
            acc[i * CYF_Q_NR + j] = s;
        }
}

CYF_Q_TAVX2 static void cyf_q_tile_avx2(const uint8_t* x, long ldq, int mb, const int8_t* const* w,
                                        int K, int32_t* acc) {
    CYF_MR_SWITCH(cyf_q_avx2_mr, x, ldq, mb, w, K, acc)
}

/* whether this CPU (and OS: libgcc checks the saved register state) runs a body */
static int cyf_q_cpu_has(int path) {
    __builtin_cpu_init();
    switch (path) {
    case CYF_Q_PORTABLE: return 1;
    case CYF_Q_AVX2: return __builtin_cpu_supports("avx2");
    case CYF_Q_AVXVNNI: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
    case CYF_Q_VNNI256:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    case CYF_Q_VNNI512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
    }
    return 0;
}
#else
#define CYF_Q_HAVE_X86 0
static int cyf_q_cpu_has(int path) { return path == CYF_Q_PORTABLE; }
#endif

static int cyf_qa_status(void);
#include "amx.h"

static int cyf_q_supported(int path) {
    static int known[CYF_Q_NPATHS] = {-1, -1, -1, -1, -1, -1};  /* relaxed atomics: one answer */
    int v;
    if (path < 0 || path >= CYF_Q_NPATHS) return 0;
    if (path == CYF_Q_AMX)   /* the tiles, or their model when a test asks for it */
        return CYF_Q_HAVE_X86 && cyf_q_supported(CYF_Q_VNNI512) &&
               (cyf_amx_emulate || cyf_qa_status() == CYF_AMX_OK);
    v = __atomic_load_n(&known[path], __ATOMIC_RELAXED);
    if (v < 0) {
        v = cyf_q_cpu_has(path);
        __atomic_store_n(&known[path], v, __ATOMIC_RELAXED);
    }
    return v;
}

/* The one run-time decision: the widest body this CPU runs: the tiles (the hardware's, never
 * the model), then zmm VNNI (Zen 4 splits a zmm instruction in two halves, which still halves
 * the instruction count). */
static int cyf_q_best(void) {
    static const int order[] = {CYF_Q_VNNI512, CYF_Q_VNNI256, CYF_Q_AVXVNNI, CYF_Q_AVX2};
    int i;
#if CYF_Q_HAVE_X86
    if (cyf_q_supported(CYF_Q_VNNI512) && cyf_qa_status() == CYF_AMX_OK) return CYF_Q_AMX;
#endif
    for (i = 0; i < 4; i++)
        if (cyf_q_supported(order[i])) return order[i];
    return CYF_Q_PORTABLE;
}

static cyf_q_tile_fn cyf_q_tile(int path) {
#if CYF_Q_HAVE_X86
    switch (path) {
    case CYF_Q_AMX:   /* row-major weights: the VNNI512 tile */
    case CYF_Q_VNNI512: return cyf_q_tile_vnni512;
    case CYF_Q_VNNI256: return cyf_q_tile_vnni256;
    case CYF_Q_AVXVNNI: return cyf_q_tile_avxvnni;
    case CYF_Q_AVX2: return cyf_q_tile_avx2;
    }
#endif
    (void)path;
    return cyf_q_tile_portable;
}

/* Rows m0 <= m < m1 and columns n0 <= n < n1 of out from the packed activations xq (row m at
 * xq + m * ldq, packed for `path`, scales xs) and the int8 weights (rows ldw bytes apart).
 * comp is required for the shifted bodies (cyf_q_shifted) and ignored otherwise. Each output
 * is one exact sum, so any split of rows or columns between threads gives the same bits.
 * Rows go in chunks whose packed bytes stay in L2 while every weight block passes over them. */
static void cyf_q_gemm(int path, const uint8_t* xq, long ldq, const float* xs, int m0, int m1,
                       const int8_t* w, long ldw, const float* ws, const int32_t* comp,
                       const float* bias, float* out, long ldo, int n0, int n1, int K,
                       int accumulate, int32_t* raw, long ldr) {
    cyf_q_tile_fn tile = cyf_q_tile(path);
    const int32_t* cp = cyf_q_shifted(path) ? comp : NULL;
    int32_t acc[CYF_Q_MR * CYF_Q_NR];
    const int8_t* wr[CYF_Q_NR];
    long chunk = K > 0 ? (256L * 1024) / (ldq > 0 ? ldq : 1) : 1;
    int mc, m, n, j;
    if (chunk < CYF_Q_MR) chunk = CYF_Q_MR;
    chunk -= chunk % CYF_Q_MR;
    for (mc = m0; mc < m1; mc += (int)chunk) {
        int mc1 = m1 - mc < chunk ? m1 : mc + (int)chunk;
        for (n = n0; n < n1; n += CYF_Q_NR) {
            int nb = n1 - n < CYF_Q_NR ? n1 - n : CYF_Q_NR;
            for (j = 0; j < CYF_Q_NR; j++) wr[j] = w + (long)(n + (j < nb ? j : nb - 1)) * ldw;
            for (m = mc; m < mc1; m += CYF_Q_MR) {
                int mb = mc1 - m < CYF_Q_MR ? mc1 - m : CYF_Q_MR;
                tile(xq + (long)m * ldq, ldq, mb, wr, K, acc);
                cyf_q_store(acc, mb, nb, n, xs + m, ws, cp, bias, out + (long)m * ldo, ldo,
                            accumulate, raw ? raw + (long)m * ldr : NULL, ldr);
            }
        }
    }
}

/* ---- packed weights: the outer-product VNNI512 body (many rows, and decoding) -------------
 *
 * The dot-product bodies above reduce every accumulator across its lanes at the end of k,
 * which at K = 384 costs as much as the products. This body keeps 16 output columns per zmm
 * instead: the weights are packed once into blocks of 16 rows (columns of out), 4 bytes of k
 * per lane,
 *     p[((b * K4 + g) * 16 + c) * 4 + r] = w[16 b + c, 4 g + r]   (zero past N or K),
 * K4 = ceil(K / 4), so one 64-byte load holds 4 k-steps of 16 columns; each activation row
 * supplies 4 bytes broadcast to every lane, and vpdpbusd adds them into 16 int32 sums. A tile is
 * up to 6 rows x 4 blocks (64 columns): 24 accumulators, 4 weight registers, one broadcast.
 * The sums are the same exact int32 values as every other body's; the store below does the
 * float operations of cyf_q_store in the same order. */
#define CYF_QP_COLS 16   /* output columns per packed block */
#define CYF_QP_MR 6
#define CYF_QP_NB 4

static long cyf_qp_k4(int K) { return (K + 3) / 4; }

/* bytes of the packed form of an [N, K] matrix */
static long cyf_qp_size(int N, int K) {
    return ((long)(N + CYF_QP_COLS - 1) / CYF_QP_COLS) * cyf_qp_k4(K) * 64;
}

static void cyf_qp_pack(const int8_t* w, long ldw, int N, int K, int8_t* p) {
    long K4 = cyf_qp_k4(K), nblocks = (N + CYF_QP_COLS - 1) / CYF_QP_COLS, b, g;
    int c, r;
    for (b = 0; b < nblocks; b++)
        for (g = 0; g < K4; g++) {
            int8_t* dst = p + (b * K4 + g) * 64;
            for (c = 0; c < CYF_QP_COLS; c++) {
                long n = b * CYF_QP_COLS + c;
                for (r = 0; r < 4; r++) {
                    long k = 4 * g + r;
                    dst[c * 4 + r] = (n < N && k < K) ? w[n * ldw + k] : 0;
                }
            }
        }
}

/* the inverse: rows n0 <= n < n1 of the [N, K] matrix into w (ldw apart) */
static void cyf_qp_unpack(const int8_t* p, int K, int n0, int n1, int8_t* w, long ldw) {
    long K4 = cyf_qp_k4(K), n;
    int k;
    for (n = n0; n < n1; n++) {
        const int8_t* src = p + (n / CYF_QP_COLS) * K4 * 64 + (n % CYF_QP_COLS) * 4;
        int8_t* dst = w + (n - n0) * ldw;
        for (k = 0; k < K; k++) dst[k] = src[(k / 4) * 64 + (k % 4)];
    }
}

#if CYF_Q_HAVE_X86
/* Keeps the compiler from fusing the multiply before it with the add after it into one FMA
 * (different rounding from cyf_q_store's separate operations). */
#define CYF_QP_NOFUSE(v) __asm__("" : "+v"(v))

/* the store of one accumulator: row i of the tile, block j */
CYF_Q_T512 static inline __attribute__((always_inline)) void
cyf_qp_store(__m512i acc, int i, int j, int n, int ncols, const float* xs, const float* ws,
             const int32_t* comp, const float* bias, float* out, long ldo, int accumulate,
             int32_t* raw, long ldr) {
    int left = ncols - CYF_QP_COLS * j, c0 = n + CYF_QP_COLS * j;
    __mmask16 m = left >= CYF_QP_COLS ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    __m512i s = _mm512_sub_epi32(acc, _mm512_maskz_loadu_epi32(m, comp + c0));
    if (raw) {
        _mm512_mask_storeu_epi32(raw + (long)i * ldr + c0, m, s);
    } else {
        __m512 sc = _mm512_mul_ps(_mm512_set1_ps(xs[i]), _mm512_maskz_loadu_ps(m, ws + c0));
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), sc);
        float* o = out + (long)i * ldo + c0;
        CYF_QP_NOFUSE(v);
        if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + c0));
        if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, o), v);
        _mm512_mask_storeu_ps(o, m, v);
    }
}

/* The accumulators are named variables, not an array (GCC keeps such an array in memory),
 * updated by vpdpbusd in inline assembly: with the intrinsic GCC copies every accumulator
 * to another register and back on each k-step. MR and NB are constants after inlining; the
 * unused accumulators are dead code. acc += u8 x (dot) s8 w, 4 bytes per lane. */
#define CYF_QP_DP(acc, x, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w))
#define CYF_QP_DECL_ROW(i) __m512i c##i##0 = z, c##i##1 = z, c##i##2 = z, c##i##3 = z;
#define CYF_QP_ROW(i)                                                                             \
    if (MR > i) {                                                                                \
        int32_t four;                                                                            \
        __m512i xb;                                                                              \
        memcpy(&four, x + (long)(i) * ldq + 4 * g, 4);                                           \
        xb = _mm512_set1_epi32(four);                                                            \
        CYF_QP_DP(c##i##0, xb, w0);                                          \
        if (NB > 1) CYF_QP_DP(c##i##1, xb, w1);                              \
        if (NB > 2) CYF_QP_DP(c##i##2, xb, w2);                              \
        if (NB > 3) CYF_QP_DP(c##i##3, xb, w3);                              \
    }
#define CYF_QP_STORE1(i, j) cyf_qp_store(c##i##j, i, j, n, ncols, xs, ws, comp, bias, out, ldo, accumulate, raw, ldr)
#define CYF_QP_STORE_ROW(i)                                                                       \
    if (MR > i) {                                                                                \
        CYF_QP_STORE1(i, 0);                                                                     \
        if (NB > 1) CYF_QP_STORE1(i, 1);                                                         \
        if (NB > 2) CYF_QP_STORE1(i, 2);                                                         \
        if (NB > 3) CYF_QP_STORE1(i, 3);                                                         \
    }

CYF_Q_T512 static inline __attribute__((always_inline)) void
cyf_qp_tile(const uint8_t* x, long ldq, const int MR, const int8_t* p, long bstride, const int NB,
            long K4, int n, int ncols, const float* xs, const float* ws, const int32_t* comp,
            const float* bias, float* out, long ldo, int accumulate, int32_t* raw, long ldr) {
    const __m512i z = _mm512_setzero_si512();
    long g;
    CYF_QP_DECL_ROW(0) CYF_QP_DECL_ROW(1) CYF_QP_DECL_ROW(2)
    CYF_QP_DECL_ROW(3) CYF_QP_DECL_ROW(4) CYF_QP_DECL_ROW(5)
    for (g = 0; g < K4; g++) {
        const int8_t* pg = p + g * 64;
        __m512i w0 = _mm512_load_si512((const void*)pg), w1 = z, w2 = z, w3 = z;
        if (NB > 1) w1 = _mm512_load_si512((const void*)(pg + bstride));
        if (NB > 2) w2 = _mm512_load_si512((const void*)(pg + 2 * bstride));
        if (NB > 3) w3 = _mm512_load_si512((const void*)(pg + 3 * bstride));
        CYF_QP_ROW(0) CYF_QP_ROW(1) CYF_QP_ROW(2) CYF_QP_ROW(3) CYF_QP_ROW(4) CYF_QP_ROW(5)
    }
    CYF_QP_STORE_ROW(0) CYF_QP_STORE_ROW(1) CYF_QP_STORE_ROW(2)
    CYF_QP_STORE_ROW(3) CYF_QP_STORE_ROW(4) CYF_QP_STORE_ROW(5)
}

#define CYF_QP_CALL(MR, NB)                                                                      \
    cyf_qp_tile(x, ldq, MR, p, bstride, NB, K4, n, ncols, xs, ws, comp, bias, out, ldo,         \
                accumulate, raw, ldr)
#define CYF_QP_NB_SWITCH(MR)                                                                     \
    switch (nb) {                                                                                \
    case 1: CYF_QP_CALL(MR, 1); break;                                                           \
    case 2: CYF_QP_CALL(MR, 2); break;                                                           \
    case 3: CYF_QP_CALL(MR, 3); break;                                                           \
    default: CYF_QP_CALL(MR, 4); break;                                                          \
    }

/* one tile of mr (1..6) rows x nb (1..4) blocks, constants for the compiler */
CYF_Q_T512 static void cyf_qp_tile_any(const uint8_t* x, long ldq, int mr, const int8_t* p, long bstride,
                                      int nb, long K4, int n, int ncols, const float* xs,
                                      const float* ws, const int32_t* comp, const float* bias,
                                      float* out, long ldo, int accumulate, int32_t* raw, long ldr) {
    switch (mr) {
    case 1: CYF_QP_NB_SWITCH(1) break;
    case 2: CYF_QP_NB_SWITCH(2) break;
    case 3: CYF_QP_NB_SWITCH(3) break;
    case 4: CYF_QP_NB_SWITCH(4) break;
    case 5: CYF_QP_NB_SWITCH(5) break;
    default: CYF_QP_NB_SWITCH(6) break;
    }
}

/* As cyf_q_gemm for the shifted activations (cyf_q_shifted packing) and the packed weights p;
 * n0 is a multiple of CYF_QP_COLS. Rows go in chunks whose packed bytes stay in L2 while each
 * 64-column panel of weights passes over them. */
static void cyf_qp_gemm(const uint8_t* xq, long ldq, const float* xs, int m0, int m1, const int8_t* p,
                        const float* ws, const int32_t* comp, const float* bias, float* out, long ldo,
                        int n0, int n1, int K, int accumulate, int32_t* raw, long ldr) {
    long K4 = cyf_qp_k4(K), bstride = K4 * 64;
    long chunk = (256L * 1024) / (ldq > 0 ? ldq : 1);
    const int panel = CYF_QP_COLS * CYF_QP_NB;
    int mc, m, n;
    if (chunk < CYF_QP_MR) chunk = CYF_QP_MR;
    chunk -= chunk % CYF_QP_MR;
    for (mc = m0; mc < m1; mc += (int)chunk) {
        int mc1 = m1 - mc < chunk ? m1 : mc + (int)chunk;
        for (n = n0; n < n1; n += panel) {
            int ncols = n1 - n < panel ? n1 - n : panel;
            int nb = (ncols + CYF_QP_COLS - 1) / CYF_QP_COLS;
            const int8_t* pn = p + (long)(n / CYF_QP_COLS) * bstride;
            for (m = mc; m < mc1; m += CYF_QP_MR) {
                int mr = mc1 - m < CYF_QP_MR ? mc1 - m : CYF_QP_MR;
                cyf_qp_tile_any(xq + (long)m * ldq, ldq, mr, pn, bstride, nb, K4, n, ncols, xs + m, ws,
                                comp, bias, out + (long)m * ldo, ldo, accumulate,
                                raw ? raw + (long)m * ldr : NULL, ldr);
            }
        }
    }
}
#else
static void cyf_qp_gemm(const uint8_t* xq, long ldq, const float* xs, int m0, int m1, const int8_t* p,
                        const float* ws, const int32_t* comp, const float* bias, float* out, long ldo,
                        int n0, int n1, int K, int accumulate, int32_t* raw, long ldr) {
    (void)xq; (void)ldq; (void)xs; (void)m0; (void)m1; (void)p; (void)ws; (void)comp; (void)bias;
    (void)out; (void)ldo; (void)n0; (void)n1; (void)K; (void)accumulate; (void)raw; (void)ldr;
}
#endif

/* ---- quantization of an activation row on AVX-512: the same bytes as cyf_q_quantize_row_c
 * (max is exact, the scale and its inverse are the same scalar operations, the multiply is one
 * rounding, vrndscaleps rounds to nearest even as nearbyintf does, the clamp and the byte
 * conversion are exact) ----------------------------------------------------------------- */
#if CYF_Q_HAVE_X86
CYF_Q_T512 static void cyf_q_quantize_row_512(const float* x, int K, uint8_t* q, float* scale, int shift) {
    const __m512 big = _mm512_set1_ps(3.40282347e38f);
    __m512 vmax = _mm512_setzero_ps(), vinv, lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    __m512i vshift = _mm512_set1_epi32(shift ? 128 : 0);
    __mmask16 bad = 0;
    float amax, inv;
    int k;
    for (k = 0; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, x + k));
        bad |= _mm512_mask_cmp_ps_mask(m, a, big, _CMP_NLE_UQ);   /* NaN or inf */
        vmax = _mm512_max_ps(vmax, a);
    }
    if (bad) {
        *scale = NAN;
        memset(q, shift ? 128 : 0, (size_t)K);
        return;
    }
    amax = _mm512_reduce_max_ps(vmax);
    *scale = amax / 127.0f;
    inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    vinv = _mm512_set1_ps(inv);
    for (k = 0; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k), vinv),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi)), vshift);
        _mm512_mask_cvtepi32_storeu_epi8(q + k, m, v);
    }
}
#endif

/* one activation row: the AVX-512 version where the CPU has it (the same bytes) */
static void cyf_q_quantize_row(const float* x, int K, uint8_t* q, float* scale, int shift) {
#if CYF_Q_HAVE_X86
    if (cyf_q_supported(CYF_Q_VNNI512)) {
        cyf_q_quantize_row_512(x, K, q, scale, shift);
        return;
    }
#endif
    cyf_q_quantize_row_c(x, K, q, scale, shift);
}

#include "qgemm_amx.h"

#endif
