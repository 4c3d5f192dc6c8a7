/* bf16 GEMM on AMX tiles (TDPBF16PS), included by bgemm.h.
 *
 * The tiles compute C = A B with A [16, 32] bf16 and B [16 pairs, 16 x 2] bf16. The weights are
 * A in place: 16 of their rows (output columns) and 32 values of k, rows ldw * 2 bytes apart;
 * the activations are B, rounded to bf16 once per call into pairs of k (cyf_ba_pack):
 *     xp[((b * K2 + kk) * 16 + c) * 2 + r] = bf16(x[16 b + c, 2 kk + r])   (zero past M or K),
 * K2 = the pairs of a row padded to whole k-steps (16 pairs). So a C tile holds 16 output
 * columns x 16 rows of out (out transposed); the store writes it back row by row.
 *
 * A block is 32 output columns x 32 rows: C tiles 0-3 (column halves x row halves), A tiles 4
 * and 5, B tiles 6 and 7. Where the weights' tile would read past K or past the last column of
 * the call, it is loaded from a zeroed copy of the part that exists; rows past M are zero in
 * the packing. The hardware's order of additions within one TDPBF16PS (even and odd partial
 * sums, amx.h) is its own, so bf16 results match the other bodies to float32 rounding. Each output is one float sum over k in a fixed order, whatever the split of
 * rows (at multiples of 16) or columns between threads.
 */
#ifndef CYFORMER_BGEMM_AMX_H
#define CYFORMER_BGEMM_AMX_H

#include "amx.h"

/* the fewest rows of a GEMM the tiles take; fewer go to the AVX512BF16 body */
#define CYF_BA_MIN_ROWS 16

static long cyf_ba_k2(int K) { return ((long)(K + 31) / 32) * 16; }

/* uint16 elements of the packed activations of M rows */
static long cyf_ba_size(int M, int K) { return ((long)(M + 15) / 16) * cyf_ba_k2(K) * 32; }

/* blocks b0 <= b < b1 of the packing of x (M rows, ldx apart) */
static void cyf_ba_pack(const float* x, long ldx, int M, int K, int b0, int b1, uint16_t* xp) {
    const long K2 = cyf_ba_k2(K);
    long b, kk;
    int c, r;
    for (b = b0; b < b1; b++)
        for (kk = 0; kk < K2; kk++) {
            uint16_t* dst = xp + (b * K2 + kk) * 32;
            for (c = 0; c < 16; c++) {
                long m = b * 16 + c;
                for (r = 0; r < 2; r++) {
                    long k = 2 * kk + r;
                    dst[c * 2 + r] = (m < M && k < K) ? cyf_bf16(x[m * ldx + k]) : 0;
                }
            }
        }
}

#if CYF_B_HAVE_X86
/* rows m0 <= m < m1 (m0 a multiple of 16) and columns n0 <= n < n1 of out from the packed
 * activations xp (cyf_ba_pack of the whole x) and the bf16 weights w (rows ldw apart) */
