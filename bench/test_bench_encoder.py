"""pytest-benchmark timings of the encoder forward pass: cyformer vs PyTorch eager.

Run with ``pytest bench/ --benchmark-only``. Each (size, threads) pair is one benchmark
group, so cyformer and torch appear side by side. ``extra_info`` records the work per
call (GFLOP), the median rate (GFLOP/s, total and per thread) and the BLAS in use.

Both engines run in this one process, so two OpenMP runtimes (cyformer's libgomp and
torch's) coexist; all cyformer benchmarks run before torch is first imported, but the
figures are still indicative only. ``python bench/compare.py`` runs every engine in its
own process and is the authoritative comparison. No timing is asserted here.
"""
from __future__ import annotations

import math
import re

import pytest

import cyformer
from cyformer.benchmark import (SIZES, VOCAB, bench_config, blas_description, encoder_flops,
                                source_batch)

BATCH, SRC_LEN = 16, 64
SIZE_PARAMS = ["small", "base"]
THREAD_PARAMS = [1, 2]

# ids read "small-1t"; every engine runs small 1t, small 2t, base 1t, base 2t in that order
per_thread_count = pytest.mark.parametrize("threads", THREAD_PARAMS, ids=lambda n: f"{n}t")
per_size = pytest.mark.parametrize("size", SIZE_PARAMS)


def _record(benchmark, engine: str, size: str, threads: int, blas: str, **extra) -> None:
    gflop = encoder_flops(size, BATCH, SRC_LEN) / 1e9
    benchmark.extra_info.update(engine=engine, size=size, threads=threads, batch=BATCH,
                                src_len=SRC_LEN, gflop_per_call=gflop, blas=blas, **extra)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None and stats.stats.median > 0:
        rate = gflop / stats.stats.median
        benchmark.extra_info.update(gflops=rate, gflops_per_core=rate / threads)


# -- cyformer -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cyformer_models():
    cache = {}

    def get(size: str):
        if size not in cache:
            cache.clear()  # keep at most one model alive (the base one is large)
            cache[size] = cyformer.Transformer(bench_config(size), seed=0)
        return cache[size]
    return get


@per_thread_count
@per_size
def test_encoder_cyformer(benchmark, cyformer_models, size, threads):
    model = cyformer_models(size)
    src = source_batch(BATCH, SRC_LEN)
    previous = cyformer.get_num_threads()
    cyformer.set_num_threads(threads)
    try:
        model.encode(src)  # warm-up: workspace allocation, first-touch of the weights
        benchmark.group = f"encoder {size} {threads}t"
        out = benchmark(model.encode, src)
    finally:
        cyformer.set_num_threads(previous)
    assert out.shape == (BATCH, SRC_LEN, SIZES[size]["d_model"])
    _record(benchmark, "cyformer", size, threads, blas_description())


# -- PyTorch eager (the same post-LN encoder as cyformer.benchmark.run_torch_encoder) -------------

@pytest.fixture(scope="module")
def torch_models():
    torch = pytest.importorskip("torch")
    from torch import nn

    from cyformer._engine.embedding import sinusoidal_table

    cache = {}

    def get(size: str):
        if size not in cache:
            cache.clear()
            torch.manual_seed(0)
            s = SIZES[size]
            d = s["d_model"]
            layer = nn.TransformerEncoderLayer(d, s["n_heads"], s["d_ff"], dropout=0.0,
                                               batch_first=True)
            encoder = nn.TransformerEncoder(layer, s["n_encoder_layers"],
                                            enable_nested_tensor=False).eval()
            embed = nn.Embedding(VOCAB, d)
            pe = torch.from_numpy(sinusoidal_table(512, d))
            scale = math.sqrt(d)

            def call(src):
                with torch.inference_mode():
                    x = embed(src) * scale + pe[:src.shape[1]]
                    return encoder(x)
            cache[size] = call
        return cache[size]
    return torch, get


def _torch_blas(torch) -> str:
    found = re.search(r"BLAS_INFO=([\w.-]+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


@per_thread_count
@per_size
def test_encoder_torch(benchmark, torch_models, size, threads):
    torch, get = torch_models
    call = get(size)
    src = torch.from_numpy(source_batch(BATCH, SRC_LEN))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        call(src)  # warm-up
        benchmark.group = f"encoder {size} {threads}t"
        out = benchmark(call, src)
    finally:
        torch.set_num_threads(previous)
    assert tuple(out.shape) == (BATCH, SRC_LEN, SIZES[size]["d_model"])
    # blas_description() is SciPy's OpenBLAS (what cyformer uses); torch multiplies with its own.
    _record(benchmark, "torch", size, threads, blas_description(), torch_version=torch.__version__,
            torch_blas=_torch_blas(torch))
