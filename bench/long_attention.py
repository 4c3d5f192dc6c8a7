#!/usr/bin/env python
"""Long inputs: cyformer's encoder vs transformers' MarianMT encoder on PyTorch's
``F.scaled_dot_product_attention``, batch 1, 128 to 4096 positions; and a local window of 64
against full attention at 4096 positions (issue 12, item 5).

The model is the "small" size of ``cyformer.benchmark.SIZES`` (d_model 256, 4 heads, d_ff
1024, 3 encoder layers) as a seeded MarianMTModel (``attn_implementation="sdpa"``, SiLU, no
dropout, positions up to the longest length) saved to a temporary folder, which cyformer
loads with ``Transformer.from_pretrained``: the two engines run the same weights, and the
script checks that their encoder outputs agree before timing them.

Each engine runs in its own worker process (the OpenMP runtimes of cyformer and torch never
share a process), kept alive for the whole run; per thread count the parent asks the
workers for one timed call at a time, alternating between them, so both see the same load
over the run. It reports medians and the ratio torch / cyformer (> 1: cyformer is faster).
The window rows time cyformer's attention kernel alone (4 heads of 64, one sequence), with
``window=64`` and without, interleaved the same way.

    python bench/long_attention.py                          # 128..4096, 1 and 2 threads, 5 calls
    python bench/long_attention.py --lengths 128 512 --threads 1 --repeat 2   # quick check
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import cyformer
except ImportError:  # not installed: use the in-tree build
    sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "python"))
    import cyformer

from cyformer.benchmark import SIZES  # noqa: E402

LENGTHS = (128, 512, 1024, 2048, 4096)
VOCAB = 1000     # the embedding is a gather: its size does not change the encoder's cost
WINDOW = 64


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the model ---------------------------------------------------------------------------------

def build_marian(directory: str, max_len: int, size: str = "small", seed: int = 0) -> None:
    """A seeded MarianMTModel of ``size`` with positions up to ``max_len``, saved to ``directory``."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    s = SIZES[size]
    torch.manual_seed(seed)
    cfg = MarianConfig(vocab_size=VOCAB, d_model=s["d_model"], encoder_layers=s["n_encoder_layers"],
                       decoder_layers=s["n_decoder_layers"], encoder_attention_heads=s["n_heads"],
                       decoder_attention_heads=s["n_heads"], encoder_ffn_dim=s["d_ff"], decoder_ffn_dim=s["d_ff"],
                       max_position_embeddings=max_len, pad_token_id=VOCAB - 1, decoder_start_token_id=VOCAB - 1,
                       eos_token_id=0, activation_function="swish", dropout=0.0, attention_dropout=0.0,
                       activation_dropout=0.0, scale_embedding=True)
    model = MarianMTModel(cfg).eval()
    model.save_pretrained(directory)


def source(length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, VOCAB - 1, size=(1, length))


# -- the workers: one per engine and thread count, one JSON line per request -------------------

def worker(engine: str, model_dir: str, threads: int) -> int:
    """Answer requests on stdin until EOF: {"op": "encode", "length": L} or
    {"op": "attention", "length": L, "window": W} -> {"seconds": t}; {"op": "output", ...} ->
    {"output": [...]} (the encoder output, for the agreement check)."""
    if engine == "torch":
        import torch
        from transformers import MarianMTModel

        torch.set_num_threads(threads)
        encoder = MarianMTModel.from_pretrained(model_dir, attn_implementation="sdpa").eval().get_encoder()

        def encode(length):
            ids = torch.from_numpy(source(length))
            with torch.inference_mode():
                return encoder(input_ids=ids).last_hidden_state[0].numpy()
        attend = None
    else:
        cyformer.set_num_threads(threads)
        model = cyformer.Transformer.from_pretrained(model_dir)

        def encode(length):
            return model.encode(source(length))[0]
        attend = _attention_call(threads)
    warm = set()
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["op"], req["length"], req.get("window"))
        if req["op"] == "output":
            reply = {"output": encode(req["length"]).astype(np.float64).tolist()}
        else:
            fn = (lambda: encode(req["length"])) if req["op"] == "encode" else attend(req["length"], req["window"])
            if key not in warm:  # first call of a shape: workspaces, page faults
                fn()
                warm.add(key)
            t0 = time.perf_counter()
            fn()
            reply = {"seconds": time.perf_counter() - t0}
        print(json.dumps(reply), flush=True)
    return 0


