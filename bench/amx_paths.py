#!/usr/bin/env python
"""GFLOP/s of the AMX tile bodies against the int8 / bf16 bodies they replace, one GEMM at a time.

Each weight shape (K x N of the decoder's projections and the 32000-word output layer) is stored
as ``Linear`` stores it (``StoredWeight``: int8 packed, or bf16), then ``quant.set_int8_path`` /
``set_bf16_path`` force "amx" and the other body in turn, at 16-1024 rows, 1 thread, best of 7
calls (weights and outputs warm). Needs a CPU whose AMX tiles ``quant.amx_status`` reports
"available".

    python bench/amx_paths.py --out /tmp/amx.md     # ~15 s
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from cyformer._engine import quant
from cyformer.layers.linear import StoredWeight

SHAPES = [(512, 2048), (2048, 512), (512, 32000)]   # (K, N)
KINDS = (("int8", "int8", quant.set_int8_path, "vnni512"),
         ("bf16", "bfloat16", quant.set_bf16_path, "avx512bf16"))


def best(f, n: int = 7) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--out", metavar="FILE")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lines = ["| kind | M | K x N | tiles GFLOP/s | other body GFLOP/s | tiles / other |",
             "| --- | ---: | --- | ---: | ---: | ---: |"]
    for kind, dtype, set_path, other in KINDS:
        if quant.amx_status(kind) != "available":
            print(f"{kind}: AMX {quant.amx_status(kind)}", file=sys.stderr)
            continue
        for k, n in SHAPES:
            w = StoredWeight.quantize(rng.standard_normal((n, k)).astype(np.float32), dtype).pack()
            for m in args.rows:
                x = rng.standard_normal((m, k)).astype(np.float32)
                out = np.empty((m, n), np.float32)
                gflops = []
                for path in ("amx", other):
                    set_path(path)
                    try:
                        w.linear_forward(x, None, out, 1)
                        gflops.append(2 * m * n * k / best(lambda: w.linear_forward(x, None, out, 1)) / 1e9)
                    finally:
                        set_path(None)
                lines.append(f"| {kind} | {m} | {k} x {n} | {gflops[0]:.0f} | {gflops[1]:.0f} | {gflops[0] / gflops[1]:.2f}x |")
                print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
