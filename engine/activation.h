/* Bias + activation over rows of the feed-forward's hidden layer (ffn.pyx), and the
 * activation's backward: the kernels of the activations listed in activation_table.h.
 *
 * Each activation is two per-element inline functions, forward and backward side by side:
 *   cyf_<name>_forward(z)       act(z)
 *   cyf_<name>_backward(z, dh)  dh * act'(z), z being the activation's input (bias included)
 * The row functions below loop over them in one switch each, generated from the table: a
 * loop per case (not a switch per element), so every case vectorises in every clone.
 */
#ifndef CYFORMER_ACTIVATION_H
#define CYFORMER_ACTIVATION_H

#include "vec.h"
#include "expf.h"

/* The kernel codes: CYF_IDENTITY = 0, CYF_RELU = 1, ... (activation_table.h). */
enum {
#define CYF_ACTIVATION(ENUM, name, code) CYF_##ENUM = code,
#define CYF_ACTIVATION_ALIAS(alias, ENUM)
#include "activation_table.h"
#undef CYF_ACTIVATION
#undef CYF_ACTIVATION_ALIAS
};

/* Every accepted name with its code, kernels first, in table order (read by ffn.pyx). */
typedef struct {
    const char* name;
    int code;
} cyf_activation_name;

static const cyf_activation_name cyf_activation_names[] __attribute__((unused)) = {
#define CYF_ACTIVATION(ENUM, name, code) {#name, code},
#define CYF_ACTIVATION_ALIAS(alias, ENUM)
#include "activation_table.h"
#undef CYF_ACTIVATION
#undef CYF_ACTIVATION_ALIAS
#define CYF_ACTIVATION(ENUM, name, code)
#define CYF_ACTIVATION_ALIAS(alias, ENUM) {#alias, CYF_##ENUM},
#include "activation_table.h"
#undef CYF_ACTIVATION
#undef CYF_ACTIVATION_ALIAS
};
#define CYF_N_ACTIVATION_NAMES ((int)(sizeof(cyf_activation_names) / sizeof(cyf_activation_names[0])))

/* 1 when code names a kernel (the codes need not be contiguous) */
CYF_INLINE int cyf_activation_valid(int code) {
    switch (code) {
#define CYF_ACTIVATION(ENUM, name, code) case code:
#define CYF_ACTIVATION_ALIAS(alias, ENUM)
#include "activation_table.h"
#undef CYF_ACTIVATION
#undef CYF_ACTIVATION_ALIAS
        return 1;
    default:
        return 0;
    }
}

/* erf(x): a rational approximation (odd numerator of degree 13 over an even denominator of
 * degree 8, clamped to [-4, 4], beyond which erf is +-1 in float; the fit Eigen and XLA use),
 * absolute error below 5e-7. FMAs, a min/max and one division: it vectorises to a fraction of
 * the cost of an exp-based form (GELU runs over every FFN activation). */
CYF_INLINE float cyf_erff(float a) {
    float x = a > 4.0f ? 4.0f : (a < -4.0f ? -4.0f : a);
    float x2 = x * x;
    float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
    float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
    p = x2 * p + -2.10102402082508e-06f;
    p = x2 * p + -5.69250639462346e-05f;
    p = x2 * p + -7.34990630326855e-04f;
    p = x2 * p + -2.95459980854025e-03f;
    p = x2 * p + -1.60960333262415e-02f;
    q = x2 * q + -1.68282697438203e-03f;
    q = x2 * q + -7.37332916720468e-03f;
    q = x2 * q + -1.42647390514189e-02f;
    return (x * p) / q;
}

/* identity: the row passes unchanged (the loops compile to nothing) */
CYF_INLINE float cyf_identity_forward(float z) { return z; }
CYF_INLINE float cyf_identity_backward(float z, float dh) { (void)z; return dh; }

/* ReLU: max(z, 0); gradient dh where z > 0 (branch-free selects, see cyf_select) */
CYF_INLINE float cyf_relu_forward(float z) { return cyf_select(z > 0.0f, z, 0.0f); }
CYF_INLINE float cyf_relu_backward(float z, float dh) { return cyf_select(z > 0.0f, dh, 0.0f); }

