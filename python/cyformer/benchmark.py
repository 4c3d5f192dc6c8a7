"""Timing of cyformer and its peers on seeded models, as used by ``cyformer bench`` and bench/.

Each engine runs in its own process (``python -m cyformer.benchmark ENGINE ...`` prints
one JSON line), so thread pools and OpenMP runtimes of different libraries never share
a process. Figures are medians of repeated calls after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

# bench/ forces a GEMM path through these; they live with the engine so tests need not import this module.
from ._engine.linear_paths import LINEAR_PATHS, linear_path  # noqa: F401

SIZES: Dict[str, Dict[str, int]] = {
    "small": dict(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3, n_decoder_layers=3),
    "base": dict(d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6),
}
VOCAB = 32000


def bench_config(size: str, vocab: int = VOCAB, activation: str = "relu"):
    from .config import TransformerConfig

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    return TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, max_len=512,
                             activation=activation, dropout=0.0, **SIZES[size])


def encoder_flops(size: str, batch: int, src_len: int) -> float:
    """Multiply-adds x 2 of the encoder stack (projections, FFN, QK^T and PV)."""
    s = SIZES[size]
    d, f, n = s["d_model"], s["d_ff"], batch * src_len
    per_layer = 2 * n * d * (3 * d + d + 2 * f) + 4 * batch * src_len * src_len * d
    return float(per_layer * s["n_encoder_layers"])


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 2) -> List[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def source_batch(batch: int, src_len: int, vocab: int = VOCAB, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(batch, src_len))


def run_cyformer_encoder(size: str, batch: int, src_len: int, threads: int, repeat: int,
                         compute_type: str = "float32") -> Dict:
    import cyformer

    cyformer.set_num_threads(threads)
    model = cyformer.Transformer(bench_config(size), seed=0)
    model.set_compute_type(compute_type)
    src = source_batch(batch, src_len)
    times = time_calls(lambda: model.encode(src), repeat)
    return {"engine": "cyformer", "times": times}


def run_torch_encoder(size: str, batch: int, src_len: int, threads: int, repeat: int) -> Dict:
    """The same post-LN encoder in PyTorch eager (nn.TransformerEncoder, inference mode)."""
    import math

    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = SIZES[size]
    d = s["d_model"]
    layer = nn.TransformerEncoderLayer(d, s["n_heads"], s["d_ff"], dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, s["n_encoder_layers"], enable_nested_tensor=False).eval()
    embed = nn.Embedding(VOCAB, d)
    from ._engine.embedding import sinusoidal_table
    pe = torch.from_numpy(sinusoidal_table(512, d))
    src = torch.from_numpy(source_batch(batch, src_len))

    def call():
        with torch.inference_mode():
            x = embed(src) * math.sqrt(d) + pe[:src_len]
            return encoder(x)

    times = time_calls(call, repeat)
    return {"engine": "torch", "version": torch.__version__, "times": times}


def sgemm_rate(threads: int, m: int = 1024, k: int = 512, n: int = 2048, repeat: int = 10) -> float:
    """GFLOP/s of cyformer's linear kernel on one [m,k]x[k,n] GEMM (the machine's SGEMM rate)."""
    from ._engine.linear import linear_forward
    from .threads import blas_single_threaded

    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    with blas_single_threaded():
        times = time_calls(lambda: linear_forward(x, w, None, out, n_threads=threads), repeat)
    return 2.0 * m * n * k / float(np.median(times)) / 1e9


def blas_description() -> str:
    """SciPy's OpenBLAS as threadpoolctl sees it, with OPENBLAS_CORETYPE when set."""
    from .sysinfo import blas_description as describe

    return describe()


def run_engine(engine: str, size: str, batch: int, src_len: int, threads: int, repeat: int,
               env: Optional[Dict[str, str]] = None, timeout: float = 900,
               compute_type: str = "float32") -> Optional[Dict]:
    """Run one engine in a fresh process; None when it is not installed. ``compute_type``:
    cyformer's (torch runs float32)."""
    ct = ["--compute-type", compute_type] if engine == "cyformer" else []
    return _run_child([engine, "--size", size, "--batch", str(batch), "--src-len", str(src_len),
                       "--threads", str(threads), "--repeat", str(repeat)] + ct, env, timeout)


