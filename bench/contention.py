#!/usr/bin/env python
"""Decoding on a quiet machine and on one where another process keeps a core busy.

OpenMP threads that spin while they wait hold on to a core; when another program wants that
core too, every short parallel region of a decoding step can stall for a scheduler time slice
(issue 14: greedy decoding at 2 threads collapsed 9x). This script times the same workloads
under each OpenMP wait setting, at 1 and 2 threads, quiet and with one busy process
(``python -c 'while True: pass'``) started by the script, and prints them side by side with
the ratio to the best thread setting of the same condition.

Each cell runs in a fresh process, since OpenMP reads its wait policy once, when it loads.

    python bench/contention.py                        # decode workloads, every setting
    python bench/contention.py --model-dir cyformer-demo --lines 2000   # + `cyformer translate`
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

try:
    import cyformer
except ImportError:  # not installed: use the in-tree build
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    import cyformer

from cyformer.benchmark import run_decode_engine  # noqa: E402
from cyformer.sysinfo import cpu_features, cpu_name  # noqa: E402

# name -> environment changes; None removes a variable (the engine then applies its default)
SETTINGS: Dict[str, Dict[str, Optional[str]]] = {
    "cyformer default (step governor)": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None,
                                         "CYFORMER_ADAPTIVE_THREADS": None},
    "fixed team, libgomp default wait": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None,
                                         "CYFORMER_ADAPTIVE_THREADS": "0"},
    "fixed team, OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": None,
                                            "CYFORMER_ADAPTIVE_THREADS": "0"},
    "fixed team, GOMP_SPINCOUNT=1000": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000",
                                        "CYFORMER_ADAPTIVE_THREADS": "0"},
    "fixed team, GOMP_SPINCOUNT=10000": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000",
                                         "CYFORMER_ADAPTIVE_THREADS": "0"},
}


def environment(changes: Dict[str, Optional[str]]) -> Dict[str, str]:
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class Busy:
    """One process spinning on a core for the duration of a ``with`` block."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def decode_ms(env, size, batch, gen_len, threads, repeat) -> float:
    r = run_decode_engine(size, batch, 32, gen_len, 1, threads, repeat, env=env)
    return float(r["median_ms"])


def translate_ms(env, model_dir, input_path, threads, repeat) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cyformer", "translate", model_dir, input_path, "-o", os.devnull,
                        "--quiet", "--threads", str(threads), "--beam-size", "1"], env=env, check=True,
                       stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="SETTING")
    p.add_argument("--size", default="small", choices=["small", "base"])
    p.add_argument("--repeat", type=int, default=3, help="timed calls per process (median taken)")
    p.add_argument("--rounds", type=int, default=5, help="processes per cell, interleaved across settings")
    p.add_argument("--model-dir", help="a model folder with a tokenizer (cyformer demo's) for the translate row")
    p.add_argument("--lines", type=int, default=2000, help="lines to translate (test sentences of the dates task)")
    a = p.parse_args()

    workloads = {f"greedy, {a.size}, batch 16 x 32 -> 32": lambda env, nt: decode_ms(env, a.size, 16, 32, nt, a.repeat),
                 f"greedy, {a.size}, batch 1 x 32 -> 32": lambda env, nt: decode_ms(env, a.size, 1, 32, nt, a.repeat)}
    if a.model_dir:
        from cyformer.data import load_task

        data = load_task("dates", n_train=1, n_valid=0, n_test=a.lines, seed=1)
        fd, path = tempfile.mkstemp(suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(data.task.detokenize(s, "source") for s, _ in data.test) + "\n")
        workloads[f"cyformer translate, {a.lines} lines, greedy"] = \
            lambda env, nt: translate_ms(env, a.model_dir, path, nt, 1)

    print(f"cyformer {cyformer.__version__} | {cpu_name()} | {' '.join(cpu_features())} | {os.cpu_count()} CPUs")
    print(f"load average before: {os.getloadavg()[0]:.2f}; ms: median over {a.rounds} processes (interleaved "
          f"across settings) of each one's median of {a.repeat} calls; "
          f"'x best' = this cell over the fastest thread setting of the same row and condition")
    print()
    print("| workload | setting | quiet 1 thr | quiet 2 thr | loaded 1 thr | loaded 2 thr | 2 thr loaded x best "
          "| 2 thr quiet vs cyformer default |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for wname, run in workloads.items():
        # settings are interleaved run by run (A B C A B C ...), so that a drift of the machine's
        # speed during the table shows in every setting alike; each run is a fresh process
        cells: Dict[tuple, List[float]] = {}
        for cond in ("quiet", "loaded"):
            for nt in (1, 2):
                print(f"  running: {wname} | {cond} | {nt} thread(s) | {a.rounds} rounds of "
                      f"{len(a.settings)} settings", file=sys.stderr, flush=True)
                for _ in range(a.rounds):
                    for sname in a.settings:
                        env = environment(SETTINGS[sname])
                        if cond == "loaded":
                            with Busy():
                                t = run(env, nt)
                        else:
                            t = run(env, nt)
                        cells.setdefault((sname, cond, nt), []).append(t)
        med = {k: statistics.median(v) for k, v in cells.items()}
        base = next((s for s in a.settings if s.startswith("cyformer default")), None)
        for sname in a.settings:
            best_loaded = min(med[sname, "loaded", 1], med[sname, "loaded", 2])
            vs = f"{med[sname, 'quiet', 2] / med[base, 'quiet', 2]:.2f}x" if base else ""
            print(f"| {wname} | {sname} | {med[sname, 'quiet', 1]:.0f} | {med[sname, 'quiet', 2]:.0f} | "
                  f"{med[sname, 'loaded', 1]:.0f} | {med[sname, 'loaded', 2]:.0f} | "
                  f"{med[sname, 'loaded', 2] / best_loaded:.2f}x | {vs} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
