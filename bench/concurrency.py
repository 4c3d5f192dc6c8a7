#!/usr/bin/env python
"""Several Python threads sharing one model: do their calls run at the same time?

With ``cyformer.set_num_threads(1)`` each call uses one core; the kernels release the GIL and
workspaces are per thread, so two Python threads should finish 2N calls in about the time one
thread needs for N on a 2-core machine. Reports the median wall time of 2N calls made by one
thread and by T threads (N each... split evenly), and the speed-up.

    python bench/concurrency.py --size small --calls 40 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

try:
    import cyformer
except ImportError:  # not installed: use the in-tree build
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    import cyformer

from cyformer.benchmark import bench_config, source_batch  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", choices=["small", "base"])
    p.add_argument("--calls", type=int, default=40, help="calls in total per measurement")
    p.add_argument("--threads", type=int, default=2, help="Python threads")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    cyformer.set_num_threads(1)
    model = cyformer.Transformer(bench_config(a.size), seed=0)
    src = source_batch(8, 32)
    jobs = {
        "encode (8 x 32 tokens)": lambda: model.encode(src),
        "generate greedy (8 x 32 -> 16 tokens)": lambda: model.generate(src, max_length=16, min_length=16),
    }
    print(f"cyformer {cyformer.__version__}, {a.size} model, OpenMP threads per call: 1, "
          f"{os.cpu_count()} CPUs; median of {a.repeat}")
    print(f"| call | {a.calls} calls, 1 thread (s) | {a.calls} calls, {a.threads} threads (s) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, job in jobs.items():
        job()

        def serial():
            for _ in range(a.calls):
                job()

        def parallel():
            share = [a.calls // a.threads + (i < a.calls % a.threads) for i in range(a.threads)]
            workers = [threading.Thread(target=lambda n=n: [job() for _ in range(n)]) for n in share]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        times = {}
        for label, fn in (("serial", serial), ("parallel", parallel)):
            runs = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            times[label] = statistics.median(runs)
        print(f"| {name} | {times['serial']:.2f} | {times['parallel']:.2f} | "
              f"{times['serial'] / times['parallel']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
