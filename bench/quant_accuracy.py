#!/usr/bin/env python
"""Accuracy of the compute types: int8 and bfloat16 against float32.

1. A model trained by ``cyformer demo`` (dates task): test BLEU and exact match for float32,
   int8 and bfloat16 (beam search, the demo's 500 test sentences), and the share of test
   sentences each decodes identically to float32. ``--model-dir`` reuses a demo folder;
   otherwise one is trained into ``--work-dir`` (``--steps``, default the demo's 800:
   about 10-20 minutes on two cores) and kept for the next run.
2. Seeded Marian checkpoints ("small", "base", as bench/decode_compare.py builds them):
   teacher-forced logits of int8 / bfloat16 against float32 on random sources, the max
   and mean relative error (|d| / max|ref| and mean|d| / mean|ref|).

A compute type this CPU does not run natively is reported as skipped, naming what it lacks.
Prints a markdown report (``--out FILE`` writes it too); the figures go in bench/RESULTS.md.

    python bench/quant_accuracy.py                                   # everything
    python bench/quant_accuracy.py --steps 60 --test 40 --marian small   # a quick check
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Dict, List, Optional

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import cyformer
except ImportError:  # not installed: the in-tree build
    sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "python"))
    import cyformer

from cyformer import Tokenizer, Transformer
from cyformer.layers.linear import kernel_names, resolve_compute_type
from cyformer.sysinfo import cpu_features, cpu_name

COMPUTE_TYPES = ("float32", "int8", "bfloat16")
DEFAULT_WORK_DIR = "/tmp/cyformer-quant-accuracy"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def supported(ct: str) -> Optional[str]:
    """None when this CPU runs ``ct`` natively, else the reason."""
    try:
        resolve_compute_type(ct)
        return None
    except ValueError as e:
        return str(e)


def demo_folder(args) -> str:
    if args.model_dir:
        return args.model_dir
    out = os.path.join(args.work_dir, f"demo-{args.task}-{args.steps}-seed{args.seed}")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        from cyformer.recipes import demo
        log(f"training the demo model into {out} ({args.steps} steps) ...")
        demo(args.task, steps=args.steps, output_dir=out, seed=args.seed, progress=False,
             attention_plot=False, log=lambda m: None)
    return out


def decode_test(model: Transformer, tokenizer: Tokenizer, pairs, beam_size: int) -> List[str]:
    hyps = []
    for i in range(0, len(pairs), 64):
        chunk = pairs[i:i + 64]
        longest = max(len(t) for _, t in chunk)
        results = model.generate([list(s) for s, _ in chunk], beam_size=beam_size,
                                 max_length=min(model.config.max_len, 2 * longest + 10), return_scores=False)
        hyps += tokenizer.decode([r.sequences[0] for r in results])
    return hyps


def demo_accuracy(args) -> List[str]:
    from cyformer.data import load_task
    from cyformer.recipes import _encode_pairs
    from cyformer.training import corpus_bleu

    folder = demo_folder(args)
    tokenizer = Tokenizer.from_pretrained(folder)
    # the demo's own split (same task, sizes and seed), so the test sentences are the demo's
    data = load_task(args.task, n_train=40000, n_valid=300, n_test=500, seed=args.seed)
    pairs = _encode_pairs(tokenizer, data.test)[:args.test]
    refs = tokenizer.decode([list(t) for _, t in pairs])
    rows, base = [], None
    for ct in COMPUTE_TYPES:
        why = supported(ct)
        if why:
            rows.append(f"| {ct} | skipped: {why} | | | |")
            continue
        log(f"demo model, {ct}: decoding {len(pairs)} test sentences (beam {args.beam_size}) ...")
        model = Transformer.from_pretrained(folder, compute_type=ct)
        hyps = decode_test(model, tokenizer, pairs, args.beam_size)
        bleu = corpus_bleu(hyps, refs)
        exact = float(np.mean([h == r for h, r in zip(hyps, refs)]))
        if base is None:
            base = (hyps, bleu)
        same = float(np.mean([h == b for h, b in zip(hyps, base[0])]))
        rows.append(f"| {ct} | {bleu:.2f} | {bleu - base[1]:+.2f} | {100 * exact:.1f}% | {100 * same:.1f}% |")
    return [f"### Demo model ({args.task}, {folder}), {len(pairs)} test sentences, beam {args.beam_size}", "",
            "| compute type | test BLEU | vs float32 | exact match | identical to float32 |",
            "|---|---:|---:|---:|---:|", *rows, ""]


def marian_errors(args) -> List[str]:
    sys.path.insert(0, _HERE)
    from decode_compare import EOS, PAD, VOCAB, ensure_checkpoint

    rows = []
    rng = np.random.default_rng(args.seed)
    for name in args.marian:
        hf_dir, _ = ensure_checkpoint(name, args.work_dir, ct2=False)
        src = [list(rng.integers(2, VOCAB - 1, 32)) + [EOS] for _ in range(args.marian_batch)]
        tgt = [[PAD] + list(rng.integers(2, VOCAB - 1, 31)) for _ in range(args.marian_batch)]
        ref = Transformer.from_pretrained(hf_dir).forward(src, tgt).astype(np.float64)
        for ct in COMPUTE_TYPES[1:]:
            why = supported(ct)
            if why:
                rows.append(f"| {name} | {ct} | skipped: {why} | | |")
                continue
            log(f"Marian {name}, {ct}: logits ...")
            got = Transformer.from_pretrained(hf_dir, compute_type=ct).forward(src, tgt).astype(np.float64)
            d = np.abs(got - ref)
            top_same = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
            rows.append(f"| {name} | {ct} | {d.max() / np.abs(ref).max():.2e} | {d.mean() / np.abs(ref).mean():.2e} | "
                        f"{100 * top_same:.1f}% |")
    return [f"### Seeded Marian checkpoints: teacher-forced logits vs float32 ({args.marian_batch} x 32 tokens)", "",
            "| model | compute type | max rel. error | mean rel. error | same argmax |", "|---|---|---:|---:|---:|",
            *rows, ""]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="an existing `cyformer demo` folder (default: train one into --work-dir)")
    p.add_argument("--task", default="dates")
    p.add_argument("--steps", type=int, default=800, help="training steps when a demo model is trained")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", type=int, default=500, help="test sentences decoded (at most the demo's 500)")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--marian", nargs="*", default=["small", "base"], choices=["small", "base"])
    p.add_argument("--marian-batch", type=int, default=8)
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    p.add_argument("--out", metavar="FILE", help="also write the report to FILE")
    a = p.parse_args(argv)
    os.makedirs(a.work_dir, exist_ok=True)
    kernels = kernel_names()
    lines = [f"## Compute-type accuracy ({datetime.date.today().isoformat()})", "",
             f"CPU: {cpu_name()} ({os.cpu_count()} cores); {' '.join(cpu_features())}",
             f"Python {platform.python_version()}, cyformer {cyformer.__version__}; kernels: "
             + "; ".join(f"{k}: {v}" for k, v in kernels.items()),
             f"Command: python bench/quant_accuracy.py {' '.join(argv if argv is not None else sys.argv[1:])}", ""]
    lines += demo_accuracy(a)
    if a.marian:
        lines += marian_errors(a)
    text = "\n".join(lines)
    print(text)
    if a.out:
        from cyformer.io import atomic_write_bytes
        atomic_write_bytes(a.out, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
