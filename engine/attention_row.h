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

/* -- AVX-512 bodies of the two products of a row (d_k a multiple of 16, at most 128) ---------
 * Decoding attends one query per (row, head) over a few dozen keys: the portable loops below
 * reduce every dot product horizontally and carry the output row through memory on every
 * key. Here the query (or the output row) stays in registers; scores come 16 keys at a
 * time, each key's products in one vector, the 16 vectors summed by one shuffle tree
 * (cyf_row_tree16) into a vector of 16 scores. The results are those of one fixed order of
 * additions per element, whatever the thread count; they differ from the portable body's in
 * rounding only. cyf_row_level() says which body runs; tests force the portable one. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define CYF_ROW512 __attribute__((target("avx512f,avx2,fma")))
#define CYF_ROW512_INLINE static inline __attribute__((always_inline, target("avx512f,avx2,fma")))

/* 16 vectors -> one vector whose lane l sums a[CYF_ROW_SLOT(l)]: pairs of 256-bit halves,
 * of 128-bit quarters, of float pairs, of floats. The lane order this leaves is an
 * involution, so key l's vector is stored at slot CYF_ROW_SLOT(l) to come out in lane l. */
#define CYF_ROW_SLOT(l) ((0xFDEC7564B9A83120ull >> (4 * (l))) & 15)
CYF_ROW512_INLINE __m512 cyf_row_tree16(const __m512* a) {
    __m512 b[8], c[4], d[2];
    int i;
    for (i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], 0x44), _mm512_shuffle_f32x4(a[i], a[i + 8], 0xEE));
    for (i = 0; i < 4; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[i], b[i + 4], 0x88), _mm512_shuffle_f32x4(b[i], b[i + 4], 0xDD));
    for (i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_unpacklo_ps(c[i], c[i + 2]), _mm512_unpackhi_ps(c[i], c[i + 2]));
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x44), _mm512_shuffle_ps(d[0], d[1], 0xEE));
}

/* p[j] = scale * q . k_j for j < n (k rows ldk floats apart), -inf where mask[j] == 0;
 * NV = d_k / 16 (a constant: q stays in registers). Keys past n in the last block of 16
 * repeat key n - 1 and are not stored. */
CYF_ROW512_INLINE void cyf_row_scores_nv(const float* q, const float* k, long ldk, int n, float scale,
                                         const uint8_t* mask, float* p, const int NV) {
    __m512 qv[8], a[16];
    int c, s, j0;
    for (c = 0; c < NV; c++) qv[c] = _mm512_loadu_ps(q + 16 * c);
    for (j0 = 0; j0 < n; j0 += 16) {
        for (s = 0; s < 16; s++) {
            const float* kj = k + (long)(j0 + s < n ? j0 + s : n - 1) * ldk;
            __m512 acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kj));
            for (c = 1; c < NV; c++) acc = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kj + 16 * c), acc);
            a[CYF_ROW_SLOT(s)] = acc;
        }
        __m512 sc = _mm512_mul_ps(cyf_row_tree16(a), _mm512_set1_ps(scale));
        __mmask16 live = n - j0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j0)) - 1u);
        if (mask) {
            __mmask16 hidden = 0;
            for (s = 0; s < 16 && j0 + s < n; s++) hidden |= (__mmask16)((mask[j0 + s] == 0) << s);
            sc = _mm512_mask_mov_ps(sc, hidden, _mm512_set1_ps(-INFINITY));
        }
        _mm512_mask_storeu_ps(p + j0, live, sc);
    }
}

CYF_ROW512 static void cyf_row_scores_512(const float* q, const float* k, long ldk, int n, int d_k, float scale,
                                          const uint8_t* mask, float* p) {
    switch (d_k >> 4) {
    case 1: cyf_row_scores_nv(q, k, ldk, n, scale, mask, p, 1); break;
    case 2: cyf_row_scores_nv(q, k, ldk, n, scale, mask, p, 2); break;
    case 3: cyf_row_scores_nv(q, k, ldk, n, scale, mask, p, 3); break;
    case 4: cyf_row_scores_nv(q, k, ldk, n, scale, mask, p, 4); break;
    case 5: cyf_row_scores_nv(q, k, ldk, n, scale, mask, p, 5); break;
    case 6: cyf_row_scores_nv(q, k, ldk, n, scale, mask, p, 6); break;
    case 7: cyf_row_scores_nv(q, k, ldk, n, scale, mask, p, 7); break;
    default: cyf_row_scores_nv(q, k, ldk, n, scale, mask, p, 8); break;
    }
}

