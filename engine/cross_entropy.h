/* Cross-entropy with label smoothing over one row of logits (loss.pyx). The forward and the
 * backward are one pass: the gradient, scale * (softmax(x) - target), is written over the
 * logits from the same max and sum of exps the loss needs, so nothing is saved between them.
 */
#ifndef CYFORMER_CROSS_ENTROPY_H
#define CYFORMER_CROSS_ENTROPY_H

#include "vec.h"
#include "expf.h"

/* Cross-entropy with label smoothing for one row of logits x[0:V] and label y, as
 * PyTorch's CrossEntropyLoss(label_smoothing=eps): the target is (1 - eps) on y plus eps/V
 * on every class. Returns the loss and writes the NLL of y to *nll. With grad != 0 the row
 * becomes scale * (softmax(x) - target). */
CYF_CLONES static float cyf_cross_entropy_row(float* x, int V, int y, float eps, float scale,
                                              int grad, float* nll) {
    int j;
    float m = -INFINITY, s = 0.0f, sx = 0.0f, x_y = x[y];
    CYF_SIMD_MAX(m)
    for (j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
    if (grad) {
        /* one exp per entry, kept in x for the gradient pass */
        CYF_SIMD_SUM2(s, sx)
        for (j = 0; j < V; j++) {
            float z = x[j] - m, e = cyf_expf(z);
            x[j] = e;
            s += e;
            sx += z;
        }
    } else {
        CYF_SIMD_SUM2(s, sx)
        for (j = 0; j < V; j++) {
            float z = x[j] - m;
            s += cyf_expf(z);
            sx += z;
        }
    }
    float lse = logf(s);
    float nll_y = lse - (x_y - m);
    /* -mean_j log p_j = lse - mean_j (x_j - m) */
    float smooth = lse - sx / (float)V;
    *nll = nll_y;
    if (grad) {
        float a = scale / s, b = scale * eps / (float)V;
        for (j = 0; j < V; j++) x[j] = x[j] * a - b;
        x[y] -= scale * (1.0f - eps);
    }
    return (1.0f - eps) * nll_y + eps * smooth;
}

#endif