def _run_child(args: List[str], env: Optional[Dict[str, str]], timeout: float) -> Optional[Dict]:
    """``python -m cyformer.benchmark ARGS`` in a fresh process: its JSON line, or None when the
    engine's package is not installed."""
    cmd = [sys.executable, "-m", "cyformer.benchmark"] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        if "ModuleNotFoundError" in proc.stderr:
            return None
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- one training step ---------------------------------------------------------------------------
TRAIN_VOCAB = 8000
TRAIN_DROPOUT = 0.1


def train_flops(size: str, batch: int, src_len: int, tgt_len: int, vocab: int = TRAIN_VOCAB) -> float:
    """Multiply-adds x 2 of one step's GEMMs: forward, and backward at twice the forward."""
    s = SIZES[size]
    d, f = s["d_model"], s["d_ff"]
    ns, nt = batch * src_len, batch * tgt_len
    enc = s["n_encoder_layers"] * (2 * ns * d * (4 * d + 2 * f) + 4 * batch * src_len * src_len * d)
    dec = s["n_decoder_layers"] * (2 * nt * d * (6 * d + 2 * f) + 2 * ns * d * 2 * d
                                   + 4 * batch * tgt_len * (tgt_len + src_len) * d)
    return 3.0 * (enc + dec + 2 * nt * d * vocab)


