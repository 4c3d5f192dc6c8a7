#!/usr/bin/env python
"""Translating one corpus on Ray: 1 actor x 2 threads, 2 actors x 1 thread, and plain
`cyformer translate --threads 2`, on the same sentences with the same model.

Reports, per setting: wall time of the job (Ray: from `translate_dataset` to the last row;
the local Ray's start is timed apart), sentences per second, and the ratio to plain
`cyformer translate`; and Ray's overhead per batch, measured by running the same blocks
through an actor pool whose actors return their batch unchanged (the same scheduling,
object-store traffic and order-keeping, no model). Every run's translations must equal plain
`cyformer translate`'s, or the script fails.

    python bench/ray_scaling.py --sentences 10000             # trains the demo model first
    python bench/ray_scaling.py --model cyformer-demo --sentences 10000 --out ray.md
    python bench/ray_scaling.py --sentences 300 --steps 20    # a quick check that it runs

The machine must be quiet: two settings share two cores.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

try:
    import cyformer
except ImportError:  # not installed: use the in-tree build
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    import cyformer


def sentences(n: int, seed: int):
    """``n`` source sentences of the demo's task (dates in words), seeded."""
    from cyformer.data import load_task
    data = load_task("dates", n_train=n, n_valid=1, n_test=1, seed=seed)
    return [data.task.detokenize(s, "source") for s, _ in data.train]


def plain(model: str, path: str, threads: int, beam: int, batch: int, out: str) -> float:
    """Wall seconds of `cyformer translate` in its own process (model load included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cyformer", "translate", model, path, "-o", out, "--threads",
                    str(threads), "--beam-size", str(beam), "--batch-size", str(batch), "--quiet"], check=True)
    return time.perf_counter() - start


class _Identity:
    def __call__(self, table):
        return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a model folder (default: train `cyformer demo` into a temporary folder)")
    p.add_argument("--steps", type=int, default=800, help="demo training steps when --model is not given")
    p.add_argument("--sentences", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32, help="sentences decoded at once (max_batch_size)")
    p.add_argument("--ray-batch-size", type=int, default=256, help="rows per Ray batch")
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args()

    import ray
    from cyformer.distributed import read_text_files, translate_dataset

    work = tempfile.mkdtemp(prefix="ray-scaling-")
    model = args.model
    if model is None:
        from cyformer.recipes import demo
        model = os.path.join(work, "demo")
        print(f"training the demo model ({args.steps} steps) into {model} ...", file=sys.stderr)
        demo("dates", steps=args.steps, output_dir=model, progress=False, attention_plot=False, log=lambda m: None)
    src = os.path.join(work, "src.txt")
    with open(src, "w", encoding="utf-8") as f:
        f.writelines(s + "\n" for s in sentences(args.sentences, args.seed))
    n = args.sentences
    options = dict(beam_size=args.beam_size, max_batch_size=args.batch_size)

    rows = []
    print("plain cyformer translate, 2 threads ...", file=sys.stderr)
    reference_path = os.path.join(work, "plain.txt")
    t_plain = plain(model, src, 2, args.beam_size, args.batch_size, reference_path)
    with open(reference_path, encoding="utf-8") as f:
        reference = [line.rstrip("\n") for line in f]
    rows.append(("cyformer translate --threads 2", 1, 2, t_plain))

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    t_init = time.perf_counter() - start
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        blocks = None
        for actors, threads in ((1, 2), (2, 1)):
            print(f"Ray, {actors} actor(s) x {threads} thread(s) ...", file=sys.stderr)
            data = read_text_files([src], rows_per_block=args.ray_batch_size)
            start = time.perf_counter()
            out = translate_dataset(data, model, actors=actors, threads_per_actor=threads,
                                    batch_size=args.ray_batch_size, **options)
            got = [r for t in out.iter_batches(batch_size=None, batch_format="pyarrow")
                   for r in t.column("translation").to_pylist()]
            seconds = time.perf_counter() - start
            if got != reference:
                bad = sum(a != b for a, b in zip(got, reference)) + abs(len(got) - len(reference))
                raise SystemExit(f"Ray {actors}x{threads}: {bad} of {n} lines differ from cyformer translate")
            rows.append((f"translate_dataset, {actors} actor(s) x {threads} thread(s)", actors, threads, seconds))
            blocks = data.num_blocks()
        # the same blocks through actors that do nothing: Ray's own cost per batch
        data = read_text_files([src], rows_per_block=args.ray_batch_size)
        data.context.execution_options.preserve_order = True
        start = time.perf_counter()
        ident = data.map_batches(_Identity, batch_size=args.ray_batch_size, batch_format="pyarrow",
                                 compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)
        count = sum(t.num_rows for t in ident.iter_batches(batch_size=None, batch_format="pyarrow"))
        t_identity = time.perf_counter() - start
        assert count == n
    finally:
        ray.shutdown()

    lines = [f"cyformer {cyformer.__version__} | {n} sentences (dates task, seed {args.seed}) | model {model} | "
             f"beam {args.beam_size}, {args.batch_size} sentences per decode batch, {args.ray_batch_size} rows "
             f"per Ray batch ({blocks} batches)", "",
             "| setting | actors | threads each | wall s | sentences/s | vs plain |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, actors, threads, seconds in rows:
        lines.append(f"| {name} | {actors} | {threads} | {seconds:.1f} | {n / seconds:.0f} | "
                     f"{t_plain / seconds:.2f}x |")
    lines += ["", f"local Ray start (ray.init, not in the Ray rows): {t_init:.1f} s; "
                  f"pool of 2 identity actors over the same {blocks} batches: {t_identity:.2f} s, "
                  f"{1000 * t_identity / blocks:.1f} ms per batch (Ray's overhead, actor start included)"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        from cyformer.io import atomic_write_bytes
        atomic_write_bytes(args.out, (text + "\n").encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
