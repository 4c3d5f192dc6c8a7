"""pytest-benchmark timings of one training step and of decoding (cyformer only).

Run with ``pytest bench/ --benchmark-only``. The comparisons with PyTorch and CTranslate2,
each engine in its own process, are ``python bench/compare.py --task train`` and
``python bench/decode_compare.py``; their figures are in bench/RESULTS.md. No timing is
asserted here.
"""
from __future__ import annotations

import numpy as np
import pytest

import cyformer
from cyformer.benchmark import (LINEAR_PATHS, TRAIN_VOCAB, bench_config, blas_description, linear_path,
                                source_batch, train_batch, train_flops)
from cyformer.training import Trainer

per_thread_count = pytest.mark.parametrize("threads", [1, 2], ids=lambda n: f"{n}t")


@pytest.fixture
def threads_set():
    previous = cyformer.get_num_threads()
    yield cyformer.set_num_threads
    cyformer.set_num_threads(previous)


@per_thread_count
def test_train_step_small(benchmark, threads_set, threads):
    """Forward, backward and Adam of the small model on 32 x 32 source x 32 target tokens."""
    threads_set(threads)
    config = bench_config("small", vocab=TRAIN_VOCAB)
    config.dropout = config.attention_dropout = config.activation_dropout = 0.1
    trainer = Trainer(cyformer.Transformer(config, seed=0), schedule="constant", lr=1e-4)
    src, tgt = train_batch(32, 32, 32)
    trainer.step(src, tgt)  # warm-up: workspaces
    benchmark.group = f"train step small {threads}t"
    loss = benchmark(trainer.step, src, tgt)
    assert np.isfinite(loss)
    gflop = train_flops("small", 32, 32, 32) / 1e9
    benchmark.extra_info.update(gflop_per_call=gflop, blas=blas_description(), threads=threads)


@pytest.mark.parametrize("batch,beam", [(1, 1), (16, 1), (16, 4)], ids=["b1-greedy", "b16-greedy", "b16-beam4"])
@per_thread_count
def test_decode_small(benchmark, threads_set, threads, batch, beam):
    """64 generated tokens per source (min_length = max_length) from 32-token sources."""
    threads_set(threads)
    config = bench_config("small")
    config.forced_eos = True
    model = cyformer.Transformer(config, seed=0)
    src = source_batch(batch, 32)
    model.generate(src, beam_size=beam, max_length=8)  # warm-up
    benchmark.group = f"decode small b{batch} beam{beam} {threads}t"
    out = benchmark(model.generate, src, beam_size=beam, max_length=64, min_length=64, return_scores=False)
    assert all(len(r.sequences[0]) == 64 for r in out)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        benchmark.extra_info.update(tokens_per_s=batch * 64 / stats.stats.median)


@pytest.mark.parametrize("rows", [1, 16, 64])
@pytest.mark.parametrize("path", LINEAR_PATHS)
def test_decoding_gemm(benchmark, rows, path):
    """One 512 -> 2048 projection of a decoding step, forced onto each kernel (weights in cache;
    ``python bench/gemm_paths.py`` measures them streamed from memory)."""
    from cyformer import threads
    from cyformer._engine import linear

    if path == "panel" and not linear.panel_kernel_available():
        pytest.skip("no AVX2/FMA: the panel kernel is not used on this CPU")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 512)).astype(np.float32)
    w = rng.standard_normal((2048, 512)).astype(np.float32)
    out = np.empty((rows, 2048), np.float32)
    benchmark.group = f"decoding GEMM {rows} x 512 -> 2048, 1 thread"
    with threads.blas_single_threaded(), linear_path(path):
        benchmark(linear.linear_forward, x, w, None, out)
    np.testing.assert_allclose(out, x @ w.T, rtol=1e-3, atol=1e-3)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        benchmark.extra_info.update(gflops=2 * rows * 512 * 2048 / stats.stats.median / 1e9)
