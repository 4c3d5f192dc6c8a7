/* int8 GEMM on AMX tiles (TDPBUSD), included by qgemm.h after the packed VNNI512 body.
 *
 * The packed weights (cyf_qp_pack) are already in the B-tile layout: in block b (16 output
 * columns), the 64 bytes of k-group g hold 4 bytes of k for each of the 16 columns, so the
 * 16 groups of one k-step (64 values of k) are a 16-row x 64-byte tile, rows 64 bytes apart.
 * The shifted activations (u8, rows ldq apart, ldq a multiple of 64) are the A tiles in place.
 *
 * A block is 32 rows x 32 columns: C tiles 0-3 (rows 0-15 / 16-31 x blocks b, b+1), A tiles 4
 * and 5 (the two halves of the rows), B tiles 6 and 7 (the two blocks). Every tile is 16 x 64
 * bytes, so one configuration serves the whole call:
 * - the last k-step, when K4 is not a multiple of 16, loads B from a zeroed copy of its groups,
 *   made once per block of columns (the groups after them belong to the next block); A's bytes
 *   past K meet zero weights;
 * - the last rows, when fewer than 32 remain, load their A tile from 16 rows ending at the last
 *   row (the range has at least CYF_QA_MIN_ROWS) and store only the rows not stored before: the
 *   sums are the same exact integers either way;
 * - a lone last block of columns leaves C tiles 1 and 3 and B tile 7 out.
 * The sums go through cyf_qp_store, so the float bits are the VNNI512 bodies'.
 */
#ifndef CYFORMER_QGEMM_AMX_H
#define CYFORMER_QGEMM_AMX_H

#include "amx.h"

/* the fewest rows of a call (one thread's share) the tiles take; fewer go to cyf_qp_gemm */
#define CYF_QA_MIN_ROWS 16

#if CYF_Q_HAVE_X86
/* groups 0..g-1 (64 bytes each) of a packed block's k-step into dst, inline (no call while
 * tiles are configured) */
CYF_Q_T512 static inline __attribute__((always_inline)) void cyf_qa_copy_groups(int8_t* dst, const int8_t* src,
                                                                               int g) {
    int i;
    for (i = 0; i < g; i++) {
        __m512i v = _mm512_loadu_si512((const void*)(src + 64 * i));
        __asm__("" : "+v"(v));   /* a copy loop the compiler would turn into a memcpy call */
        _mm512_store_si512((void*)(dst + 64 * i), v);
    }
}

