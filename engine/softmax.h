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

/* softmax (log == 0) or log-softmax of x[0:n] in place. Returns 0 (and writes zeros, or
 * -inf for log) when no entry is finite. Loops index from 0 so they vectorise cleanly.
 * Inline (not a clone of its own): the attention row kernels call it from their clones. */
CYF_INLINE int cyf_softmax_inplace(float* x, int n, int log) {
    int j;
    float m = -INFINITY, s = 0.0f;
    CYF_SIMD_MAX(m)
    for (j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    if (!(m > -INFINITY)) {
        for (j = 0; j < n; j++) x[j] = log ? -INFINITY : 0.0f;
        return 0;
    }
    if (log) {
        CYF_SIMD_SUM(s)
        for (j = 0; j < n; j++) s += cyf_expf(x[j] - m);
        float lse = logf(s);
        /* (x - m) - log(s): subtracting m first keeps the precision of large logits */
        for (j = 0; j < n; j++) x[j] = (x[j] - m) - lse;
    } else {
        CYF_SIMD_SUM(s)
        for (j = 0; j < n; j++) {
            float e = cyf_expf(x[j] - m);
            x[j] = e;
            s += e;
        }
        float inv = 1.0f / s;
        for (j = 0; j < n; j++) x[j] *= inv;
    }
    return 1;
}

/* softmax over x[lo:hi] in place; x[0:lo] and x[hi:width] are set to 0 (a score row of
 * width keys of which a window or causal bound makes [lo, hi) visible). Entries equal to
 * -inf (masked) get 0. Returns 0 when no entry is finite (the row is all zeros). */
CYF_CLONES static int cyf_softmax_range(float* x, int lo, int hi, int width) {
    if (lo > 0) memset(x, 0, sizeof(float) * (size_t)lo);
    if (width > hi) memset(x + hi, 0, sizeof(float) * (size_t)(width - hi));
    return hi > lo ? cyf_softmax_inplace(x + lo, hi - lo, 0) : 0;
}

/* log_softmax (log != 0) or softmax of x[0:n] in place. */
CYF_CLONES static void cyf_softmax_row(float* x, int n, int log) {
    cyf_softmax_inplace(x, n, log);
}

#endif
