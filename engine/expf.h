/* exp for float rows: softmax, the cross-entropy, SiLU / GELU and their gradients all call it
 * inside loops that must vectorise, which libm's expf (a call) would prevent. */
#ifndef CYFORMER_EXPF_H
#define CYFORMER_EXPF_H

#include "vec.h"

/* exp(x) for float, Cephes-style: 2^n * p(g) with |g| <= ln2/2; about 2 ulp. Below
 * -87.3 (including -inf) it returns exactly 0, so masked scores get no weight. */
CYF_INLINE float cyf_expf(float x) {
    float xc = cyf_select(x < -87.33654f, -87.33654f, x);
    xc = cyf_select(xc > 88.72283f, 88.72283f, xc);
    float fx = xc * 1.44269504088896341f;
    /* round to nearest with the 1.5 * 2^23 trick: branch-free and vectorisable everywhere */
    float r = (fx + 12582912.0f) - 12582912.0f;
    float g = xc - r * 0.693359375f;
    g = g - r * -2.12194440e-4f;
    float z = g * g;
    float y = 1.9875691500E-4f;
    y = y * g + 1.3981999507E-3f;
    y = y * g + 8.3334519073E-3f;
    y = y * g + 4.1665795894E-2f;
    y = y * g + 1.6666665459E-1f;
    y = y * g + 5.0000001201E-1f;
    y = y * z + g + 1.0f;
    int32_t bits = ((int32_t)r + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float out = y * scale;
    return cyf_select(x < -87.33654f, 0.0f, out);
}

#endif