#define CYF_BA_BODY(SUF)                                                                          \
    CYF_BA_T512 static void cyf_ba_gemm_##SUF(const uint16_t* xp, int m0, int m1, const uint16_t* w, long ldw, \
                                  const float* bias, float* out, long ldo, int n0, int n1, int K,  \
                                  int accumulate) {                                                \
        const long K2 = cyf_ba_k2(K), steps = K2 / 16;                                              \
        const int rows[8] = {16, 16, 16, 16, 16, 16, 16, 16};                                       \
        const int colsb[8] = {64, 64, 64, 64, 64, 64, 64, 64};                                      \
        float cbuf[16 * 16] __attribute__((aligned(64)));                                          \
        uint16_t az[2][16 * 32] __attribute__((aligned(64)));                                      \
        cyf_amx_cfg cfg;                                                                            \
        int n, m, r, c;                                                                             \
        long s;                                                                                     \
        CYF_TILE_STATE_##SUF                                                                        \
        cyf_amx_config(&cfg, rows, colsb);                                                          \
        CYF_TILE_CFG_##SUF(&cfg);                                                                   \
        for (n = n0; n < n1; n += 32) {                                                             \
            const int nc0 = n1 - n < 16 ? n1 - n : 16, two_n = n1 - n > 16;                         \
            const int nc1 = two_n ? (n1 - n - 16 < 16 ? n1 - n - 16 : 16) : 0;                      \
            for (m = m0; m < m1; m += 32) {                                                         \
                const int two_m = m1 - m > 16;                                                      \
                const uint16_t* b0 = xp + ((long)(m / 16) * K2) * 32;                               \
                const uint16_t* b1 = b0 + K2 * 32;                                                  \
                CYF_TILE_ZERO_##SUF(0);                                                             \
                if (two_m) CYF_TILE_ZERO_##SUF(1);                                                  \
                if (two_n) {                                                                        \
                    CYF_TILE_ZERO_##SUF(2);                                                         \
                    if (two_m) CYF_TILE_ZERO_##SUF(3);                                              \
                }                                                                                   \
                for (s = 0; s < steps; s++) {                                                       \
                    const int kc = K - 32 * (int)s < 32 ? K - 32 * (int)s : 32;                     \
                    const uint16_t* a0 = cyf_ba_weights(w, ldw, n, nc0, s, kc, az[0]);             \
                    CYF_TILE_LOAD_##SUF(4, a0, a0 == az[0] ? 64 : ldw * 2);                         \
                    CYF_TILE_LOAD_##SUF(6, b0 + s * 16 * 32, 64);                                   \
                    CYF_TILE_DPBF16PS_##SUF(0, 4, 6);                                               \
                    if (two_m) {                                                                    \
                        CYF_TILE_LOAD_##SUF(7, b1 + s * 16 * 32, 64);                               \
                        CYF_TILE_DPBF16PS_##SUF(1, 4, 7);                                           \
                    }                                                                               \
                    if (two_n) {                                                                    \
                        const uint16_t* a1 = cyf_ba_weights(w, ldw, n + 16, nc1, s, kc, az[1]);    \
                        CYF_TILE_LOAD_##SUF(5, a1, a1 == az[1] ? 64 : ldw * 2);                     \
                        CYF_TILE_DPBF16PS_##SUF(2, 5, 6);                                           \
                        if (two_m) CYF_TILE_DPBF16PS_##SUF(3, 5, 7);                                \
                    }                                                                               \
                }                                                                                   \
                CYF_BA_STORE_TILE(SUF, 0, n, nc0, m)                                                \
                if (two_m) CYF_BA_STORE_TILE(SUF, 1, n, nc0, m + 16)                                \
                if (two_n) {                                                                        \
                    CYF_BA_STORE_TILE(SUF, 2, n + 16, nc1, m)                                       \
                    if (two_m) CYF_BA_STORE_TILE(SUF, 3, n + 16, nc1, m + 16)                       \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        CYF_TILE_RELEASE_##SUF();                                                                   \
    }

/* C tile T [16 columns of out from N0 (NC of them), 16 rows from M0] -> out, as cyf_b_store */
#define CYF_BA_STORE_TILE(SUF, T, N0, NC, M0)                                                      \
    {                                                                                               \
        const int mc = m1 - (M0) < 16 ? m1 - (M0) : 16;                                            \
        CYF_TILE_STORE_##SUF(T, cbuf, 64);                                                          \
        for (c = 0; c < mc; c++) {                                                                  \
            float* o = out + (long)((M0) + c) * ldo + (N0);                                         \
            for (r = 0; r < (NC); r++) {                                                            \
                float v = cbuf[r * 16 + c] + (bias ? bias[(N0) + r] : 0.0f);                       \
                o[r] = accumulate ? o[r] + v : v;                                                   \
            }                                                                                       \
        }                                                                                           \
    }

/* the A tile of weight rows n..n+nr-1, k-step s (kc values of k): in place when it is whole,
 * else a copy in az (16 rows, 64 bytes apart) with zeros past nr and kc; inline vector copies
 * (no call while tiles are configured) */
#define CYF_BA_T512 __attribute__((target("avx512f,avx512bw")))
CYF_BA_T512 static inline __attribute__((always_inline)) const uint16_t*
cyf_ba_weights(const uint16_t* w, long ldw, int n, int nr, long s, int kc, uint16_t* az) {
    const uint16_t* src = w + (long)n * ldw + 32 * s;
    const __mmask32 cols = kc >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << kc) - 1);
    int r;
    if (nr == 16 && kc == 32) return src;
    for (r = 0; r < 16; r++)
        _mm512_store_si512((void*)(az + r * 32),
                           r < nr ? _mm512_maskz_loadu_epi16(cols, src + (long)r * ldw) : _mm512_setzero_si512());
    return az;
}

CYF_BA_BODY(HW)
CYF_BA_BODY(EMU)

/* 1 when the hardware body (model: the software one) gives the exact sums of a small case with
 * every tail (37 rows, 40 columns, K = 203; small integers, so every float sum is exact) */
static int cyf_ba_selfcheck(int model) {
    enum { M = 37, N = 40, K = 203 };
    static float x[M * K], got[M * N];
    static uint16_t w[N * K], xp[3 * 112 * 32];   /* cyf_ba_size(37, 203) */
    uint32_t seed = 54321u;
    int m, n, k;
    for (m = 0; m < M * K; m++) x[m] = (float)((int)(cyf_amx_rand(&seed) % 9) - 4);
    for (n = 0; n < N * K; n++) w[n] = cyf_bf16((float)((int)(cyf_amx_rand(&seed) % 9) - 4));
    cyf_ba_pack(x, K, M, K, 0, (M + 15) / 16, xp);
    if (model)
        cyf_ba_gemm_EMU(xp, 0, M, w, K, NULL, got, N, 0, N, K, 0);
    else
        cyf_ba_gemm_HW(xp, 0, M, w, K, NULL, got, N, 0, N, K, 0);
    for (m = 0; m < M; m++)
        for (n = 0; n < N; n++) {
            float s = 0.0f;
            for (k = 0; k < K; k++) s += x[m * K + k] * cyf_bf16_float(w[n * K + k]);
            if (s != got[m * N + n]) return 0;
        }
    return 1;
}

static int cyf_ba_usable(void) { return cyf_b_supported(CYF_B_AVX512BF16) && cyf_ba_selfcheck(0); }

/* CYF_AMX_OK when the hardware body may run (asked once: OS state, then the self-check) */
static int cyf_ba_status(void) {
    static int known = -1;
    return cyf_amx_body_status(&known, CYF_AMX_BF16, cyf_ba_usable);
}

/* the tiles (on the model when cyf_amx_emulate is set) */
static void cyf_ba_gemm(const uint16_t* xp, int m0, int m1, const uint16_t* w, long ldw, const float* bias,
                        float* out, long ldo, int n0, int n1, int K, int accumulate) {
    if (cyf_amx_emulate)
        cyf_ba_gemm_EMU(xp, m0, m1, w, ldw, bias, out, ldo, n0, n1, K, accumulate);
    else
        cyf_ba_gemm_HW(xp, m0, m1, w, ldw, bias, out, ldo, n0, n1, K, accumulate);
}
#else
static int cyf_ba_status(void) { return CYF_AMX_NO_CPU; }
static void cyf_ba_gemm(const uint16_t* xp, int m0, int m1, const uint16_t* w, long ldw, const float* bias,
                        float* out, long ldo, int n0, int n1, int K, int accumulate) {
    (void)xp; (void)m0; (void)m1; (void)w; (void)ldw; (void)bias; (void)out; (void)ldo; (void)n0;
    (void)n1; (void)K; (void)accumulate;
}
#endif

#endif
