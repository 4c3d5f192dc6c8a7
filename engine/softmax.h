/* Softmax and log-softmax over one row, in place (softmax.pyx; attention's score rows).
 *
 * Forward only: its backward, dS = P * (dP - sum(P * dP)), needs the row's dP and is fused
 * into attention's backward (attention.pyx, attention_row.h); the log-softmax's gradient is
 * fused into the cross-entropy (cross_entropy.h).
 */
#ifndef CYFORMER_SOFTMAX_H
#define CYFORMER_SOFTMAX_H

#include "vec.h"
#include "expf.h"

/* softmax (log == 0) or log-softmax of x[0:n] in place; with lse != NULL, *lse receives the
 * row's log-sum-exp, max + log(sum exp(x - max)) (-inf when no entry is finite). Returns 0
 * (and writes zeros, or -inf for log) when no entry is finite. Loops index from 0 so they
 * vectorise cleanly. Inline (not a clone of its own): the attention row kernels call it from
 * their clones. */
CYF_INLINE int cyf_softmax_lse(float* x, int n, int log, float* lse) {
    int j;
    float m = -INFINITY, s = 0.0f;
    CYF_SIMD_MAX(m)
    for (j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    if (!(m > -INFINITY)) {
        for (j = 0; j < n; j++) x[j] = log ? -INFINITY : 0.0f;
        if (lse) *lse = -INFINITY;
        return 0;
    }
    if (log) {
        CYF_SIMD_SUM(s)
        for (j = 0; j < n; j++) s += cyf_expf(x[j] - m);
        float ls = logf(s);
        /* (x - m) - log(s): subtracting m first keeps the precision of large logits */
        for (j = 0; j < n; j++) x[j] = (x[j] - m) - ls;
        if (lse) *lse = m + ls;
    } else {
        CYF_SIMD_SUM(s)
        for (j = 0; j < n; j++) {
            float e = cyf_expf(x[j] - m);
            x[j] = e;
            s += e;
        }
        float inv = 1.0f / s;
        for (j = 0; j < n; j++) x[j] *= inv;
        if (lse) *lse = m + logf(s);
    }
    return 1;
}

CYF_INLINE int cyf_softmax_inplace(float* x, int n, int log) {
    return cyf_softmax_lse(x, n, log, NULL);
}

/* softmax over x[lo:hi] in place; x[0:lo] and x[hi:width] are set to 0 (a score row of
 * width keys of which a window or causal bound makes [lo, hi) visible). Entries equal to
 * -inf (masked) get 0. Returns 0 when no entry is finite (the row is all zeros). lse as in
 * cyf_softmax_lse (may be NULL). */
CYF_CLONES static int cyf_softmax_range(float* x, int lo, int hi, int width, float* lse) {
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    if (hi <= lo) {
        if (lse) *lse = -INFINITY;
        return 0;
    }
    return cyf_softmax_lse(x + lo, hi - lo, 0, lse);
}

/* One tile of an online softmax (FlashAttention): x[0:width] holds a row's scores over a
 * tile of keys, of which [lo, hi) are visible (-inf entries are masked). *m and *l are the
 * row's running max and sum of exp(score - *m) over the tiles before this one (-inf and 0
 * at the start). x becomes exp(x - m_new) (0 outside [lo, hi) and where masked), *m and *l
 * are updated, and the factor exp(m_old - m_new) by which the row's earlier output must be
 * rescaled is returned (1 when nothing changed, 0 when no key was visible before). */
CYF_CLONES static float cyf_softmax_online(float* x, int lo, int hi, int width, float* m, float* l) {
    int j, n = hi - lo;
    float mt = -INFINITY, s = 0.0f;
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    if (n <= 0) return 1.0f;
    float* y = x + lo;
    CYF_SIMD_MAX(mt)
    for (j = 0; j < n; j++) mt = y[j] > mt ? y[j] : mt;
    if (!(mt > -INFINITY)) {
        memset(y, 0, sizeof(float) * (size_t)n);
        return 1.0f;
    }
    float m_old = *m;
    float m_new = mt > m_old ? mt : m_old;
    float alpha = m_old > -INFINITY ? cyf_expf(m_old - m_new) : 0.0f;
    CYF_SIMD_SUM(s)
    for (j = 0; j < n; j++) {
        float e = cyf_expf(y[j] - m_new);
        y[j] = e;
        s += e;
    }
    *l = *l * alpha + s;
    *m = m_new;
    return alpha;
}

/* x[0:width] <- exp(x - lse) on [lo, hi), 0 elsewhere: a tile of a row's probabilities
 * recomputed from its saved log-sum-exp (attention's tiled backward). lse = -inf (a row
 * that sees nothing) gives zeros. */
CYF_CLONES static void cyf_softmax_from_lse(float* x, int lo, int hi, int width, float lse) {
    int j, n = hi - lo;
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    if (n <= 0) return;
    float* y = x + lo;
    if (!(lse > -INFINITY)) {
        memset(y, 0, sizeof(float) * (size_t)n);
        return;
    }
    for (j = 0; j < n; j++) y[j] = cyf_expf(y[j] - lse);
}

/* log_softmax (log != 0) or softmax of x[0:n] in place. */
CYF_CLONES static void cyf_softmax_row(float* x, int n, int log) {
    cyf_softmax_inplace(x, n, log);
}

#endif
