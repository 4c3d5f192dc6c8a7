/* Skinny GEMM for decoding-sized products (linear.pyx; the panel kernel in gemm_panel.h
 * takes over from 8 rows on AVX2/FMA CPUs): out[m, n] (+)= sum_k x[m, k] * w[n, k] (+ bias[n])
 * for all m < M and n0 <= n < n1, with x [M, K] and w [N, K] row-major (PyTorch's weight
 * layout).
 *
 * BLAS packs the whole weight matrix on every call, which for a handful of rows costs more
 * than the product; here each weight row is read once from memory and used for every row of
 * x (kept in cache). Forward only: training's GEMMs are large and go to BLAS.
 */
#ifndef CYFORMER_SKINNY_GEMM_H
#define CYFORMER_SKINNY_GEMM_H

#include "vec.h"

/* acc[3 * i + j] = x_i[0:K] . w_j[0:K] for 3 x-rows by 3 weight rows: 9 vector accumulators
 * plus 6 loaded vectors fit AVX2's 16 registers, and each loaded vector feeds 3 FMAs, so the
 * loop is bound by FMAs, not loads. pf (or NULL): the next 3 weight rows (ldpf floats apart),
 * fetched into cache while this block computes, so a matrix streaming from memory (the
 * vocabulary projection) does not leave the FMAs waiting. */
CYF_INLINE void cyf_dot3x3(const float* x0, const float* x1, const float* x2, const float* w0,
                           const float* w1, const float* w2, int K, float acc[9], const float* pf,
                           long ldpf) {
    int k, K8 = K & ~7;
    cyf_v8 a00 = {0}, a01 = {0}, a02 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a20 = {0}, a21 = {0}, a22 = {0};
    for (k = 0; k < K8; k += 8) {
        if (pf && !(k & 15)) {
            __builtin_prefetch(pf + k, 0, 2);
            __builtin_prefetch(pf + ldpf + k, 0, 2);
            __builtin_prefetch(pf + 2 * ldpf + k, 0, 2);
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

/* the same for 2 x-rows (acc[3 * i + j], i < 2): the tail of a block of rows, or all of
 * them (M = 2, 4: beam search over one sentence), so it prefetches as cyf_dot3x3 does */
CYF_INLINE void cyf_dot2x3(const float* x0, const float* x1, const float* w0, const float* w1,
                           const float* w2, int K, float acc[9], const float* pf, long ldpf) {
    int k, K8 = K & ~7;
    cyf_v8 a00 = {0}, a01 = {0}, a02 = {0}, a10 = {0}, a11 = {0}, a12 = {0};
    for (k = 0; k < K8; k += 8) {
        if (pf && !(k & 15)) {
            __builtin_prefetch(pf + k, 0, 2);
            __builtin_prefetch(pf + ldpf + k, 0, 2);
            __builtin_prefetch(pf + 2 * ldpf + k, 0, 2);
        }
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
 * while this block is read: with short rows the hardware prefetcher sees each row's stream
 * end before it has ramped up; with long rows it is faster alone (bench/RESULTS.md). */
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

/* out[i, n + j] (+)= acc[i * stride + j] + bias[n + j] for a block of mb rows by nb columns */
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

/* How many blocks of 3 weight rows ahead the multi-row path prefetches: one block ahead is
 * too close to hide the memory's latency when the matrix streams from memory (the vocabulary
 * projection in beam search). */
#ifndef CYF_SKINNY_AHEAD
#define CYF_SKINNY_AHEAD 2
#endif

/* out[0:M, n0:n1] (+)= x[0:M, 0:K] w[n0:n1, 0:K]^T (+ bias); rows ldx / ldw / ldo floats apart */
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
                           m == 0 && n + 3 * CYF_SKINNY_AHEAD + 3 <= n1 ? w + (long)(n + 3 * CYF_SKINNY_AHEAD) * ldw : NULL, ldw);
            } else {
                cyf_dot2x3(x0, x0 + ldx, w0, w1, w2, K, acc,
                           m == 0 && n + 3 * CYF_SKINNY_AHEAD + 3 <= n1 ? w + (long)(n + 3 * CYF_SKINNY_AHEAD) * ldw : NULL, ldw);
            }
            cyf_skinny_store(out + (long)m * ldo, ldo, bias, n, acc, mb, nb, 3, accumulate);
            m += mb;
        }
    }
}

#endif