/* GELU (exact, erf): z * Phi(z) */
CYF_INLINE float cyf_gelu_forward(float z) {
    return 0.5f * z * (1.0f + cyf_erff(z * 0.70710678118654752f));
}
/* d/dz [z * Phi(z)] = Phi(z) + z * phi(z) */
CYF_INLINE float cyf_gelu_backward(float z, float dh) {
    float cdf = 0.5f * (1.0f + cyf_erff(z * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * cyf_expf(-0.5f * z * z);
    return dh * (cdf + z * pdf);
}

/* SiLU (swish): z * s(z), s the logistic sigmoid */
CYF_INLINE float cyf_silu_forward(float z) { return z / (1.0f + cyf_expf(-z)); }
/* d/dz [z * s(z)] = s(z) * (1 + z * (1 - s(z))) */
CYF_INLINE float cyf_silu_backward(float z, float dh) {
    float sg = 1.0f / (1.0f + cyf_expf(-z));
    return dh * (sg * (1.0f + z * (1.0f - sg)));
}

/* GELU, tanh approximation (Hugging Face's gelu_new): 0.5 z (1 + tanh(u)),
 * u = sqrt(2 / pi) (z + 0.044715 z^3); tanh(u) = 1 - 2 / (exp(2u) + 1) */
CYF_INLINE float cyf_gelu_tanh_forward(float z) {
    float u = 0.7978845608028654f * (z + 0.044715f * z * z * z);
    float th = 1.0f - 2.0f / (cyf_expf(2.0f * u) + 1.0f);
    return 0.5f * z * (1.0f + th);
}
/* 0.5 (1 + th) + 0.5 z (1 - th^2) du/dz */
CYF_INLINE float cyf_gelu_tanh_backward(float z, float dh) {
    float u = 0.7978845608028654f * (z + 0.044715f * z * z * z);
    float th = 1.0f - 2.0f / (cyf_expf(2.0f * u) + 1.0f);
    float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * z * z);
    return dh * (0.5f * (1.0f + th) + 0.5f * z * (1.0f - th * th) * du);
}

/* row[0:n] = act(row + bias) in place; bias may be NULL; an unknown code leaves the row
 * (plus bias) as it is (ffn.pyx checks codes with cyf_activation_valid first). */
CYF_CLONES static void cyf_bias_act_row(float* row, const float* bias, int n, int code) {
    int j;
    if (bias) {
        for (j = 0; j < n; j++) row[j] += bias[j];
    }
    switch (code) {
#define CYF_ACTIVATION(ENUM, name, code)                                  \
    case CYF_##ENUM:                                                      \
        for (j = 0; j < n; j++) row[j] = cyf_##name##_forward(row[j]);    \
        break;
#define CYF_ACTIVATION_ALIAS(alias, ENUM)
#include "activation_table.h"
#undef CYF_ACTIVATION
#undef CYF_ACTIVATION_ALIAS
    default:
        break;
    }
}

/* Training form of cyf_bias_act_row in one pass: pre[0:n] += bias (kept for the backward
 * pass), out[0:n] = act(pre). */
CYF_CLONES static void cyf_bias_act_save_row(float* pre, const float* bias, float* out, int n, int code) {
    int j;
    if (bias) {
        for (j = 0; j < n; j++) {
            float p = pre[j] + bias[j];
            pre[j] = p;
            out[j] = p;
        }
    } else {
        memcpy(out, pre, sizeof(float) * (size_t)n);
    }
    cyf_bias_act_row(out, NULL, n, code);
}

/* dh[0:n] *= act'(pre[0:n]) where pre is the activation's input (bias included). */
CYF_CLONES static void cyf_act_backward_row(float* dh, const float* pre, int n, int code) {
    int j;
    switch (code) {
#define CYF_ACTIVATION(ENUM, name, code)                                        \
    case CYF_##ENUM:                                                            \
        for (j = 0; j < n; j++) dh[j] = cyf_##name##_backward(pre[j], dh[j]);   \
        break;
#define CYF_ACTIVATION_ALIAS(alias, ENUM)
#include "activation_table.h"
#undef CYF_ACTIVATION
#undef CYF_ACTIVATION_ALIAS
    default:
        break;
    }
}

#endif