def _attention_call(threads: int):
    """attend(length, window) -> a call of cyformer's attention kernel on one sequence of
    the small model's heads (fused Q/K/V rows, as the encoder lays them out)."""
    from cyformer._engine.attention import attention_forward
    from cyformer.threads import blas_single_threaded

    s = SIZES["small"]
    d, heads = s["d_model"], s["n_heads"]
    cache = {}

    def attend(length, window):
        if length not in cache:
            qkv = np.random.default_rng(1).standard_normal((length, 3 * d), dtype=np.float32)
            cache[length] = (qkv, np.empty((length, d), np.float32))
        qkv, out = cache[length]
        zero, n = np.zeros(1, np.int32), np.array([length], np.int32)

        def call():
            with blas_single_threaded():
                attention_forward(qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:], out, zero, n, zero, n, heads,
                                  window=window, n_threads=threads)
        return call
    return attend


class Worker:
    def __init__(self, engine: str, model_dir: str, threads: int):
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(cyformer.__file__)))
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + paths)   # the workers time this build
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", engine,
                                      "--model", model_dir, "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **req) -> Dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with status {self.proc.wait()}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def interleaved(workers: Dict[str, Worker], requests: Dict[str, Dict], repeat: int) -> Dict[str, float]:
    """Median seconds of each named request, asked in turn ``repeat`` times."""
    times: Dict[str, List[float]] = {name: [] for name in requests}
    for _ in range(repeat):
        for name, req in requests.items():
            times[name].append(workers[req["engine"]].ask(**req["ask"])["seconds"])
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeat", type=int, default=5, help="timed calls per engine and length (after one warm-up)")
    p.add_argument("--window", type=int, default=WINDOW, help="the local window timed at the longest length")
    p.add_argument("--out", metavar="FILE", help="also write the markdown report to FILE")
    p.add_argument("--worker", choices=["cyformer", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.threads[0])
    if args.repeat < 1 or any(n < 1 for n in args.threads) or any(n < 1 for n in args.lengths):
        p.error("--repeat, --threads and --lengths must be >= 1")
    longest = max(args.lengths)
    lines = [f"Long inputs, batch 1, small Marian encoder (d_model 256, 4 heads, d_ff 1024, 3 layers); "
             f"medians of {args.repeat} interleaved calls", "",
             "| threads | positions | cyformer ms | torch (SDPA) ms | torch / cyformer |",
             "|--:|--:|--:|--:|--:|"]
    window_lines = [f"Attention kernel alone at {longest} positions (4 heads x 64): window {args.window} vs full", "",
                    "| threads | full ms | window ms | full / window |", "|--:|--:|--:|--:|"]
    with tempfile.TemporaryDirectory() as tmp:
        log(f"building the seeded Marian model (positions up to {longest}) in {tmp}")
        build_marian(tmp, max_len=max(longest, 512))
        for nt in args.threads:
            workers = {e: Worker(e, tmp, nt) for e in ("cyformer", "torch")}
            try:
                probe = min(args.lengths)
                ours = np.array(workers["cyformer"].ask(op="output", length=probe)["output"])
                theirs = np.array(workers["torch"].ask(op="output", length=probe)["output"])
                err = float(np.abs(ours - theirs).max())
                log(f"[{nt} thread(s)] encoder outputs agree to {err:.1e} at {probe} positions")
                if err > 1e-3:
                    raise SystemExit(f"the engines disagree ({err:.1e}): not timing different models")
                for length in args.lengths:
                    req = {e: {"engine": e, "ask": {"op": "encode", "length": length}} for e in workers}
                    med = interleaved(workers, req, args.repeat)
                    cy, th = med["cyformer"], med["torch"]
                    log(f"  {length}: cyformer {cy * 1e3:.1f} ms, torch {th * 1e3:.1f} ms, ratio {th / cy:.2f}")
                    lines.append(f"| {nt} | {length} | {cy * 1e3:.1f} | {th * 1e3:.1f} | {th / cy:.2f} |")
                req = {name: {"engine": "cyformer", "ask": {"op": "attention", "length": longest, "window": w}}
                       for name, w in (("full", -1), ("window", args.window))}
                med = interleaved(workers, req, args.repeat)
                log(f"  attention at {longest}: full {med['full'] * 1e3:.1f} ms, window {args.window} "
                    f"{med['window'] * 1e3:.1f} ms, {med['full'] / med['window']:.1f}x")
                window_lines.append(f"| {nt} | {med['full'] * 1e3:.1f} | {med['window'] * 1e3:.2f} | "
                                    f"{med['full'] / med['window']:.1f} |")
            finally:
                for w in workers.values():
                    w.close()
    import torch
    versions = f"cyformer {cyformer.__version__}, torch {torch.__version__}"
    report = "\n".join(lines + [""] + window_lines + ["", versions])
    print(report)
    if args.out:
        from cyformer.io import atomic_write_bytes
        atomic_write_bytes(args.out, report.encode() + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
