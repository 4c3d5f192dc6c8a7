/* The AMX tile bodies on cyformer's software model of the tiles (engine/amx.h), over buffers of
 * exactly the sizes the kernels are given: built with AddressSanitizer and UBSan by
 * tests/test_amx_sanitized.py, so a read or write outside them (the hardware would touch the
 * same bytes: the model copies rows x colsb at the configured stride) or undefined arithmetic
 * fails the test. Each result is checked against exact sums. Exit status: the mismatches. */
#include <stdio.h>
#include <stdlib.h>

#include "bgemm.h"
#include "qgemm.h"

static int run_int8(int M, int N, int K) {
    long ldq = ((K + 63) / 64) * 64, psz = cyf_qp_size(N, K);
    uint8_t* x = malloc((size_t)M * ldq);
    int8_t* w = malloc((size_t)N * K);
    int8_t* p = aligned_alloc(64, (size_t)((psz + 63) / 64) * 64);
    int32_t* comp = malloc((size_t)N * 4);
    int32_t* got = malloc((size_t)M * N * 4);
    float* ones = malloc((size_t)(M > N ? M : N) * 4);
    float dummy[1];
    uint32_t seed = 1;
    int m, n, k, bad = 0;
    for (m = 0; m < M * ldq; m++) x[m] = (uint8_t)cyf_amx_rand(&seed);
    for (n = 0; n < N * K; n++) w[n] = (int8_t)(((int)cyf_amx_rand(&seed) - 128) | 1);
    for (n = 0; n < (M > N ? M : N); n++) ones[n] = 1.0f;
    cyf_qp_pack(w, K, N, K, p);
    cyf_q_compensation(w, K, N, K, comp);
    cyf_qa_gemm_EMU(x, ldq, ones, 0, M, p, ones, comp, NULL, dummy, 0, 0, N, K, 0, got, N);
    for (m = 0; m < M; m++)
        for (n = 0; n < N; n++) {
            int32_t s = 0;
            for (k = 0; k < K; k++) s += ((int32_t)x[m * ldq + k] - 128) * w[n * K + k];
            bad += s != got[m * N + n];
        }
    free(x); free(w); free(p); free(comp); free(got); free(ones);
    return bad;
}

static int run_bf16(int M, int N, int K) {
    float* x = malloc((size_t)M * K * 4);
    uint16_t* w = malloc((size_t)N * K * 2);
    uint16_t* xp = malloc((size_t)cyf_ba_size(M, K) * 2);
    float* got = malloc((size_t)M * N * 4);
    uint32_t seed = 2;
    int m, n, k, bad = 0;
    /* small integers: every float sum is exact, whatever its order */
    for (m = 0; m < M * K; m++) x[m] = (float)((int)(cyf_amx_rand(&seed) % 9) - 4);
    for (n = 0; n < N * K; n++) w[n] = cyf_bf16((float)((int)(cyf_amx_rand(&seed) % 9) - 4));
    cyf_ba_pack(x, K, M, K, 0, (M + 15) / 16, xp);
    cyf_ba_gemm_EMU(xp, 0, M, w, K, NULL, got, N, 0, N, K, 0);
    for (m = 0; m < M; m++)
        for (n = 0; n < N; n++) {
            float s = 0;
            for (k = 0; k < K; k++) s += x[m * K + k] * cyf_bf16_float(w[n * K + k]);
            bad += s != got[m * N + n];
        }
    free(x); free(w); free(xp); free(got);
    return bad;
}

int main(void) {
    static const int shapes[][3] = {{16, 1, 1},   {16, 16, 64},  {17, 33, 200}, {31, 17, 63},
                                    {32, 32, 64}, {33, 40, 65},  {47, 5, 129},  {64, 130, 512},
                                    {100, 31, 3}, {16, 48, 1024}};
    int i, bad = 0;
    for (i = 0; i < (int)(sizeof(shapes) / sizeof(shapes[0])); i++) {
        int a = run_int8(shapes[i][0], shapes[i][1], shapes[i][2]);
        int b = run_bf16(shapes[i][0], shapes[i][1], shapes[i][2]);
        printf("%d x %d x %d: int8 mismatches %d, bf16 mismatches %d\n", shapes[i][0], shapes[i][1],
               shapes[i][2], a, b);
        bad += a + b;
    }
    printf("model faults %ld\n", cyf_amx_faults);
    return bad + (cyf_amx_faults != 0);
}
