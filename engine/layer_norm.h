/* LayerNorm over one row of d features, with the residual add and a sublayer's output bias
 * fused in (norm.pyx). The forward saves each row's mean and reciprocal std, which is all
 * the backward needs besides the input.
 */
#ifndef CYFORMER_LAYER_NORM_H
#define CYFORMER_LAYER_NORM_H

#include "vec.h"

/* x[0:d] += r + bias (each when given), then out = (x - mean) * rstd * gamma + beta, and
 * *mean_out, *rstd_out (when mean_out is given) for the backward pass. out may alias x. The
 * bias is a sublayer's output bias, folded in here so its GEMM need not pre-fill its output;
 * x keeps the sum, the LayerNorm input the backward pass reads. */
CYF_CLONES static void cyf_layer_norm_row(float* x, const float* r, const float* bias,
                                          const float* gamma, const float* beta, float* out,
                                          int d, float eps, float* mean_out, float* rstd_out) {
    int j;
    float sum = 0.0f, var = 0.0f, mean, rstd;
    if (r && bias) {
        for (j = 0; j < d; j++) x[j] += r[j] + bias[j];
    } else if (r) {
        for (j = 0; j < d; j++) x[j] += r[j];
    } else if (bias) {
        for (j = 0; j < d; j++) x[j] += bias[j];
    }
    CYF_SIMD_SUM(sum)
    for (j = 0; j < d; j++) sum += x[j];
    mean = sum / (float)d;
    /* two passes: the variance of x - mean does not cancel catastrophically */
    CYF_SIMD_SUM(var)
    for (j = 0; j < d; j++) {
        float c = x[j] - mean;
        var += c * c;
    }
    rstd = 1.0f / sqrtf(var / (float)d + eps);
    for (j = 0; j < d; j++) out[j] = (x[j] - mean) * rstd * gamma[j] + beta[j];
    if (mean_out) {
        *mean_out = mean;
        *rstd_out = rstd;
    }
}

/* LayerNorm backward for one row. x[0:d] is the LayerNorm input (the residual sum), dy the
 * gradient of its output: dx (+)= rstd * (g - mean(g) - xhat * mean(g * xhat)) with
 * g = dy * gamma and xhat = (x - mean) * rstd. dgamma / dbeta are reduced elsewhere
 * (cyf_layer_norm_param_grads, over rows, by column ranges) so threads never share them.
 * dx may alias dy. */
CYF_CLONES static void cyf_layer_norm_backward_row(const float* x, const float* dy, const float* gamma,
                                                   float mean, float rstd, float* dx, int d,
                                                   int accumulate) {
    int j;
    float sg = 0.0f, sgx = 0.0f;
    CYF_SIMD_SUM(sg)
    for (j = 0; j < d; j++) sg += dy[j] * gamma[j];
    CYF_SIMD_SUM(sgx)
    for (j = 0; j < d; j++) sgx += dy[j] * gamma[j] * (x[j] - mean) * rstd;
    float mg = sg / (float)d, mgx = sgx / (float)d;
    if (accumulate) {
        for (j = 0; j < d; j++)
            dx[j] += rstd * (dy[j] * gamma[j] - mg - (x[j] - mean) * rstd * mgx);
    } else {
        for (j = 0; j < d; j++)
            dx[j] = rstd * (dy[j] * gamma[j] - mg - (x[j] - mean) * rstd * mgx);
    }
}

/* x, dy: [n, d]; mean, rstd: [n] (saved by the forward).
 * dgamma[c] += sum_i dy[i, c] * xhat[i, c]; dbeta[c] += sum_i dy[i, c], for columns [c0, c1):
 * each thread owns a column range, and sums its rows in order (no race, no thread-count
 * dependence). */
CYF_CLONES static void cyf_layer_norm_param_grads(const float* x, const float* dy, const float* mean,
                                                  const float* rstd, float* dgamma, float* dbeta,
                                                  long n, int d, int c0, int c1) {
    long i;
    int j;
    for (i = 0; i < n; i++) {
        const float* xr = x + i * d;
        const float* gr = dy + i * d;
        float mu = mean[i], rs = rstd[i];
        for (j = c0; j < c1; j++) {
            dgamma[j] += gr[j] * (xr[j] - mu) * rs;
            dbeta[j] += gr[j];
        }
    }
}

#endif
