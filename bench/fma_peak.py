"""One core's float32 FMA peak: the bound that RESULTS.md sets the float32 GEMM and encoder
figures against.

Compiles (with the system C compiler) and runs a loop of independent fused multiply-adds on
registers only, 12 accumulators (enough to cover the FMA latency on two pipes), on zmm where
the CPU has AVX-512F, and on ymm with FMA; prints GFLOP/s (2 flops per lane per FMA), the best
of 5 runs of 0.5-1 s each, on one thread.

    python bench/fma_peak.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

#define FMA12(T, F) a0 = F(a0, x, y); a1 = F(a1, x, y); a2 = F(a2, x, y); a3 = F(a3, x, y);   \
    a4 = F(a4, x, y); a5 = F(a5, x, y); a6 = F(a6, x, y); a7 = F(a7, x, y); a8 = F(a8, x, y); \
    a9 = F(a9, x, y); a10 = F(a10, x, y); a11 = F(a11, x, y);                                  \
    __asm__("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6),        \
            "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));

__attribute__((target("avx512f"))) static float loop512(long n) {
    __m512 a0 = _mm512_set1_ps(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
           a8 = a0, a9 = a0, a10 = a0, a11 = a0, x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (long i = 0; i < n; i++) { FMA12(__m512, _mm512_fmadd_ps) }
    a0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), _mm512_add_ps(a4, a5));
    a6 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a6, a7), _mm512_add_ps(a8, a9)), _mm512_add_ps(a10, a11));
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a6));
}

__attribute__((target("avx2,fma"))) static float loop256(long n) {
    __m256 a0 = _mm256_set1_ps(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
           a8 = a0, a9 = a0, a10 = a0, a11 = a0, x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    float out[8];
    for (long i = 0; i < n; i++) { FMA12(__m256, _mm256_fmadd_ps) }
    a0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)), _mm256_add_ps(a4, a5));
    a6 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a6, a7), _mm256_add_ps(a8, a9)), _mm256_add_ps(a10, a11));
    _mm256_storeu_ps(out, _mm256_add_ps(a0, a6));
    return out[0];
}

static void run(const char* name, float (*f)(long), int lanes) {
    long n = 50000000;
    double best = 0;
    volatile float sink;
    for (int r = 0; r < 5; r++) {
        double t = now();
        sink = f(n);
        t = now() - t;
        if (t < 0.5) { n *= 2; r--; continue; }
        double g = n * 12.0 * lanes * 2 / t / 1e9;
        if (g > best) best = g;
    }
    (void)sink;
    printf("%s FMA peak, 1 thread: %.1f GFLOP/s\n", name, best);
}

int main(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) run("zmm (AVX-512F)", loop512, 16);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) run("ymm (AVX2 + FMA)", loop256, 8);
    return 0;
}
"""


def main() -> int:
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "peak.c"), os.path.join(tmp, "peak")
        with open(src, "w") as f:
            f.write(SOURCE)
        try:
            subprocess.run([cc, "-O2", src, "-o", exe], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"fma_peak: cannot compile the loop with {cc!r}: {e}", file=sys.stderr)
            return 1
        return subprocess.run([exe]).returncode


if __name__ == "__main__":
    sys.exit(main())
