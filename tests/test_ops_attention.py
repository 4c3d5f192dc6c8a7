"""Compiled kernels against float64 NumPy references and against PyTorch.

Every float32 kernel result is compared with a float64 reference written here
(``RTOL``/``ATOL``), with PyTorch's own float32 implementation (``TORCH_RTOL``/
``TORCH_ATOL``), and, for the multi-threaded paths, with its own single-threaded
result (``THREAD_RTOL``/``THREAD_ATOL``). Bad inputs must raise ValueError/TypeError.
"""
import inspect
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from cyformer._engine import attention, embedding, ffn, linear, norm, search, softmax
from cyformer.benchmark import LINEAR_PATHS, linear_path

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

# float32 kernel vs float64 NumPy reference: |got - want| <= ATOL + RTOL * |want|.
RTOL = 1e-5
ATOL = 1e-5
# float32 kernel vs float32 PyTorch.
TORCH_RTOL = 0.0
TORCH_ATOL = 1e-5
# n_threads=2 (or 3) vs n_threads=1.
THREAD_RTOL = 1e-6
THREAD_ATOL = 1e-6
# sinusoidal_table (computed in float64, rounded to float32) vs the formula.
SIN_ATOL = 1e-6

requires_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def make_rng(*key):
    """A NumPy generator seeded from the test's parameters (stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def i32(*values):
    return np.array(values, dtype=np.int32)


def assert_close(got, want, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


class _one_blas_thread:
    """BLAS at one thread while OpenMP threads call it, as the engine expects."""

    def __enter__(self):
        self._ctx = threadpool_limits(limits=1, user_api="blas") if threadpool_limits else None
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


# --------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------

def ref_linear(x, w, b, out0, accumulate):
    want = x.astype(np.float64) @ w.astype(np.float64).T
    if b is not None:
        want = want + b
    if accumulate:
        want = want + out0
    return want


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (17, 33, 65), (64, 10, 3),
                                   (5, 129, 31), (2, 3, 0), (16, 37, 70), (7, 4, 300)])
@pytest.mark.parametrize("use_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "acc"])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_linear_forward_matches_numpy(m, n, k, use_bias, accumulate, strided):
    rng = make_rng("linear", m, n, k, use_bias, accumulate, strided)
    w = f32(rng.standard_normal((n, k)) / math.sqrt(max(k, 1)))
    b = f32(rng.standard_normal(n)) if use_bias else None
    if strided:
        # x and out are column slices of wider (fused) buffers: row stride != width.
        xbuf = f32(rng.standard_normal((m, k + 5)))
        x = xbuf[:, 2:2 + k]
        obuf = f32(rng.standard_normal((m, n + 4)))
        out = obuf[:, 1:1 + n]
    else:
        x = f32(rng.standard_normal((m, k)))
        obuf = f32(rng.standard_normal((m, n)))
        out = obuf
    before = obuf.copy()
    want = ref_linear(x, w, b, out.copy(), accumulate)
    linear.linear_forward(x, w, b, out, accumulate=accumulate)
    assert_close(out, want)
    if strided:  # columns outside the view are untouched
        np.testing.assert_array_equal(obuf[:, :1], before[:, :1])
        np.testing.assert_array_equal(obuf[:, 1 + n:], before[:, 1 + n:])


_LINEAR_PATHS = [p for p in LINEAR_PATHS if p != "panel" or linear.panel_kernel_available()]


@pytest.fixture(params=_LINEAR_PATHS)
def forced_path(request):
    with linear_path(request.param):
        yield request.param


@pytest.mark.parametrize("m,n,k", [(1, 13, 40), (2, 6, 8), (5, 7, 3), (6, 12, 256), (8, 5, 17),
                                   (9, 31, 64), (16, 40, 512), (17, 3, 33), (24, 25, 9),
                                   (25, 13, 700), (31, 8, 16), (40, 100, 130), (47, 11, 40),
                                   (64, 7, 1), (12, 7, 0)])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_linear_paths_match_numpy(forced_path, m, n, k, strided):
    # Every kernel behind linear_forward over panel tails (M not a multiple of 8 or 16),
    # short last blocks of weight rows (N not a multiple of 6) and the prefetch (K <= 512).
    rng = make_rng("linear-path", m, n, k, strided)
    w = f32(rng.standard_normal((n, k)) / math.sqrt(k))
    b = f32(rng.standard_normal(n))
    xbuf = f32(rng.standard_normal((m, k + 3)))
    x = xbuf[:, 3:] if strided else np.ascontiguousarray(xbuf[:, :k])
    obuf = f32(rng.standard_normal((m, n + 2)))
    out = obuf[:, 1:1 + n] if strided else np.ascontiguousarray(obuf[:, :n])
    for accumulate in (False, True):
        out0 = out.copy()
        linear.linear_forward(x, w, b, out, accumulate=accumulate)
        assert_close(out, ref_linear(x, w, b, out0, accumulate))
    if strided:
        before = obuf.copy()
        linear.linear_forward(x, w, None, out)
        np.testing.assert_array_equal(obuf[:, 0], before[:, 0])
        np.testing.assert_array_equal(obuf[:, 1 + n:], before[:, 1 + n:])


@pytest.mark.parametrize("path", [p for p in _LINEAR_PATHS if p != "BLAS"])
@pytest.mark.parametrize("m", [24, 150])
def test_linear_panel_threads_bitwise(path, m):
    # The panel and skinny kernels split columns (or, from 64 rows per thread, the panel
    # kernel splits rows) between threads; each output keeps its summation order, so 1, 2
    # and 3 threads give the same bits, with bias, accumulation and a row-strided out.
    rng = make_rng("linear-panel-threads", m)
    x = f32(rng.standard_normal((m, 200)))
    w = f32(rng.standard_normal((3001, 200)) / math.sqrt(200))
    b = f32(rng.standard_normal(3001))
    obuf = f32(rng.standard_normal((m, 3005)))
    out0 = obuf[:, 2:3003].copy()
    out = {}
    with _one_blas_thread(), linear_path(path):
        for nt in (1, 2, 3):
            buf = obuf.copy()
            linear.linear_forward(x, w, b, buf[:, 2:3003], accumulate=True, n_threads=nt)
            out[nt] = buf
    assert_close(out[1][:, 2:3003], ref_linear(x, w, b, out0, True))
    np.testing.assert_array_equal(out[2], out[1])
    np.testing.assert_array_equal(out[3], out[1])


@pytest.mark.parametrize("m", [1, 7, 8, 48, 49, 128, 129, 256, 257])
@pytest.mark.parametrize("k", [64, 1024])
def test_linear_default_dispatch_boundaries(m, k):
    # Row counts on each side of the dispatch thresholds (skinny, panel, BLAS; the panel's
    # row split on several threads; its pack-size limit at large K), with the defaults.
    rng = make_rng("linear-dispatch", m, k)
    x = f32(rng.standard_normal((m, k)))
    w = f32(rng.standard_normal((300, k)) / math.sqrt(k))
    b = f32(rng.standard_normal(300))
    want = ref_linear(x, w, b, None, False)
    got = {}
    with _one_blas_thread():
        for nt in (1, 2):
            got[nt] = np.empty((m, 300), np.float32)
            linear.linear_forward(x, w, b, got[nt], n_threads=nt)
            assert_close(got[nt], want)
    if m < 8 or (m <= 256 and m * k <= 256 * 512):
        # skinny or panel kernel for any thread count: the same bits
        np.testing.assert_array_equal(got[2], got[1])


def test_linear_from_many_python_threads():
    # Each OS thread packs x into its own scratch buffer, grown and reused as shapes change.
    from concurrent.futures import ThreadPoolExecutor
    rng = make_rng("linear-many-threads")
    w = f32(rng.standard_normal((257, 600)) / math.sqrt(600))
    shapes = [(m, k) for m in (16, 200, 9, 64) for k in (600, 37, 300)] * 3
    inputs = [f32(rng.standard_normal((m, k))) for m, k in shapes]

    def run(x):
        out = np.empty((x.shape[0], 257), np.float32)
        linear.linear_forward(x, w[:, :x.shape[1]].copy(), None, out)
        return out

    with _one_blas_thread(), ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, inputs))
    for x, out in zip(inputs, results):
        assert_close(out, ref_linear(x, w[:, :x.shape[1]], None, None, False))


def test_linear_rejects_reversed_or_overlapping_rows():
    w = f32(np.ones((3, 4)))
    out = np.empty((5, 3), np.float32)
    x = f32(np.arange(20).reshape(5, 4))
    for bad in (x[::-1], np.broadcast_to(x[0], (5, 4))):
        with pytest.raises(ValueError, match="reversed or overlap"):
            linear.linear_forward(bad, w, None, out)
    with pytest.raises(ValueError, match="reversed or overlap"):
        linear.linear_forward(x, w, None, np.empty((5, 3), np.float32)[::-1])


def test_linear_forward_zero_rows():
    w = f32(np.ones((3, 4)))
    x = np.zeros((0, 4), np.float32)
    out = np.zeros((0, 3), np.float32)
    linear.linear_forward(x, w, f32(np.ones(3)), out)  # no crash, nothing to do


@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.5, 0.75)])
def test_gemm_matches_numpy(trans_a, trans_b, alpha, beta):
    m, n, k = 7, 13, 9
    rng = make_rng("gemm", trans_a, trans_b, alpha, beta)
    a = f32(rng.standard_normal((k, m) if trans_a else (m, k)))
    b = f32(rng.standard_normal((n, k) if trans_b else (k, n)))
    c = f32(rng.standard_normal((m, n)))
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    want = alpha * (opa.astype(np.float64) @ opb.astype(np.float64)) + beta * c.astype(np.float64)
    linear.gemm(a, b, c, trans_a, trans_b, alpha, beta)
    assert_close(c, want)


@pytest.mark.parametrize("m,n,k", [
    (160, 48, 64),    # row split: M >= 4 * 16 * n_threads
    (300, 70, 33),    # row split, uneven chunks
    (4, 1001, 80),    # column split: few rows, many columns, N not a multiple of 64
    (1, 2500, 130),   # column split, single decoding row
    (100, 50, 60),    # column split with N < 64: the second thread gets nothing
])
@pytest.mark.parametrize("use_bias,accumulate", [(False, False), (True, False), (True, True)])
def test_linear_threads_agree(m, n, k, use_bias, accumulate):
    assert m * n * k >= 1 << 18  # large enough for the parallel path
    rng = make_rng("linear-threads", m, n, k, use_bias, accumulate)
    xbuf = f32(rng.standard_normal((m, k + 3)))
    x = xbuf[:, 3:]  # row-strided
    w = f32(rng.standard_normal((n, k)) / math.sqrt(k))
    b = f32(rng.standard_normal(n)) if use_bias else None
    out0 = f32(rng.standard_normal((m, n)))
    results = {}
    with _one_blas_thread():
        for nt in (1, 2, 3):
            out = out0.copy()
            linear.linear_forward(x, w, b, out, accumulate=accumulate, n_threads=nt)
            results[nt] = out
    assert_close(results[1], ref_linear(x, w, b, out0, accumulate))
    for nt in (2, 3):
        np.testing.assert_allclose(results[nt], results[1], rtol=THREAD_RTOL, atol=THREAD_ATOL)


# --------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------

# q: query lengths; k: key lengths (absent = self-attention over the same rows).
ATTN_SCENARIOS = {
    "self_lengths": dict(q=[5, 1, 13], H=3, dk=7),
    "self_causal": dict(q=[6, 17, 3], H=2, dk=5, causal=True),
    "self_window": dict(q=[9, 4, 12], H=2, dk=6, window=2),
    "self_causal_window": dict(q=[11, 7], H=4, dk=3, causal=True, window=3),
    "window0": dict(q=[5, 8], H=1, dk=9, window=0),
    "cross": dict(q=[4, 9, 1], k=[11, 3, 6], H=3, dk=5),
    "cross_causal_prefix": dict(q=[3, 5], k=[10, 8], H=2, dk=6, causal=True),
    "cross_causal_q_gt_k": dict(q=[6, 4], k=[3, 4], H=2, dk=4, causal=True),
    "decode_causal": dict(q=[1, 1, 1], k=[1, 7, 20], H=4, dk=6, causal=True),
    "decode_causal_window": dict(q=[1, 1], k=[9, 30], H=2, dk=5, causal=True, window=4),
    "cross_window": dict(q=[5, 2], k=[12, 9], H=2, dk=3, window=1),
    "long_full": dict(q=[70, 3], H=2, dk=5),
    "long_causal": dict(q=[45, 33], H=1, dk=12, causal=True),
    "long_cross_window": dict(q=[40], k=[75], H=2, dk=3, window=10),
    "mask_broadcast": dict(q=[7, 5, 9], H=2, dk=5, mask="bcast"),
    "mask_per_batch": dict(q=[4, 6], k=[8, 5], H=3, dk=4, mask="batch"),
    "mask_2d": dict(q=[5, 5], H=2, dk=3, mask="2d"),
    "mask_causal": dict(q=[10, 6], H=2, dk=5, causal=True, mask="batch"),
    "mask_window": dict(q=[9, 12], H=1, dk=6, window=2, mask="bcast"),
    "mask_oversize": dict(q=[3, 6], k=[7, 2], H=2, dk=5, mask="oversize"),
    "mask_uint8": dict(q=[6, 8], H=2, dk=5, mask="uint8"),
    "mask_long": dict(q=[70], H=1, dk=5, mask="batch"),
    "empty_sequences": dict(q=[0, 4, 3], k=[5, 0, 3], H=2, dk=5),
    "custom_scale": dict(q=[6, 3], H=3, dk=4, scale=0.3),
    "dk1": dict(q=[4, 7], H=5, dk=1),
    "single_head": dict(q=[9], H=1, dk=24, causal=True),
}


def _pack(lengths, gap):
    starts, pos = [], 0
    for length in lengths:
        starts.append(pos)
        pos += length + gap
    return np.array(starts, np.int32), pos


def make_attention_case(name, fused, seed_extra=()):
    """Packed q/k/v (gaps between sequences), NaN-filled out, bounds and optional mask."""
    sc = ATTN_SCENARIOS[name]
    rng = make_rng("attn", name, fused, *seed_extra)
    H, dk = sc["H"], sc["dk"]
    d = H * dk
    self_attn = "k" not in sc
    q_len = np.array(sc["q"], np.int32)
    k_len = np.array(sc.get("k", sc["q"]), np.int32)
    q_start, nq = _pack(q_len, 1)
    if self_attn:
        k_start, nk = q_start.copy(), nq
    else:
        k_start, nk = _pack(k_len, 2)
    if fused and self_attn:
        buf = f32(rng.standard_normal((nq, 3 * d)))
        q, k, v = buf[:, :d], buf[:, d:2 * d], buf[:, 2 * d:]
    elif fused:
        q = f32(rng.standard_normal((nq, d + 3)))[:, 2:2 + d]
        kv = f32(rng.standard_normal((nk, 2 * d)))
        k, v = kv[:, :d], kv[:, d:]
    else:
        q = f32(rng.standard_normal((nq, d)))
        k = f32(rng.standard_normal((nk, d)))
        v = f32(rng.standard_normal((nk, d)))
    q *= np.float32(1.5)  # peakier softmax (in place: fused views stay strided)
    obuf = np.full((nq, d + 3 if fused else d), np.nan, np.float32)
    out = obuf[:, 2:2 + d] if fused else obuf
    B = len(q_len)
    Tq, Tk = max(int(q_len.max()), 1), max(int(k_len.max()), 1)
    mask = None
    kind = sc.get("mask")
    if kind is not None:
        if kind == "bcast":
            mask = rng.random((1, Tq, Tk)) < 0.7
        elif kind in ("batch", "uint8"):
            mask = rng.random((B, Tq, Tk)) < 0.7
        elif kind == "2d":
            mask = rng.random((Tq, Tk)) < 0.7
        elif kind == "oversize":
            mask = rng.random((B, Tq + 3, Tk + 5)) < 0.7
        mask[..., 0, :] = False  # a fully masked query row
        if kind == "uint8":
            mask = mask.astype(np.uint8) * np.uint8(7)  # any nonzero value means "attend"
    return dict(q=q, k=k, v=v, out=out, obuf=obuf, q_start=q_start, q_len=q_len,
                k_start=k_start, k_len=k_len, H=H, dk=dk, d=d,
                scale=sc.get("scale", -1.0), causal=sc.get("causal", False),
                window=sc.get("window", -1), mask=mask, Tq=Tq, Tk=Tk)


def allowed(lq, lk, causal, window, mask, b):
    """[lq, lk] bool: which keys query i may attend (position i + lk - lq)."""
    pos = np.arange(lq)[:, None] + (lk - lq)
    j = np.arange(lk)[None, :]
    ok = np.ones((lq, lk), bool)
    if causal:
        ok &= j <= pos
    if window >= 0:
        ok &= np.abs(pos - j) <= window
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 2:
            m = m[None]
        ok &= m[0 if m.shape[0] == 1 else b, :lq, :lk] != 0
    return ok


def ref_attention(c, probs_shape):
    """float64 reference: (out rows [Nq, d] with NaN where no sequence writes, probs)."""
    q, k, v = (c[n].astype(np.float64) for n in ("q", "k", "v"))
    H, dk = c["H"], c["dk"]
    scale = c["scale"] if c["scale"] >= 0 else 1.0 / math.sqrt(dk)
    out = np.full(c["out"].shape, np.nan)
    probs = np.zeros(probs_shape)
    for b in range(len(c["q_len"])):
        qs, lq, ks, lk = (int(c[n][b]) for n in ("q_start", "q_len", "k_start", "k_len"))
        ok = allowed(lq, lk, c["causal"], c["window"], c["mask"], b)
        for h in range(H):
            cols = slice(h * dk, (h + 1) * dk)
            s = q[qs:qs + lq, cols] @ k[ks:ks + lk, cols].T * scale
            s = np.where(ok, s, -np.inf)
            p = np.zeros((lq, lk))
            live = ok.any(axis=1)
            if live.any():
                sl = s[live]
                e = np.exp(sl - sl.max(axis=1, keepdims=True))
                p[live] = e / e.sum(axis=1, keepdims=True)
            out[qs:qs + lq, cols] = p @ v[ks:ks + lk, cols]
            probs[b, h, :lq, :lk] = p
    return out, probs


def run_attention(c, probs=None, n_threads=1, out=None):
    attention.attention_forward(c["q"], c["k"], c["v"], c["out"] if out is None else out,
                                c["q_start"], c["q_len"], c["k_start"], c["k_len"], c["H"],
                                scale=c["scale"], causal=c["causal"], window=c["window"],
                                mask=c["mask"], probs=probs, n_threads=n_threads)


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused_strided"])
@pytest.mark.parametrize("name", list(ATTN_SCENARIOS))
def test_attention_matches_numpy(name, fused):
    c = make_attention_case(name, fused)
    B = len(c["q_len"])
    # probs may be larger than needed; the caller provides zeros.
    probs = np.zeros((B, c["H"], c["Tq"] + 1, c["Tk"] + 2), np.float32)
    want_out, want_probs = ref_attention(c, probs.shape)
    run_attention(c, probs=probs)
    # Rows of no sequence stay NaN (untouched); fully masked rows are zeros, not stale.
    assert_close(c["out"], want_out)
    assert_close(probs, want_probs)
    if fused:  # columns of the wider output buffer outside the view are untouched
        assert np.isnan(c["obuf"][:, :2]).all() and np.isnan(c["obuf"][:, 2 + c["d"]:]).all()
    # Asking for probs does not change the output.
    out2 = np.full(c["out"].shape, np.nan, np.float32)
    run_attention(c, out=out2)
    np.testing.assert_array_equal(out2, c["out"])


def test_attention_fully_masked_rows_are_zero():
    rng = make_rng("attn-masked")
    q = f32(rng.standard_normal((6, 8)))
    kv = f32(rng.standard_normal((4, 8)))
    out = np.full((6, 8), np.nan, np.float32)
    mask = np.zeros((1, 6, 4), bool)
    mask[0, 2:4, 1] = True
    probs = np.zeros((1, 2, 6, 4), np.float32)
    attention.attention_forward(q, kv, kv, out, i32(0), i32(6), i32(0), i32(4), 2,
                                mask=mask, probs=probs)
    for i in (0, 1, 4, 5):
        np.testing.assert_array_equal(out[i], 0.0)
        np.testing.assert_array_equal(probs[0, :, i], 0.0)
    # A row that sees exactly one key copies that key's value row.
    assert_close(out[2], kv[1])
    np.testing.assert_array_equal(probs[0, :, 2:4, 1], 1.0)
    # Causal with more queries than keys: queries at negative positions see nothing.
    out = np.full((6, 8), np.nan, np.float32)
    attention.attention_forward(q, kv, kv, out, i32(0), i32(6), i32(0), i32(4), 2, causal=True)
    np.testing.assert_array_equal(out[:2], 0.0)
    assert_close(out[2], kv[0])


@pytest.mark.parametrize("name", ["self_causal", "long_full", "mask_causal", "cross_window",
                                  "decode_causal"])
def test_attention_threads_agree(name):
    c = make_attention_case(name, True, seed_extra=("threads",))
    B = len(c["q_len"])
    results = []
    with _one_blas_thread():
        for nt in (1, 2, 3):
            out = np.full(c["out"].shape, np.nan, np.float32)
            probs = np.zeros((B, c["H"], c["Tq"], c["Tk"]), np.float32)
            run_attention(c, probs=probs, n_threads=nt, out=out)
            results.append((out, probs))
    for out, probs in results[1:]:
        np.testing.assert_allclose(out, results[0][0], rtol=THREAD_RTOL, atol=THREAD_ATOL)
        np.testing.assert_allclose(probs, results[0][1], rtol=THREAD_RTOL, atol=THREAD_ATOL)


@requires_torch
@pytest.mark.parametrize("name", list(ATTN_SCENARIOS))
def test_attention_matches_torch_sdpa(name):
    c = make_attention_case(name, False, seed_extra=("sdpa",))
    run_attention(c)
    H, dk = c["H"], c["dk"]
    scale = c["scale"] if c["scale"] >= 0 else None
    for b in range(len(c["q_len"])):
        qs, lq, ks, lk = (int(c[n][b]) for n in ("q_start", "q_len", "k_start", "k_len"))
        ok = allowed(lq, lk, c["causal"], c["window"], c["mask"], b)
        live = ok.any(axis=1)  # SDPA gives NaN for rows that see nothing
        if lq == 0 or not live.any():
            continue

        def heads(a, s, n):
            return torch.from_numpy(np.ascontiguousarray(a[s:s + n])).view(n, H, dk).transpose(0, 1)[None]

        want = F.scaled_dot_product_attention(
            heads(c["q"], qs, lq), heads(c["k"], ks, lk), heads(c["v"], ks, lk),
            attn_mask=torch.from_numpy(ok), scale=scale)
        want = want[0].transpose(0, 1).reshape(lq, H * dk).numpy()
        np.testing.assert_allclose(c["out"][qs:qs + lq][live], want[live],
                                   rtol=TORCH_RTOL, atol=TORCH_ATOL)


def _pad(packed, starts, lengths, T):
    outp = np.zeros((len(starts), T, packed.shape[1]), np.float32)
    for b, (s, n) in enumerate(zip(starts, lengths)):
        outp[b, :n] = packed[s:s + n]
    return outp


@requires_torch
@pytest.mark.parametrize("mode", ["self", "self_causal", "cross"])
def test_attention_matches_torch_multihead_attention(mode):
    E, H = 30, 5  # d_k = 6
    torch.manual_seed(zlib.crc32(mode.encode()))
    rng = make_rng("mha", mode)
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    with torch.no_grad():  # non-zero biases
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    w_in = mha.in_proj_weight.detach().numpy()
    b_in = mha.in_proj_bias.detach().numpy()
    w_out = mha.out_proj.weight.detach().numpy()
    b_out = mha.out_proj.bias.detach().numpy()
    q_len = i32(5, 9, 2)
    k_len = q_len if mode != "cross" else i32(7, 3, 11)
    q_start, nq = _pack(q_len, 2)
    k_start, nk = _pack(k_len, 1) if mode == "cross" else (q_start, nq)
    x = f32(rng.standard_normal((nq, E)))
    causal = mode == "self_causal"
    if mode == "cross":
        mem = f32(rng.standard_normal((nk, E)))
        qp = np.zeros((nq, E), np.float32)
        linear.linear_forward(x, w_in[:E], b_in[:E], qp)
        kv = np.zeros((nk, 2 * E), np.float32)  # fused K/V projection of the memory
        linear.linear_forward(mem, w_in[E:], b_in[E:], kv)
        qv, kk, vv = qp, kv[:, :E], kv[:, E:]
    else:
        mem = x
        qkv = np.zeros((nq, 3 * E), np.float32)  # fused QKV projection
        linear.linear_forward(x, w_in, b_in, qkv)
        qv, kk, vv = qkv[:, :E], qkv[:, E:2 * E], qkv[:, 2 * E:]
    ctx = np.zeros((nq, E), np.float32)
    Tq, Tk = int(q_len.max()), int(k_len.max())
    probs = np.zeros((3, H, Tq, Tk), np.float32)
    attention.attention_forward(qv, kk, vv, ctx, q_start, q_len, k_start, k_len, H,
                                causal=causal, probs=probs)
    y = np.zeros((nq, E), np.float32)
    linear.linear_forward(ctx, w_out, b_out, y)

    xq = torch.from_numpy(_pad(x, q_start, q_len, Tq))
    xk = torch.from_numpy(_pad(mem, k_start, k_len, Tk))
    pad = torch.from_numpy(np.arange(Tk)[None, :] >= k_len[:, None])  # True = ignore
    attn_mask = torch.triu(torch.ones(Tq, Tk, dtype=torch.bool), 1) if causal else None
    with torch.no_grad():
        want, want_w = mha(xq, xk, xk, key_padding_mask=pad, attn_mask=attn_mask,
                           need_weights=True, average_attn_weights=False)
    for b in range(3):
        qs, lq, lk = int(q_start[b]), int(q_len[b]), int(k_len[b])
        np.testing.assert_allclose(y[qs:qs + lq], want[b, :lq].numpy(),
                                   rtol=TORCH_RTOL, atol=TORCH_ATOL)
        np.testing.assert_allclose(probs[b, :, :lq, :lk], want_w[b, :, :lq, :lk].numpy(),
                                   rtol=TORCH_RTOL, atol=TORCH_ATOL)


# --------------------------------------------------------------------------------------
# layer norm
# --------------------------------------------------------------------------------------

def ref_layer_norm(xs, gamma, beta, eps):
    x = xs.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mean) * rstd * gamma + beta, mean[:, 0], rstd[:, 0]


@pytest.mark.parametrize("n,d,eps", [(1, 1, 1e-5), (3, 7, 1e-5), (17, 64, 1e-6),
                                     (5, 257, 1e-12), (4, 30, 0.1)])
@pytest.mark.parametrize("use_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "out_is_x"])
@pytest.mark.parametrize("stats", [False, True], ids=["nostats", "stats"])
def test_layer_norm_matches_numpy(n, d, eps, use_residual, in_place, stats):
    rng = make_rng("ln", n, d, eps, use_residual, in_place, stats)
    x = f32(rng.standard_normal((n, d)) * 2 + 0.5)
    r = f32(rng.standard_normal((n, d))) if use_residual else None
    gamma = f32(rng.standard_normal(d))
    beta = f32(rng.standard_normal(d))
    xs = x + r if use_residual else x.copy()  # float32 add, as the kernel does
    want, want_mean, want_rstd = ref_layer_norm(xs, gamma, beta, eps)
    out = x if in_place else np.full((n, d), np.nan, np.float32)
    mean = np.full(n, np.nan, np.float32) if stats else None
    rstd = np.full(n, np.nan, np.float32) if stats else None
    norm.layer_norm_forward(x, r, gamma, beta, out, eps, mean=mean, rstd=rstd)
    assert_close(out, want)
    if not in_place:
        np.testing.assert_array_equal(x, xs)  # x carries the residual stream on
    if stats:
        assert_close(mean, want_mean)
        assert_close(rstd, want_rstd)


def test_layer_norm_threads_agree():
    rng = make_rng("ln-threads")
    n, d = 257, 96
    x0 = f32(rng.standard_normal((n, d)))
    r = f32(rng.standard_normal((n, d)))
    gamma, beta = f32(rng.standard_normal(d)), f32(rng.standard_normal(d))
    results = []
    for nt in (1, 2, 3):
        x = x0.copy()
        out = np.zeros_like(x)
        mean, rstd = np.zeros(n, np.float32), np.zeros(n, np.float32)
        norm.layer_norm_forward(x, r, gamma, beta, out, 1e-5, mean, rstd, n_threads=nt)
        results.append((x, out, mean, rstd))
    for res in results[1:]:
        for got, ref in zip(res, results[0]):
            np.testing.assert_allclose(got, ref, rtol=THREAD_RTOL, atol=THREAD_ATOL)


@requires_torch
@pytest.mark.parametrize("n,d", [(6, 20), (3, 33)])
@pytest.mark.parametrize("use_residual", [False, True], ids=["plain", "residual"])
def test_layer_norm_matches_torch(n, d, use_residual):
    rng = make_rng("ln-torch", n, d, use_residual)
    x = f32(rng.standard_normal((n, d)))
    r = f32(rng.standard_normal((n, d))) if use_residual else None
    ln = torch.nn.LayerNorm(d, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(f32(rng.standard_normal(d))))
        ln.bias.copy_(torch.from_numpy(f32(rng.standard_normal(d))))
        tx = torch.from_numpy(x.copy())
        want = ln(tx + torch.from_numpy(r) if use_residual else tx).numpy()
    out = np.zeros_like(x)
    norm.layer_norm_forward(x, r, ln.weight.detach().numpy(), ln.bias.detach().numpy(), out, 1e-5)
    np.testing.assert_allclose(out, want, rtol=TORCH_RTOL, atol=TORCH_ATOL)


# --------------------------------------------------------------------------------------
# bias + activation
# --------------------------------------------------------------------------------------

def _erf(z):
    return np.vectorize(math.erf, otypes=[np.float64])(z)


REF_ACTS = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "gelu": lambda z: 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0))),
    "silu": lambda z: z / (1.0 + np.exp(-z)),
    "gelu_tanh": lambda z: 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                     * (z + 0.044715 * z ** 3))),
}
REF_ACTS["swish"] = REF_ACTS["silu"]
REF_ACTS["gelu_new"] = REF_ACTS["gelu_pytorch_tanh"] = REF_ACTS["gelu_tanh"]


def _act_input(rng, n, f):
    x = rng.standard_normal((n, f)) * 3
    x.flat[:6] = [0.0, -0.0, 20.0, -20.0, 1e-3, -90.0]  # zeros, saturation, tiny
    return f32(x)


@pytest.mark.parametrize("act", list(REF_ACTS))
@pytest.mark.parametrize("use_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_bias_act_matches_numpy(act, use_bias, strided):
    n, f = 7, 37
    rng = make_rng("act", act, use_bias, strided)
    x0 = _act_input(rng, n, f)
    b = f32(rng.standard_normal(f)) if use_bias else None
    if strided:
        buf = f32(rng.standard_normal((n, f + 4)))
        buf[:, 1:1 + f] = x0
        x = buf[:, 1:1 + f]
    else:
        buf = x0.copy()
        x = buf
    before = buf.copy()
    z = (x0 + b) if use_bias else x0  # float32 bias add, as the kernel does
    want = REF_ACTS[act](z.astype(np.float64))
    ffn.bias_act_forward(x, b, act)
    assert_close(x, want)
    if strided:
        np.testing.assert_array_equal(buf[:, :1], before[:, :1])
        np.testing.assert_array_equal(buf[:, 1 + f:], before[:, 1 + f:])


def test_bias_act_accepts_integer_codes():
    rng = make_rng("act-code")
    x = f32(rng.standard_normal((3, 9)))
    for code, name in [(0, "identity"), (1, "relu"), (2, "gelu"), (3, "silu"), (4, "gelu_tanh")]:
        a, b = x.copy(), x.copy()
        ffn.bias_act_forward(a, None, code)
        ffn.bias_act_forward(b, None, name)
        np.testing.assert_array_equal(a, b)


@requires_torch
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu"])
def test_bias_act_matches_torch(act):
    rng = make_rng("act-torch", act)
    x = _act_input(rng, 9, 41)
    b = f32(rng.standard_normal(41))
    t = torch.from_numpy(x) + torch.from_numpy(b)
    want = {"relu": torch.relu, "gelu": F.gelu, "silu": F.silu,
            "gelu_tanh": lambda z: F.gelu(z, approximate="tanh")}[act](t).numpy()
    ffn.bias_act_forward(x, b, act)
    np.testing.assert_allclose(x, want, rtol=TORCH_RTOL, atol=TORCH_ATOL)


# --------------------------------------------------------------------------------------
# top-k (beam search)
# --------------------------------------------------------------------------------------

def ref_topk(x, k):
    # stable sort of -x: the k largest, best first, equal values in index order
    idx = np.argsort(-x.astype(np.float64), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx


@pytest.mark.parametrize("rows,n,k", [(1, 1, 1), (3, 50, 8), (4, 1000, 10), (2, 17, 17), (5, 33, 1)])
def test_topk_matches_stable_sort(rows, n, k):
    rng = make_rng("topk", rows, n, k)
    x = f32(np.round(rng.standard_normal((rows, n)) * 3))  # rounded: many ties
    if n > 4:
        x[0, ::3] = -np.inf
    want_v, want_i = ref_topk(x, k)
    for nt in (1, 2):
        got_v, got_i = search.topk(x, k, nt)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_v, want_v)


def test_topk_all_masked_row_still_returns_indices():
    x = np.full((1, 6), -np.inf, np.float32)
    v, i = search.topk(x, 3)
    np.testing.assert_array_equal(i, [[0, 1, 2]])
    assert np.isneginf(v).all()


@pytest.mark.parametrize("k", [0, 7])
def test_topk_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        search.topk(np.zeros((2, 6), np.float32), k)


# --------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------

def ref_softmax(x, log):
    x = x.astype(np.float64)
    out = np.full(x.shape, -np.inf if log else 0.0)
    live = np.isfinite(x).any(axis=1)
    xl = x[live]
    z = xl - xl.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
    out[live] = z - lse if log else np.exp(z - lse)
    return out


def _softmax_input(rng, n, v):
    x = rng.standard_normal((n, v)) * 4
    if n >= 3 and v >= 3:
        x[1, ::2] = -np.inf  # partially masked row
        x[2] = -np.inf       # fully masked row
    return f32(x)


@pytest.mark.parametrize("n,v", [(1, 1), (3, 7), (8, 1000), (5, 33)])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_matches_numpy(n, v, log):
    rng = make_rng("softmax", n, v, log)
    x = _softmax_input(rng, n, v)
    want = ref_softmax(x, log)
    softmax.softmax_forward(x, log=log)
    assert_close(x, want)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_large_logits(log):
    # Logits around +-100: still accurate to ATOL + RTOL.
    rng = make_rng("softmax-large", log)
    x = f32(rng.standard_normal((6, 50)) * 3 + np.array([[100.0], [-100.0]] * 3))
    want = ref_softmax(x, log)
    softmax.softmax_forward(x, log=log)
    assert_close(x, want)


def test_log_softmax_offset_logits_precision():
    rng = make_rng("log-softmax-offset")
    x = f32(rng.standard_normal((8, 50)) * 3 + 1000.0)
    want = ref_softmax(x, True)
    softmax.softmax_forward(x, log=True)
    assert_close(x, want)


@requires_torch
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_matches_torch(log):
    rng = make_rng("softmax-torch", log)
    x = _softmax_input(rng, 6, 257)
    t = torch.from_numpy(x.copy())
    want = (torch.log_softmax(t, dim=1) if log else torch.softmax(t, dim=1)).numpy()
    softmax.softmax_forward(x, log=log)
    live = np.isfinite(want).any(axis=1)  # torch gives NaN for all -inf rows
    np.testing.assert_allclose(x[live], want[live], rtol=TORCH_RTOL, atol=TORCH_ATOL)
    assert live.sum() == 5
    np.testing.assert_array_equal(x[2], -np.inf if log else 0.0)


# --------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,vocab,d,n_pos", [(1, 1, 1, 1), (9, 13, 7, 12), (40, 50, 33, 64)])
@pytest.mark.parametrize("pos_kind", ["none", "learned", "sinusoidal"])
@pytest.mark.parametrize("scale", [1.0, "sqrt_d"])
def test_embedding_matches_numpy(n, vocab, d, n_pos, pos_kind, scale):
    rng = make_rng("emb", n, vocab, d, n_pos, pos_kind, scale)
    scale = math.sqrt(d) if scale == "sqrt_d" else scale
    table = f32(rng.standard_normal((vocab, d)))
    ids = rng.integers(0, vocab, n).astype(np.int32)
    ids[0] = vocab - 1
    positions = rng.integers(0, n_pos, n).astype(np.int32)
    positions[-1] = n_pos - 1
    pos_table = {"none": None, "learned": f32(rng.standard_normal((n_pos, d))),
                 "sinusoidal": embedding.sinusoidal_table(n_pos, d)}[pos_kind]
    want = table[ids].astype(np.float64) * np.float32(scale)
    if pos_table is not None:
        want = want + pos_table[positions]
    out = np.full((n, d), np.nan, np.float32)
    embedding.embedding_forward(ids, positions, table, pos_table, scale, out)
    assert_close(out, want)


def test_embedding_empty_batch():
    out = np.zeros((0, 4), np.float32)
    embedding.embedding_forward(np.zeros(0, np.int32), np.zeros(0, np.int32),
                                f32(np.ones((3, 4))), f32(np.ones((2, 4))), 2.0, out)


@pytest.mark.parametrize("n_pos,d", [(1, 1), (50, 16), (37, 9), (512, 64)])
def test_sinusoidal_table_interleaved_matches_paper(n_pos, d):
    pos = np.arange(n_pos)[:, None].astype(np.float64)
    want = np.zeros((n_pos, d))
    for c in range(d):
        i = c // 2  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
        angle = pos[:, 0] / 10000.0 ** (2.0 * i / d)
        want[:, c] = np.sin(angle) if c % 2 == 0 else np.cos(angle)
    got = embedding.sinusoidal_table(n_pos, d)
    assert got.dtype == np.float32 and got.shape == (n_pos, d)
    np.testing.assert_allclose(got, want, rtol=0, atol=SIN_ATOL)
    # "halves" is the same values, sines first then cosines.
    halves = embedding.sinusoidal_table(n_pos, d, layout="halves")
    half = (d + 1) // 2
    np.testing.assert_array_equal(halves[:, :half], got[:, 0::2])
    np.testing.assert_array_equal(halves[:, half:], got[:, 1::2])


def _marian_weight(n_pos, d):
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding
    except ImportError:
        pytest.skip(f"transformers {transformers.__version__} has no Marian model")
    emb = MarianSinusoidalPositionalEmbedding(n_pos, d)
    if hasattr(emb, "create_weight"):          # transformers >= 5
        weight = emb.create_weight()
    elif not inspect.signature(emb._init_weight).parameters:
        emb._init_weight()                     # instance method, called by _init_weights
        weight = emb.weight
    else:                                      # older: applied in __init__
        weight = emb.weight
    return weight.detach().numpy()


@pytest.mark.parametrize("n_pos,d", [(64, 16), (33, 9), (512, 512)])
def test_sinusoidal_table_halves_matches_marian(n_pos, d):
    want = _marian_weight(n_pos, d)
    got = embedding.sinusoidal_table(n_pos, d, layout="halves")
    np.testing.assert_allclose(got, want, rtol=0, atol=SIN_ATOL)


# --------------------------------------------------------------------------------------
# threads: the per-row kernels
# --------------------------------------------------------------------------------------

def test_row_kernels_threads_agree():
    rng = make_rng("rows-threads")
    x0 = f32(rng.standard_normal((301, 67)) * 3)
    b = f32(rng.standard_normal(67))
    ids = rng.integers(0, 50, 301).astype(np.int32)
    positions = rng.integers(0, 40, 301).astype(np.int32)
    table, pos_table = f32(rng.standard_normal((50, 67))), f32(rng.standard_normal((40, 67)))
    for nt in (2, 3):
        for act in ("gelu", "relu", "silu"):
            a, c = x0.copy(), x0.copy()
            ffn.bias_act_forward(a, b, act, n_threads=1)
            ffn.bias_act_forward(c, b, act, n_threads=nt)
            np.testing.assert_allclose(c, a, rtol=THREAD_RTOL, atol=THREAD_ATOL)
        for log in (False, True):
            a, c = x0.copy(), x0.copy()
            softmax.softmax_forward(a, log, n_threads=1)
            softmax.softmax_forward(c, log, n_threads=nt)
            np.testing.assert_allclose(c, a, rtol=THREAD_RTOL, atol=THREAD_ATOL)
        a, c = np.zeros_like(x0), np.zeros_like(x0)
        embedding.embedding_forward(ids, positions, table, pos_table, 2.0, a, n_threads=1)
        embedding.embedding_forward(ids, positions, table, pos_table, 2.0, c, n_threads=nt)
        np.testing.assert_allclose(c, a, rtol=THREAD_RTOL, atol=THREAD_ATOL)


# --------------------------------------------------------------------------------------
# bad input: ValueError / TypeError with a message, never a crash
# --------------------------------------------------------------------------------------

def _z(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def _attn(q=None, k=None, v=None, out=None, qs=(0, 5), ql=(5, 5), ks=(0, 5), kl=(5, 5),
          H=3, **kw):
    q = _z(10, 12) if q is None else q
    k = _z(10, 12) if k is None else k
    v = _z(10, 12) if v is None else v
    out = _z(q.shape[0], q.shape[1]) if out is None else out
    return lambda: attention.attention_forward(q, k, v, out, i32(*qs), i32(*ql), i32(*ks),
                                               i32(*kl), H, **kw)


def _emb(ids=(0, 1), positions=(0, 1), V=5, d=4, P=3, out=None, pos_table="default",
         table=None):
    ids_a = np.asarray(ids, np.int32) if not isinstance(ids, np.ndarray) else ids
    pos_a = np.asarray(positions, np.int32)
    table = _z(V, d) if table is None else table
    pt = _z(P, d) if isinstance(pos_table, str) else pos_table
    out = _z(len(ids_a), d) if out is None else out
    return lambda: embedding.embedding_forward(ids_a, pos_a, table, pt, 1.0, out)


def _lin(x=None, w=None, b=None, out=None, **kw):
    x = _z(4, 6) if x is None else x
    w = _z(5, 6) if w is None else w
    out = _z(4, 5) if out is None else out
    return lambda: linear.linear_forward(x, w, b, out, **kw)


def _ln(x=None, r=None, g=None, b=None, out=None, **kw):
    x = _z(4, 6) if x is None else x
    g = _z(6) if g is None else g
    b = _z(6) if b is None else b
    out = _z(4, 6) if out is None else out
    return lambda: norm.layer_norm_forward(x, r, g, b, out, 1e-5, **kw)


BAD_INPUTS = [
    # linear
    ("linear_weight_k", _lin(w=_z(5, 7)), ValueError, "weight is"),
    ("linear_out_shape", _lin(out=_z(4, 6)), ValueError, "out is"),
    ("linear_out_rows", _lin(out=_z(3, 5)), ValueError, "out is"),
    ("linear_bias_len", _lin(b=_z(4)), ValueError, "bias has"),
    ("linear_x_float64", _lin(x=_z(4, 6, dtype=np.float64)), ValueError, "dtype"),
    ("linear_w_float64", _lin(w=_z(5, 6, dtype=np.float64)), ValueError, "dtype"),
    ("linear_bias_float64", _lin(b=_z(5, dtype=np.float64)), ValueError, "dtype"),
    ("linear_w_not_c_contig", _lin(w=_z(6, 5).T), ValueError, "contiguous"),
    ("linear_x_cols_strided", _lin(x=_z(4, 12)[:, ::2]), ValueError, "contiguous"),
    ("linear_out_cols_strided", _lin(out=_z(4, 10)[:, ::2]), ValueError, "contiguous"),
    ("linear_x_list", _lin(x=[[0.0] * 6] * 4), TypeError, "bytes-like"),
    ("linear_x_1d", _lin(x=_z(6)), ValueError, "dimensions"),
    ("gemm_shapes", lambda: linear.gemm(_z(3, 4), _z(5, 6), _z(3, 6)), ValueError, "b does not"),
    ("gemm_rows", lambda: linear.gemm(_z(3, 4), _z(4, 6), _z(2, 6)), ValueError, "a does not"),
    # attention
    ("attn_d_not_divisible", _attn(H=5), ValueError, "not divisible"),
    ("attn_zero_heads", _attn(H=0), ValueError, "not divisible"),
    ("attn_k_columns", _attn(k=_z(10, 9)), ValueError, "same number of columns"),
    ("attn_v_rows", _attn(v=_z(9, 12)), ValueError, "same number of rows"),
    ("attn_out_rows", _attn(out=_z(9, 12)), ValueError, "as many rows"),
    ("attn_out_columns", _attn(out=_z(10, 6)), ValueError, "as many rows as q and 12 columns"),
    ("attn_bounds_count", _attn(ql=(5,)), ValueError, "one entry per sequence"),
    ("attn_negative_len", _attn(ql=(5, -1)), ValueError, "negative"),
    ("attn_negative_start", _attn(ks=(-1, 5)), ValueError, "negative"),
    ("attn_q_past_end", _attn(qs=(0, 8)), ValueError, "runs past the end"),
    ("attn_q_len_past_end", _attn(ql=(5, 6)), ValueError, "runs past the end"),
    ("attn_k_past_end", _attn(ks=(0, 6)), ValueError, "runs past the end"),
    ("attn_q_float64", _attn(q=_z(10, 12, dtype=np.float64)), ValueError, "dtype"),
    ("attn_out_float64", _attn(out=_z(10, 12, dtype=np.float64)), ValueError, "dtype"),
    ("attn_bounds_int64", lambda: attention.attention_forward(
        _z(4, 4), _z(4, 4), _z(4, 4), _z(4, 4), np.zeros(1, np.int64), i32(4), i32(0), i32(4),
        2), ValueError, "dtype"),
    ("attn_q_cols_strided", _attn(q=_z(10, 24)[:, ::2]), ValueError, "contiguous"),
    ("attn_mask_short_q", _attn(mask=np.ones((2, 4, 5), bool)), ValueError, "does not cover"),
    ("attn_mask_short_k", _attn(mask=np.ones((1, 5, 4), bool)), ValueError, "does not cover"),
    ("attn_mask_batch", _attn(mask=np.ones((3, 5, 5), bool)), ValueError, "does not cover"),
    ("attn_mask_ndim", _attn(mask=np.ones((1, 1, 5, 5), bool)), ValueError, "does not cover"),
    ("attn_probs_shape", _attn(probs=_z(2, 3, 4, 5)), ValueError, "probs must be"),
    ("attn_probs_heads", _attn(probs=_z(2, 2, 5, 5)), ValueError, "probs must be"),
    ("attn_probs_float64", _attn(probs=_z(2, 3, 5, 5, dtype=np.float64)), ValueError, "dtype"),
    # layer norm
    ("ln_gamma_len", _ln(g=_z(5)), ValueError, "gamma and beta"),
    ("ln_beta_len", _ln(b=_z(7)), ValueError, "gamma and beta"),
    ("ln_out_shape", _ln(out=_z(4, 5)), ValueError, "out must"),
    ("ln_residual_shape", _ln(r=_z(3, 6)), ValueError, "residual must"),
    ("ln_mean_without_rstd", _ln(mean=_z(4)), ValueError, "both mean and rstd"),
    ("ln_stats_len", _ln(mean=_z(3), rstd=_z(3)), ValueError, "entries"),
    ("ln_x_float64", _ln(x=_z(4, 6, dtype=np.float64)), ValueError, "dtype"),
    ("ln_x_not_contig", _ln(x=_z(4, 12)[:, ::2]), ValueError, "contiguous"),
    # bias + activation
    ("act_unknown", lambda: ffn.bias_act_forward(_z(2, 3), None, "tanhh"), ValueError,
     "unknown activation"),
    ("act_bad_code", lambda: ffn.bias_act_forward(_z(2, 3), None, 9), ValueError,
     "unknown activation code"),
    ("act_bias_len", lambda: ffn.bias_act_forward(_z(2, 3), _z(4), "relu"), ValueError,
     "bias has"),
    ("act_x_float64", lambda: ffn.bias_act_forward(_z(2, 3, dtype=np.float64), None, "relu"),
     ValueError, "dtype"),
    ("act_cols_strided", lambda: ffn.bias_act_forward(_z(2, 6)[:, ::2], None, "relu"),
     ValueError, "contiguous"),
    # embedding
    ("emb_id_too_large", _emb(ids=(0, 5)), ValueError, r"token id 5 .*outside \[0, 5\)"),
    ("emb_id_negative", _emb(ids=(-1, 1)), ValueError, "token id -1"),
    ("emb_id_no_pos_table", _emb(ids=(7,), positions=(0,), pos_table=None), ValueError,
     "token id 7"),
    ("emb_position_past_table", _emb(positions=(0, 3)), ValueError, r"position 3 .*\[0, 3\)"),
    ("emb_position_negative", _emb(positions=(-2, 0)), ValueError, "position -2"),
    ("emb_out_shape", _emb(out=_z(2, 3)), ValueError, "out must"),
    ("emb_pos_table_cols", _emb(pos_table=_z(3, 5)), ValueError, "pos_table has"),
    ("emb_positions_len", _emb(positions=(0,)), ValueError, "positions must"),
    ("emb_ids_int64", _emb(ids=np.zeros(2, np.int64)), ValueError, "dtype"),
    ("emb_table_float64", _emb(table=_z(5, 4, dtype=np.float64)), ValueError, "dtype"),
    ("sin_layout", lambda: embedding.sinusoidal_table(4, 4, layout="split"), ValueError,
     "layout"),
    ("sin_d_zero", lambda: embedding.sinusoidal_table(4, 0), ValueError, "d_model"),
    ("sin_n_negative", lambda: embedding.sinusoidal_table(-1, 4), ValueError, "n_positions"),
    # softmax
    ("softmax_float64", lambda: softmax.softmax_forward(_z(2, 3, dtype=np.float64)),
     ValueError, "dtype"),
    ("softmax_not_contig", lambda: softmax.softmax_forward(_z(2, 6)[:, ::2]), ValueError,
     "contiguous"),
]


@pytest.mark.parametrize("call,exc,match", [pytest.param(*case[1:], id=case[0])
                                            for case in BAD_INPUTS])
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    assert str(info.value)


def test_bad_input_leaves_no_partial_embedding():
    # Range checks run before any row is written.
    out = np.full((3, 4), 7.0, np.float32)
    with pytest.raises(ValueError):
        embedding.embedding_forward(i32(0, 1, 99), i32(0, 1, 2), f32(np.ones((5, 4))), None,
                                    1.0, out)
    np.testing.assert_array_equal(out, 7.0)


def test_embedding_position_past_empty_pos_table():
    with pytest.raises(ValueError, match="position"):
        _emb(positions=(0, 7), P=0)()


_OVERFLOW_CHILD = """
import sys
sys.path[:0] = {path!r}
import numpy as np
from cyformer._engine import attention
q = np.zeros((4, 8), np.float32)
out = np.zeros_like(q)
i32 = lambda v: np.array([v], np.int32)
try:
    attention.attention_forward(q, q, q, out, i32({qs}), i32({ql}), i32({ks}), i32({kl}), 2)
