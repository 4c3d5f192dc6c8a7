/* Attention of one query row of one head against a range of keys, forward and backward
 * (attention.pyx): the decoding path, and the row analogue of the block (GEMM) path for
 * short sequences, where a GEMM call per tiny block costs more than its arithmetic.
 *
 * Shapes: q, dq [d_k]; k, v rows [lo, hi) of [*, d_k] (ldk / ldv floats apart, so a head's
 * slice of a fused [T, 3 * d_model] projection or a head-major cache both fit); out, dout
 * [d_k]. The forward saves nothing: the backward recomputes the probabilities from q and k
 * (one dot per key, cheaper than storing a row per query) and regenerates the dropout mask.
 */
#ifndef CYFORMER_ATTENTION_ROW_H
#define CYFORMER_ATTENTION_ROW_H

#include "vec.h"
#include "softmax.h"
#include "dropout.h"

/* p[0:hi-lo] = softmax over keys [lo, hi) of scale * q . k_j (-inf where mask[j] == 0).
 * k rows are ldk floats apart. Returns 0 (p all zero) when no key is visible. lse (may be
 * NULL) receives the row's log-sum-exp (-inf when no key is visible). */
CYF_INLINE int cyf_row_probs(const float* q, const float* k, long ldk, int lo, int hi, int d_k,
                             float scale, const uint8_t* mask, float* p, float* lse) {
    int j, n = hi - lo;
    if (n <= 0) {
        if (lse) *lse = -INFINITY;
        return 0;
    }
    for (j = 0; j < n; j++) {
        float dot = cyf_dot(q, k + (long)(lo + j) * ldk, d_k);
        p[j] = (mask && !mask[lo + j]) ? -INFINITY : dot * scale;
    }
    return cyf_softmax_range(p, 0, n, n, lse);   /* AVX-512 rows with masked tails where it runs */
}

/* Probabilities into scores[0:hi-lo] (before dropout); with threshold != 0, dropout with the
 * mask of indices first + lo + j (dropped: scratch for hi - lo floats); out[0:d_k] =
 * sum_j p_j v_j; lse (may be NULL) as in cyf_row_probs. Returns 0 (out = 0) when no key is
 * visible. */
CYF_CLONES static int cyf_attend_row(const float* q, const float* k, long ldk, const float* v,
                                     long ldv, float* out, int lo, int hi, int d_k, float scale,
                                     const uint8_t* mask, float* scores, float* dropped,
                                     uint64_t seed, uint64_t first, uint32_t threshold, float inv_keep,
                                     float* lse) {
    int j, c, n = hi - lo;
    for (c = 0; c < d_k; c++) out[c] = 0.0f;
    if (!cyf_row_probs(q, k, ldk, lo, hi, d_k, scale, mask, scores, lse)) return 0;
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
 * [lo, hi) (lddk / lddv floats apart) are added to. p, t, u: scratch of hi - lo floats each.
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
    if (!cyf_row_probs(q, k, ldk, lo, hi, d_k, scale, mask, p, NULL)) return;
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

/* The row helpers of the tiled (FlashAttention) path in attention.pyx, which multiplies
 * tiles by sgemm and leaves only these per-row loops to vectorise. */

/* a[0:n] . b[0:n] (a row of dO and of O: the D_i = rowsum(dO * O) of the backward) */
CYF_CLONES static float cyf_attn_dot(const float* a, const float* b, int n) {
    return cyf_dot(a, b, n);
}

/* x[0:n] *= a (an output row rescaled when the row's running max grows, or divided by its sum) */
CYF_CLONES static void cyf_attn_scale(float* x, int n, float a) {
    int j;
    for (j = 0; j < n; j++) x[j] *= a;
}

/* t[0:n] <- scale * p * (t - dsum): dS of a tile row (times the scores' scale, which both
 * of its products take) from its probabilities p and dP = t */
CYF_CLONES static void cyf_attn_ds(const float* __restrict p, float* __restrict t, int n, float dsum,
                                   float scale) {
    int j;
    for (j = 0; j < n; j++) t[j] = scale * p[j] * (t[j] - dsum);
}

#endif
