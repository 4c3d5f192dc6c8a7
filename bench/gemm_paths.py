#!/usr/bin/env python
"""GFLOP/s of the three kernels behind ``linear_forward`` at decoding shapes.

``linear_forward`` picks, by the number of rows M: the panel kernel
(``engine/gemm_panel.h``) for 8-256 rows while the packed rows fit in L2 (M x K <= 128K
floats) and the CPU has AVX2/FMA, else the skinny dot-product kernel up to 48 rows, else
BLAS. This script forces each path in turn (``set_panel_rows``,
``set_skinny_rows``) on the weight shapes of the benchmark models (K x N of the decoder's
projections and of the 32000-word output layer) and prints one markdown table.

Weights are cycled through enough copies (~200 MB) that each call reads them from memory,
as a decoding step does; BLAS is held at one thread, as inside cyformer. Best of 5.

    python bench/gemm_paths.py                    # 1 and 2 threads (~2 min)
    python bench/gemm_paths.py --threads 1 --rows 16 64 --out /tmp/gemm.md
"""
from __future__ import annotations

import argparse
import os
import sys
import timeit

import numpy as np

try:
    import cyformer
except ImportError:  # not installed: use the in-tree build
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    import cyformer
from cyformer import threads
from cyformer._engine import linear
from cyformer.benchmark import LINEAR_PATHS, linear_path

SHAPES = [(512, 1536), (512, 2048), (2048, 512), (512, 32000), (256, 1024), (256, 32000)]  # (K, N)


def measure(k: int, n: int, m: int, nt: int, path: str, weights) -> float:
    x = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    i = [0]

    def call():
        linear.linear_forward(x, weights[i[0] % len(weights)], None, out, n_threads=nt)
        i[0] += 1
    with linear_path(path):
        call()
        number = max(1, len(weights) // 2)
        best = min(timeit.repeat(call, number=number, repeat=5)) / number
    return 2.0 * m * n * k / best / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rows", nargs="+", type=int, default=[4, 8, 16, 64, 256])
    p.add_argument("--out", metavar="FILE", help="also write the markdown table to FILE")
    a = p.parse_args()
    paths = [p for p in LINEAR_PATHS if p != "panel" or linear.panel_kernel_available()]
    lines = [f"GFLOP/s per call (all threads) of `linear_forward` forced onto each path; "
             f"weights not in cache; {cyformer.__version__}, {threads.blas_info()[0].get('architecture', '?') if threads.blas_info() else '?'} BLAS",
             "",
             "| K x N | threads | rows | " + " | ".join(paths) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in paths) + " |"]
    with threads.blas_single_threaded():
        for k, n in SHAPES:
            copies = max(2, min(64, int(2e8 // (n * k * 4))))
            rng = np.random.default_rng(1)
            weights = [rng.standard_normal((n, k)).astype(np.float32) for _ in range(copies)]
            for nt in a.threads:
                for m in a.rows:
                    rates = [measure(k, n, m, nt, path, weights) for path in paths]
                    lines.append(f"| {k} x {n} | {nt} | {m} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")
                    print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