#define CYF_QA_BODY(SUF)                                                                          \
    CYF_Q_T512 static void cyf_qa_gemm_##SUF(const uint8_t* xq, long ldq, const float* xs, int m0,  \
                                             int m1, const int8_t* p, const float* ws,              \
                                             const int32_t* comp, const float* bias, float* out,    \
                                             long ldo, int n0, int n1, int K, int accumulate,       \
                                             int32_t* raw, long ldr) {                              \
        const long K4 = cyf_qp_k4(K), bstride = K4 * 64, steps = (K4 + 15) / 16;                    \
        const int tail = (int)(K4 - (steps - 1) * 16); /* groups in the last k-step, 1..16 */       \
        const int rows[8] = {16, 16, 16, 16, 16, 16, 16, 16};                                       \
        const int colsb[8] = {64, 64, 64, 64, 64, 64, 64, 64};                                      \
        int32_t cbuf[16 * 16] __attribute__((aligned(64)));                                        \
        int8_t bz[2][1024] __attribute__((aligned(64)));                                           \
        cyf_amx_cfg cfg;                                                                            \
        int n, m, i;                                                                                \
        long s;                                                                                     \
        CYF_TILE_STATE_##SUF                                                                        \
        cyf_amx_config(&cfg, rows, colsb);                                                          \
        memset(bz, 0, sizeof(bz));                                                                  \
        CYF_TILE_CFG_##SUF(&cfg);                                                                   \
        for (n = n0; n < n1; n += 32) {                                                             \
            const int ncols = n1 - n < 32 ? n1 - n : 32, two = ncols > 16;                          \
            const int8_t* b0 = p + (long)(n / CYF_QP_COLS) * bstride;                               \
            const int8_t* b1 = b0 + bstride;                                                        \
            if (tail < 16) { /* the last k-step's groups; the copies' other rows stay zero */       \
                cyf_qa_copy_groups(bz[0], b0 + (steps - 1) * 1024, tail);                           \
                if (two) cyf_qa_copy_groups(bz[1], b1 + (steps - 1) * 1024, tail);                  \
            }                                                                                       \
            for (m = m0; m < m1; m += 32) {                                                         \
                /* row starts and the rows already stored of each half */                          \
                const int rem = m1 - m, halves = rem > 16 ? 2 : 1;                                  \
                const int r0 = halves == 2 ? m : m1 - 16, skip0 = m - r0;                           \
                const int r1 = m + 32 <= m1 ? m + 16 : m1 - 16, skip1 = m + 16 - r1;                \
                const uint8_t* a0 = xq + (long)r0 * ldq;                                     \
                const uint8_t* a1 = xq + (long)r1 * ldq;                                     \
                CYF_TILE_ZERO_##SUF(0);                                                             \
                if (two) CYF_TILE_ZERO_##SUF(1);                                                    \
                if (halves == 2) {                                                                  \
                    CYF_TILE_ZERO_##SUF(2);                                                         \
                    if (two) CYF_TILE_ZERO_##SUF(3);                                                \
                }                                                                                   \
                for (s = 0; s < steps; s++) {                                                       \
                    const int last = s == steps - 1 && tail < 16;                                   \
                    const int8_t* pb0 = last ? bz[0] : b0 + s * 1024;                               \
                    const int8_t* pb1 = last ? bz[1] : b1 + s * 1024;                               \
                    CYF_TILE_LOAD_##SUF(4, a0 + s * 64, ldq);                                       \
                    CYF_TILE_LOAD_##SUF(6, pb0, 64);                                                \
                    CYF_TILE_DPBUSD_##SUF(0, 4, 6);                                                 \
                    if (two) {                                                                      \
                        CYF_TILE_LOAD_##SUF(7, pb1, 64);                                            \
                        CYF_TILE_DPBUSD_##SUF(1, 4, 7);                                             \
                    }                                                                               \
                    if (halves == 2) {                                                              \
                        CYF_TILE_LOAD_##SUF(5, a1 + s * 64, ldq);                                   \
                        CYF_TILE_DPBUSD_##SUF(2, 5, 6);                                             \
                        if (two) CYF_TILE_DPBUSD_##SUF(3, 5, 7);                                    \
                    }                                                                               \
                }                                                                                   \
                /* C tile (half h, block j) -> rows r_h + i, i >= skip_h */                        \
                CYF_QA_STORE_TILE(SUF, 0, r0, skip0, 0)                                             \
                if (two) CYF_QA_STORE_TILE(SUF, 1, r0, skip0, 1)                                    \
                if (halves == 2) {                                                                  \
                    CYF_QA_STORE_TILE(SUF, 2, r1, skip1, 0)                                         \
                    if (two) CYF_QA_STORE_TILE(SUF, 3, r1, skip1, 1)                                \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        CYF_TILE_RELEASE_##SUF();                                                                   \
    }

#define CYF_QA_STORE_TILE(SUF, T, R, SKIP, J)                                                      \
    {                                                                                               \
        CYF_TILE_STORE_##SUF(T, cbuf, 64);                                                          \
        for (i = (SKIP); i < 16; i++)                                                               \
            cyf_qp_store(_mm512_load_si512((const void*)(cbuf + 16 * i)), i, J, n, ncols,          \
                         xs + (R), ws, comp, bias, out + (long)(R) * ldo, ldo,        \
                         accumulate, raw ? raw + (long)(R) * ldr : NULL, ldr);               \
    }

CYF_QA_BODY(HW)
CYF_QA_BODY(EMU)

/* 1 when the hardware body (model: the software one) gives the exact sums of a small case with
 * every tail (37 rows, 40 columns, K = 203); run once before the hardware body is first chosen */
static int cyf_qa_selfcheck(int model) {
    enum { M = 37, N = 40, K = 203 };
    const long ldq = 256;
    static uint8_t x[M * 256] __attribute__((aligned(64)));
    static int8_t w[N * K];
    static int8_t p[3 * 51 * 64] __attribute__((aligned(64)));   /* cyf_qp_size(40, 203) */
    static int32_t comp[N], got[M * N];
    static float ones[M > N ? M : N];
    static float dummy[1];
    uint32_t seed = 12345u;
    int m, n, k, ok = 1;
    for (m = 0; m < M; m++)
        for (k = 0; k < ldq; k++) x[m * ldq + k] = (uint8_t)cyf_amx_rand(&seed);
    for (n = 0; n < N * K; n++) w[n] = (int8_t)(((int)cyf_amx_rand(&seed) - 128) | 1);
    for (n = 0; n < (M > N ? M : N); n++) ones[n] = 1.0f;
    cyf_qp_pack(w, K, N, K, p);
    cyf_q_compensation(w, K, N, K, comp);
    if (model)
        cyf_qa_gemm_EMU(x, ldq, ones, 0, M, p, ones, comp, NULL, dummy, 0, 0, N, K, 0, got, N);
    else
        cyf_qa_gemm_HW(x, ldq, ones, 0, M, p, ones, comp, NULL, dummy, 0, 0, N, K, 0, got, N);
    for (m = 0; m < M && ok; m++)
        for (n = 0; n < N; n++) {
            int32_t s = 0;
            for (k = 0; k < K; k++) s += ((int32_t)x[m * ldq + k] - 128) * (int32_t)w[n * K + k];
            if (s != got[m * N + n]) { ok = 0; break; }
        }
    return ok;
}

static int cyf_qa_usable(void) { return cyf_q_supported(CYF_Q_VNNI512) && cyf_qa_selfcheck(0); }

/* CYF_AMX_OK when the hardware body may run (asked once: OS state, then the self-check) */
static int cyf_qa_status(void) {
    static int known = -1;
    return cyf_amx_body_status(&known, CYF_AMX_INT8, cyf_qa_usable);
}
#else
static int cyf_qa_status(void) { return CYF_AMX_NO_CPU; }
#endif

/* The packed GEMM of body `path`: the tiles for AMX and a share of CYF_QA_MIN_ROWS rows or
 * more (on the model when cyf_amx_emulate is set), cyf_qp_gemm otherwise; the same bits. */
static void cyf_qpa_gemm(int path, const uint8_t* xq, long ldq, const float* xs, int m0, int m1,
                         const int8_t* p, const float* ws, const int32_t* comp, const float* bias,
                         float* out, long ldo, int n0, int n1, int K, int accumulate, int32_t* raw,
                         long ldr) {
#if CYF_Q_HAVE_X86
    if (path == CYF_Q_AMX && m1 - m0 >= CYF_QA_MIN_ROWS && K > 0) {
        if (cyf_amx_emulate)
            cyf_qa_gemm_EMU(xq, ldq, xs, m0, m1, p, ws, comp, bias, out, ldo, n0, n1, K, accumulate, raw, ldr);
        else
            cyf_qa_gemm_HW(xq, ldq, xs, m0, m1, p, ws, comp, bias, out, ldo, n0, n1, K, accumulate, raw, ldr);
        return;
    }
#endif
    (void)path;
    cyf_qp_gemm(xq, ldq, xs, m0, m1, p, ws, comp, bias, out, ldo, n0, n1, K, accumulate, raw, ldr);
}

#endif