except ValueError as e:
    print("ValueError:", e)
else:
    print("no error")
"""


@pytest.mark.parametrize("qs,ql,ks,kl", [(2**31 - 1, 1, 0, 4), (0, 4, 2**31 - 2, 4)],
                         ids=["q_start", "k_start"])
def test_attention_huge_start_raises(qs, ql, ks, kl):
    # Run in a child process: the bug corrupts the heap and may abort the interpreter.
    code = _OVERFLOW_CHILD.format(path=list(sys.path), qs=qs, ql=ql, ks=ks, kl=kl)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"child crashed ({proc.returncode}): {proc.stderr[-300:]}"
    assert proc.stdout.startswith("ValueError:"), proc.stdout



def test_attention_rejects_reversed_or_overlapping_rows():
    q = f32(np.ones((4, 8)))
    one = np.ones(4, np.int32)
    start = np.arange(4, dtype=np.int32)
    out = np.empty((4, 8), np.float32)
    for bad in (q[::-1], np.broadcast_to(q[0], (4, 8))):
        with pytest.raises(ValueError, match="contiguous"):
            attention.attention_forward(bad, q, q, out, start, one, start, one, 2)
        with pytest.raises(ValueError, match="contiguous"):
            attention.attention_forward(q, q, bad, out, start, one, start, one, 2)
