#!/usr/bin/env python
"""The step governor against the fixed team and one thread, interleaved call by call in one process.

Run-to-run noise of this kind of VM (+-20% between identical processes) hides a few per cent,
so this cycles through the governor (2 threads), the fixed team of 2 and one thread on every
call of the same workload in one process and reports the medians and their ratios, quiet and with one busy process
(``python -c 'while True: pass'``) started by the script.

    python bench/governor_ab.py --calls 40
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

try:
    import cyformer
except ImportError:  # not installed: use the in-tree build
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    import cyformer

from cyformer import threads  # noqa: E402
from cyformer.benchmark import bench_config, source_batch  # noqa: E402
from cyformer.sysinfo import cpu_features, cpu_name  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=40, help="calls per setting (alternating)")
    p.add_argument("--size", default="small", choices=["small", "base"])
    a = p.parse_args()
    cyformer.set_num_threads(2)
    config = bench_config(a.size)
    config.forced_eos = True
    model = cyformer.Transformer(config, seed=0)
    print(f"cyformer {cyformer.__version__} | {cpu_name()} | {' '.join(cpu_features())} | 2 threads | "
          f"median of {a.calls} alternating calls each (ms)")
    print("| workload | condition | 2 threads, governor | 2 threads, fixed team | 1 thread | governor / fixed "
          "| governor x best |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for batch in (16, 1):
        src = source_batch(batch, 32)
        for cond in ("quiet", "loaded"):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if cond == "loaded" else None
            try:
                time.sleep(0.3 if busy else 0)
                model.generate(src, max_length=32, min_length=32)
                times = {"governor": [], "fixed": [], "one": []}
                modes = list(times)
                for r in range(a.calls):
                    # rotate the order each round: the call after a one-thread call finds the
                    # team's threads asleep, and no setting should always be that call
                    for mode in modes[r % 3:] + modes[:r % 3]:
                        threads.set_adaptive(mode == "governor")
                        cyformer.set_num_threads(1 if mode == "one" else 2)
                        t0 = time.perf_counter()
                        model.generate(src, max_length=32, min_length=32)
                        times[mode].append((time.perf_counter() - t0) * 1e3)
                cyformer.set_num_threads(2)
            finally:
                if busy:
                    busy.kill()
                    busy.wait()
            g, f, o = (statistics.median(times[k]) for k in ("governor", "fixed", "one"))
            print(f"| greedy, {a.size}, batch {batch} x 32 -> 32 | {cond} | {g:.1f} | {f:.1f} | {o:.1f} | "
                  f"{g / f:.3f} | {g / min(f, o):.2f}x |", flush=True)
    threads.set_adaptive(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
