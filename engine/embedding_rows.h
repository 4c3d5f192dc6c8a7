/* Row bodies of the quantized embedding lookup (engine/embedding.pyx).
 *
 * out[j] = dequant(row[j]) * f + pos[j], with f = row_scale * emb_scale folded into one float
 * by the caller. The product and the sum are rounded separately (no fused multiply-add), so
 * the result is bitwise NumPy's ``q.astype(float32) * f + pos`` on every build, -march=native
 * included: the tests compare lookups with NumPy's dequantization exactly.
 */
#ifndef CYF_EMBEDDING_ROWS_H
#define CYF_EMBEDDING_ROWS_H

#include <stdint.h>
#include <string.h>

#if defined(__clang__)
#define CYF_NO_CONTRACT
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#define CYF_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define CYF_NO_CONTRACT
#endif

/* int8 row q[d] (one scale per row, folded into f) */
static CYF_NO_CONTRACT void cyf_embed_row_i8(const int8_t* q, float f, const float* p, float* o, int d) {
    int j;
    if (p != NULL) {
        for (j = 0; j < d; j++) {
            float v = (float)q[j] * f;
            o[j] = v + p[j];
        }
    } else {
        for (j = 0; j < d; j++)
            o[j] = (float)q[j] * f;
    }
}

/* the same from a packed int8 table (quant.pack_int8: blocks of 16 rows, 4 bytes of k per
 * row in each 64-byte group): q is the row's first byte, element j at q[(j / 4) * 64 + j % 4] */
static CYF_NO_CONTRACT void cyf_embed_row_i8_packed(const int8_t* q, float f, const float* p, float* o, int d) {
    int j;
    for (j = 0; j < d; j++) {
        float v = (float)q[(j >> 2) * 64 + (j & 3)] * f;
        o[j] = p != NULL ? v + p[j] : v;
    }
}

/* bf16 row b[d] (uint16 bits, the high half of a float32) */
static CYF_NO_CONTRACT void cyf_embed_row_bf16(const uint16_t* b, float f, const float* p, float* o, int d) {
    int j;
    for (j = 0; j < d; j++) {
        uint32_t bits = (uint32_t)b[j] << 16;
        float w;
        memcpy(&w, &bits, sizeof w);
        if (p != NULL) {
            float v = w * f;
            o[j] = v + p[j];
        } else {
            o[j] = w * f;
        }
    }
}

#endif