def train_batch(batch: int, src_len: int, tgt_len: int, vocab: int = TRAIN_VOCAB, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(4, vocab, size=(batch, src_len)), rng.integers(4, vocab, size=(batch, tgt_len))


def run_cyformer_train(size: str, batch: int, src_len: int, tgt_len: int, threads: int, repeat: int) -> Dict:
    """Trainer.step (forward, backward, Adam) on a fixed batch of full-length sequences."""
    import cyformer
    from .training import Trainer

    cyformer.set_num_threads(threads)
    config = bench_config(size, vocab=TRAIN_VOCAB)
    config.dropout = config.attention_dropout = config.activation_dropout = TRAIN_DROPOUT
    model = cyformer.Transformer(config, seed=0)
    trainer = Trainer(model, schedule="constant", lr=1e-4, label_smoothing=0.1)
    src, tgt = train_batch(batch, src_len, tgt_len)
    tgt[:, -1] = config.eos_id
    times = time_calls(lambda: trainer.step(src, tgt), repeat)
    return {"engine": "cyformer", "times": times}


def run_torch_train(size: str, batch: int, src_len: int, tgt_len: int, threads: int, repeat: int) -> Dict:
    """The same model and step in PyTorch eager: nn.Transformer, tied output layer,
    label-smoothed cross-entropy, Adam (betas 0.9/0.98, eps 1e-9), dropout 0.1."""
    import math

    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = SIZES[size]
    d = s["d_model"]
    model = nn.Transformer(d, s["n_heads"], s["n_encoder_layers"], s["n_decoder_layers"], s["d_ff"],
                           dropout=TRAIN_DROPOUT, batch_first=True)
    src_embed, tgt_embed = nn.Embedding(TRAIN_VOCAB, d), nn.Embedding(TRAIN_VOCAB, d)
    drop = nn.Dropout(TRAIN_DROPOUT)
    from ._engine.embedding import sinusoidal_table
    pe = torch.from_numpy(sinusoidal_table(512, d))
    params = list(model.parameters()) + list(src_embed.parameters()) + list(tgt_embed.parameters())
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    src_np, tgt_np = train_batch(batch, src_len, tgt_len)
    src, tgt = torch.from_numpy(src_np), torch.from_numpy(tgt_np)
    tgt_in = torch.cat([torch.ones(batch, 1, dtype=torch.long), tgt[:, :-1]], dim=1)
    causal = nn.Transformer.generate_square_subsequent_mask(tgt_len)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()

    def step():
        x = drop(src_embed(src) * math.sqrt(d) + pe[:src_len])
        y = drop(tgt_embed(tgt_in) * math.sqrt(d) + pe[:tgt_len])
        h = model(x, y, tgt_mask=causal, tgt_is_causal=True)
        logits = h @ tgt_embed.weight.t()   # output projection tied to the target embedding
        loss = loss_fn(logits.reshape(-1, TRAIN_VOCAB), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = time_calls(step, repeat)
    return {"engine": "torch", "version": torch.__version__, "times": times}



def run_cyformer_decode(size: str, batch: int, src_len: int, gen_len: int, beam: int, threads: int,
                        repeat: int, compute_type: str = "float32") -> Dict:
    """generate() of exactly gen_len tokens (min_length = max_length, forced EOS) per source."""
    import cyformer

    cyformer.set_num_threads(threads)
    config = bench_config(size)
    config.forced_eos = True
    model = cyformer.Transformer(config, seed=0)
    model.set_compute_type(compute_type)
    src = source_batch(batch, src_len)
    times = time_calls(lambda: model.generate(src, beam_size=beam, max_length=gen_len, min_length=gen_len,
                                              return_scores=False), repeat, warmup=1)
    return {"engine": "cyformer", "times": times}


def run_decode_engine(size: str, batch: int, src_len: int, gen_len: int, beam: int, threads: int, repeat: int,
                      env: Optional[Dict[str, str]] = None, timeout: float = 1800,
                      compute_type: str = "float32") -> Dict:
    return _run_child(["cyformer", "--task", "decode", "--size", size, "--batch", str(batch), "--src-len",
                       str(src_len), "--tgt-len", str(gen_len), "--beam", str(beam), "--threads", str(threads),
                       "--repeat", str(repeat), "--compute-type", compute_type], env, timeout)

_TRAIN_RUNNERS = {"cyformer": run_cyformer_train, "torch": run_torch_train}


def run_train_engine(engine: str, size: str, batch: int, src_len: int, tgt_len: int, threads: int,
                     repeat: int, env: Optional[Dict[str, str]] = None, timeout: float = 1800) -> Optional[Dict]:
    """One engine's training step in a fresh process; None when it is not installed."""
    return _run_child([engine, "--task", "train", "--size", size, "--batch", str(batch), "--src-len", str(src_len),
                       "--tgt-len", str(tgt_len), "--threads", str(threads), "--repeat", str(repeat)], env, timeout)


_RUNNERS = {"cyformer": run_cyformer_encoder, "torch": run_torch_encoder}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cyformer.benchmark")
    p.add_argument("engine", choices=sorted(_RUNNERS) + ["sgemm"])
    p.add_argument("--task", default="encode", choices=["encode", "train", "decode"])
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--size", default="base", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--src-len", type=int, default=64)
    p.add_argument("--tgt-len", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--compute-type", default="float32", choices=("float32", "int8", "bfloat16", "auto"),
                   help="cyformer's compute type (encode, decode)")
    a = p.parse_args(argv)
    if a.engine == "sgemm":
        result = {"engine": "sgemm", "gflops": sgemm_rate(a.threads), "blas": blas_description()}
    elif a.task == "decode":
        if a.engine != "cyformer":
            p.error("--task decode runs cyformer only (bench/decode_compare.py compares engines)")
        result = run_cyformer_decode(a.size, a.batch, a.src_len, a.tgt_len, a.beam, a.threads, a.repeat,
                                     a.compute_type)
        result["median_ms"] = float(np.median(result["times"])) * 1e3
        result["tokens_per_s"] = a.batch * a.tgt_len / (result["median_ms"] / 1e3)
    elif a.task == "train":
        result = _TRAIN_RUNNERS[a.engine](a.size, a.batch, a.src_len, a.tgt_len, a.threads, a.repeat)
        result["median_ms"] = float(np.median(result["times"])) * 1e3
        work = train_flops(a.size, a.batch, a.src_len, a.tgt_len)
        result["gflops"] = work / (result["median_ms"] / 1e3) / 1e9
        result["tgt_len"] = a.tgt_len
    else:
        kw = {"compute_type": a.compute_type} if a.engine == "cyformer" else {}
        result = _RUNNERS[a.engine](a.size, a.batch, a.src_len, a.threads, a.repeat, **kw)
        result["median_ms"] = float(np.median(result["times"])) * 1e3
        result["gflops"] = encoder_flops(a.size, a.batch, a.src_len) / (result["median_ms"] / 1e3) / 1e9
    result.update(size=a.size, batch=a.batch, src_len=a.src_len, threads=a.threads, task=a.task,
                  compute_type=a.compute_type)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