/* out[0:d_k] = sum_j p_j v_j over j < n (v rows ldv floats apart): even keys into one set of
 * NV accumulators, odd keys into another (two FMA chains), the two sets added at the end. */
CYF_ROW512_INLINE void cyf_row_pv_nv(const float* p, const float* v, long ldv, int n, float* out, const int NV) {
    __m512 e[8], o[8];
    int c, j;
    for (c = 0; c < NV; c++) e[c] = o[c] = _mm512_setzero_ps();
    for (j = 0; j + 1 < n; j += 2) {
        const float* v0 = v + (long)j * ldv;
        const float* v1 = v0 + ldv;
        __m512 p0 = _mm512_set1_ps(p[j]), p1 = _mm512_set1_ps(p[j + 1]);
        for (c = 0; c < NV; c++) {
            e[c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * c), e[c]);
            o[c] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1 + 16 * c), o[c]);
        }
    }
    if (j < n) {
        const float* v0 = v + (long)j * ldv;
        __m512 p0 = _mm512_set1_ps(p[j]);
        for (c = 0; c < NV; c++) e[c] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * c), e[c]);
    }
    for (c = 0; c < NV; c++) _mm512_storeu_ps(out + 16 * c, _mm512_add_ps(e[c], o[c]));
}

CYF_ROW512 static void cyf_row_pv_512(const float* p, const float* v, long ldv, int n, int d_k, float* out) {
    switch (d_k >> 4) {
    case 1: cyf_row_pv_nv(p, v, ldv, n, out, 1); break;
    case 2: cyf_row_pv_nv(p, v, ldv, n, out, 2); break;
    case 3: cyf_row_pv_nv(p, v, ldv, n, out, 3); break;
    case 4: cyf_row_pv_nv(p, v, ldv, n, out, 4); break;
    case 5: cyf_row_pv_nv(p, v, ldv, n, out, 5); break;
    case 6: cyf_row_pv_nv(p, v, ldv, n, out, 6); break;
    case 7: cyf_row_pv_nv(p, v, ldv, n, out, 7); break;
    default: cyf_row_pv_nv(p, v, ldv, n, out, 8); break;
    }
}
#define CYF_ROW_HAVE_512 1
#else
#define CYF_ROW_HAVE_512 0
#define cyf_row_scores_512(q, k, ldk, n, d_k, scale, mask, p) ((void)0)
#define cyf_row_pv_512(p, v, ldv, n, d_k, out) ((void)0)
#endif

/* The highest row body allowed (2: AVX-512 where the CPU has it, 0: portable; tests force 0)
 * and the body used for a head width: 2 or 0. */
static int cyf_row_cap_level = 2;
static void cyf_row_cap(int level) { cyf_row_cap_level = level; }
static int cyf_row_level(void) { return CYF_ROW_HAVE_512 && cyf_row_cap_level >= 2 && cyf_sm_avx512() ? 2 : 0; }
CYF_INLINE int cyf_row_wide(int d_k) { return (d_k & 15) == 0 && d_k > 0 && d_k <= 128 && cyf_row_level() == 2; }

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
    if (cyf_row_wide(d_k)) {
        cyf_row_scores_512(q, k + (long)lo * ldk, ldk, n, d_k, scale, mask ? mask + lo : NULL, p);
    } else {
        for (j = 0; j < n; j++) {
            float dot = cyf_dot(q, k + (long)(lo + j) * ldk, d_k);
            p[j] = (mask && !mask[lo + j]) ? -INFINITY : dot * scale;
        }
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
    if (cyf_row_wide(d_k)) {
        cyf_row_pv_512(p, v + (long)lo * ldv, ldv, n, d_k, out);
        return 1;
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
    if (cyf_row_wide(d_k)) {
        cyf_row_scores_512(dout, v + (long)lo * ldv, ldv, n, d_k, 1.0f, NULL, t);
    } else {
        for (j = 0; j < n; j++) {
            const float* vj = v + (long)(lo + j) * ldv;
            t[j] = cyf_dot(dout, vj, d_k);
        }
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
