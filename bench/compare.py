#!/usr/bin/env python
"""cyformer vs PyTorch eager on the encoder forward pass (``--task encode``) or one training
step (``--task train``: forward, backward and Adam), each engine in its own process.

For every size and thread count, and under two OpenBLAS core-type settings, this runs
``python -m cyformer.benchmark {sgemm,cyformer,torch}`` in fresh subprocesses (via
``cyformer.benchmark.run_engine``) and prints one markdown table:

* "default": OPENBLAS_CORETYPE removed from the child's environment, so OpenBLAS picks
  its kernels for this CPU (what a user gets out of the box);
* "inherited X": the value this process was started with, when OPENBLAS_CORETYPE is set
  (for example by a CI image), else "forced Haswell": OPENBLAS_CORETYPE=Haswell.

Nothing else in the environment is changed. The core type only affects SciPy's OpenBLAS
(cyformer's GEMMs and the SGEMM peak); torch multiplies with its own BLAS, so its two rows
per configuration also show the run-to-run noise. Progress goes to stderr, the report to
stdout (and to --out FILE).

    python bench/compare.py                       # small+base, 1 and 2 threads, 10 calls
    python bench/compare.py --sizes small --threads 1 --repeat 2   # quick check
    python bench/compare.py --task train --sizes small   # training step, batch 32 x 32 x 32

The training step (``cyformer.benchmark.run_cyformer_train`` / ``run_torch_train``): the
model of the given size with a target vocabulary of ``TRAIN_VOCAB`` (8000), tied output
layer, dropout 0.1, label smoothing 0.1, Adam; ``--batch`` sentences of ``--src-len``
source and ``--tgt-len`` target tokens.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from typing import Dict, List, Optional, Tuple

_REPO_PYTHON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")

try:
    import cyformer
except ImportError:  # not installed: use the in-tree build
    sys.path.insert(0, _REPO_PYTHON)
    import cyformer

from cyformer.benchmark import SIZES, encoder_flops, run_engine, run_train_engine, train_flops  # noqa: E402
from cyformer.sysinfo import cpu_name  # noqa: E402

ENGINES = ("sgemm", "cyformer", "torch")


def child_env(coretype: Optional[str]) -> Dict[str, str]:
    """This process's environment with OPENBLAS_CORETYPE set to ``coretype`` or removed.

    The directory cyformer was imported from goes first on PYTHONPATH, so every child
    times the same build as this script reports on.
    """
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(cyformer.__file__)))
    paths = [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != pkg_parent]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def core_settings() -> List[Tuple[str, Dict[str, str]]]:
    inherited = os.environ.get("OPENBLAS_CORETYPE")
    second = (f"inherited {inherited}", inherited) if inherited else ("forced Haswell", "Haswell")
    return [("default", child_env(None)), (second[0], child_env(second[1]))]


def detected_core(blas: str) -> str:
    """The core OpenBLAS reports in a blas_description() string ("... core=SkylakeX ...")."""
    m = re.search(r"core=(\S+)", blas or "")
    return m.group(1) if m else "?"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(engine: str, size: str, threads: int, repeat: int, args, env) -> Tuple[Optional[Dict], Optional[str]]:
    """(result, error): result None with error None means the engine is not installed."""
    t0 = time.perf_counter()
    try:
        if args.task == "train" and engine != "sgemm":
            r = run_train_engine(engine, size, args.batch, args.src_len, args.tgt_len, threads, repeat, env=env)
        else:
            r = run_engine(engine, size, args.batch, args.src_len, threads, repeat, env=env)
    except Exception as exc:  # a failing child: report it, keep measuring the rest
        log(f"    {engine}: FAILED\n{exc}")
        return None, str(exc)
    took = time.perf_counter() - t0
    if r is None:
        log(f"    {engine}: not installed")
    elif engine == "sgemm":
        log(f"    {engine}: {r['gflops']:.1f} GFLOP/s [{r.get('blas', '')}] ({took:.1f} s)")
    else:
        log(f"    {engine}: {r['median_ms']:.2f} ms median ({took:.1f} s)")
    return r, None


def fmt(x: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["small", "base"], choices=sorted(SIZES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeat", type=int, default=10, help="timed encoder calls per engine (after 2 warm-up calls)")
    p.add_argument("--task", default="encode", choices=["encode", "train"])
    p.add_argument("--batch", type=int, default=None, help="default: 16 (encode), 32 (train)")
    p.add_argument("--src-len", type=int, default=None, help="default: 64 (encode), 32 (train)")
    p.add_argument("--tgt-len", type=int, default=32, help="target tokens (train)")
    p.add_argument("--out", metavar="FILE", help="also write the markdown report to FILE")
    args = p.parse_args(argv)
    if args.repeat < 1 or any(n < 1 for n in args.threads):
        p.error("--repeat and --threads must be >= 1")
    train = args.task == "train"
    if args.batch is None:
        args.batch = 32 if train else 16
    if args.src_len is None:
        args.src_len = 32 if train else 64

    def work(size):
        return (train_flops(size, args.batch, args.src_len, args.tgt_len) if train
                else encoder_flops(size, args.batch, args.src_len))

    settings = core_settings()
    started = time.perf_counter()
    rows, notes, blas_seen, failures = [], [], {}, 0
    torch_version = None
    for size in args.sizes:
        for nt in args.threads:
            for label, env in settings:
                log(f"[{size}, {nt} thread(s), {label}]")
                res = {}
                for engine in ENGINES:
                    r, err = run(engine, size, nt, args.repeat, args, env)
                    res[engine] = r
                    if r is None and err is None and engine != "torch":
                        err = "could not import it in the child process"
                    if err is not None:
                        failures += 1
                        notes.append(f"{size}/{nt}t/{label}: {engine} failed: {err.strip().splitlines()[-1]}")
                sg, cy, th = res["sgemm"], res["cyformer"], res["torch"]
                core = detected_core(sg["blas"]) if sg else "?"
                if sg:
                    blas_seen[label] = sg["blas"]
                if th:
                    torch_version = th.get("version", torch_version)
                cy_ms = cy["median_ms"] if cy else None
                th_ms = th["median_ms"] if th else None
                ratio = None
                if cy_ms and th_ms:
                    ratio = cy_ms / th_ms if train else th_ms / cy_ms
                cy_core = cy["gflops"] / nt if cy else None
                sg_core = sg["gflops"] / nt if sg else None
                share = cy["gflops"] / sg["gflops"] if (cy and sg) else None
                rows.append([size, str(nt), f"{label} ({core})", fmt(cy_ms, ".1f"), fmt(th_ms, ".1f"),
                             fmt(ratio, ".2f", "x"), fmt(cy_core, ".1f"), fmt(sg_core, ".1f"),
                             fmt(None if share is None else 100 * share, ".0f", "%")])
    elapsed = time.perf_counter() - started

    header = ["size", "threads", "BLAS core type", "cyformer ms", "torch ms",
              "cyformer/torch time" if train else "torch/cyformer",
              "cyformer GFLOP/s/core", "SGEMM GFLOP/s/core", "of SGEMM"]
    align = ["---", "---:", "---", "---:", "---:", "---:", "---:", "---:", "---:"]
    works = ", ".join(f"{s} {work(s) / 1e9:.2f} GFLOP" for s in args.sizes)
    what = (f"Training step (forward, backward, Adam)" if train else "Encoder forward")
    shape = (f"batch {args.batch} x {args.src_len} source x {args.tgt_len} target tokens, target vocabulary "
             f"8000, dropout 0.1, label smoothing 0.1" if train else f"batch {args.batch} x {args.src_len} tokens")
    lines = [
        f"## {what}: cyformer {cyformer.__version__} vs PyTorch eager "
        f"{torch_version or '(not installed)'}",
        "",
        f"- CPU: {cpu_name()}; {os.cpu_count()} logical CPUs; Python {platform.python_version()}",
        f"- {shape}; work per call (GEMMs): {works}",
        f"- median of {args.repeat} calls after 2 warm-up calls, each engine in its own process; "
        f"SGEMM = cyformer's linear kernel on one 1024x512 @ 512x2048 GEMM (median of 10)",
        "- BLAS core type (SciPy's OpenBLAS, used by cyformer; torch uses its own BLAS):",
    ]
    lines += [f"  - {label}: {desc}" for label, desc in blas_seen.items()]
    lines += [f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; "
              f"total run time {elapsed:.0f} s", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join(align) + " |")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    report = "\n".join(lines) + "\n"

    print(report, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
        log(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
