"""linear_forward (every kernel behind it: panel, skinny, BLAS), gemm and linear_backward,
against float64 NumPy references; the threaded paths against one thread."""
import math

import numpy as np
import pytest

from _shared import (THREAD_ATOL, THREAD_RTOL, assert_close, assert_grad_close, bad_input_params,
                      check_bad_input, f32, make_rng, one_blas_thread, zeros)
from cyformer._engine import linear
from cyformer._engine.linear_paths import available_linear_paths, linear_path


# --------------------------------------------------------------------------------------
# forward
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


@pytest.mark.parametrize("path", [p for p in available_linear_paths() if p != "BLAS"])
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
    with one_blas_thread(), linear_path(path):
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
    with one_blas_thread():
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

    with one_blas_thread(), ThreadPoolExecutor(4) as pool:
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
    with one_blas_thread():
        for nt in (1, 2, 3):
            out = out0.copy()
            linear.linear_forward(x, w, b, out, accumulate=accumulate, n_threads=nt)
            results[nt] = out
    assert_close(results[1], ref_linear(x, w, b, out0, accumulate))
    for nt in (2, 3):
        np.testing.assert_allclose(results[nt], results[1], rtol=THREAD_RTOL, atol=THREAD_ATOL)


# --------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 5, 3), (50, 33, 20), (300, 70, 40), (3, 0, 4)])
@pytest.mark.parametrize("accumulate_dx", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_backward_matches_numpy(m, n, k, accumulate_dx, threads):
    rng = make_rng("linear-bw", m, n, k, accumulate_dx)
    x, w, dout = f32(rng.standard_normal((m, k))), f32(rng.standard_normal((n, k))), f32(rng.standard_normal((m, n)))
    dx0, dw0, db0 = f32(rng.standard_normal((m, k))), f32(rng.standard_normal((n, k))), f32(rng.standard_normal(n))
    dx, dw, db = dx0.copy(), dw0.copy(), db0.copy()
    with one_blas_thread():
        linear.linear_backward(x, w, dout, dx, dw, db, accumulate_dx=accumulate_dx, n_threads=threads)
    d64, x64, w64 = dout.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    assert_grad_close(dx, d64 @ w64 + (dx0 if accumulate_dx else 0))
    assert_grad_close(dw, dw0 + d64.T @ x64)
    assert_grad_close(db, db0 + d64.sum(axis=0))


def test_linear_backward_strided_views_and_optional_outputs():
    rng = make_rng("linear-bw-strided")
    buf = f32(rng.standard_normal((40, 30)))
    x = buf[:, 5:17]                 # a column block of a fused buffer
    w = f32(rng.standard_normal((9, 12)))
    dbuf = f32(rng.standard_normal((40, 27)))
    dout = dbuf[:, 18:27]
    dxbuf = np.zeros((40, 36), np.float32)
    dx = dxbuf[:, 12:24]
    linear.linear_backward(x, w, dout, dx, None, None)
    assert_grad_close(dx, dout.astype(np.float64) @ w)
    assert not dxbuf[:, :12].any() and not dxbuf[:, 24:].any()
    dw = np.zeros_like(w)
    linear.linear_backward(x, w, dout, None, dw, None)
    assert_grad_close(dw, dout.astype(np.float64).T @ x)


def test_linear_backward_bad_shapes():
    x, w = np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="dout"):
        linear.linear_backward(x, w, np.zeros((4, 4), np.float32), None, None, None)
    with pytest.raises(ValueError, match="dweight"):
        linear.linear_backward(x, w, np.zeros((4, 5), np.float32), None, np.zeros((3, 5), np.float32), None)


# --------------------------------------------------------------------------------------
# bad input: ValueError / TypeError with a message, never a crash
# --------------------------------------------------------------------------------------

def _lin(x=None, w=None, b=None, out=None, **kw):
    x = zeros(4, 6) if x is None else x
    w = zeros(5, 6) if w is None else w
    out = zeros(4, 5) if out is None else out
    return lambda: linear.linear_forward(x, w, b, out, **kw)


BAD_INPUTS = [
    ("linear_weight_k", _lin(w=zeros(5, 7)), ValueError, "weight is"),
    ("linear_out_shape", _lin(out=zeros(4, 6)), ValueError, "out is"),
    ("linear_out_rows", _lin(out=zeros(3, 5)), ValueError, "out is"),
    ("linear_bias_len", _lin(b=zeros(4)), ValueError, "bias has"),
    ("linear_x_float64", _lin(x=zeros(4, 6, dtype=np.float64)), ValueError, "dtype"),
    ("linear_w_float64", _lin(w=zeros(5, 6, dtype=np.float64)), ValueError, "dtype"),
    ("linear_bias_float64", _lin(b=zeros(5, dtype=np.float64)), ValueError, "dtype"),
    ("linear_w_not_c_contig", _lin(w=zeros(6, 5).T), ValueError, "contiguous"),
    ("linear_x_cols_strided", _lin(x=zeros(4, 12)[:, ::2]), ValueError, "contiguous"),
    ("linear_out_cols_strided", _lin(out=zeros(4, 10)[:, ::2]), ValueError, "contiguous"),
    ("linear_x_list", _lin(x=[[0.0] * 6] * 4), TypeError, "bytes-like"),
    ("linear_x_1d", _lin(x=zeros(6)), ValueError, "dimensions"),
    ("gemm_shapes", lambda: linear.gemm(zeros(3, 4), zeros(5, 6), zeros(3, 6)), ValueError, "b does not"),
    ("gemm_rows", lambda: linear.gemm(zeros(3, 4), zeros(4, 6), zeros(2, 6)), ValueError, "a does not"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(BAD_INPUTS))
def test_bad_input_raises(call, exc, match):
    check_bad_input(call, exc, match)


# --------------------------------------------------------------------------------------
# the panel kernel's AVX-512 body
# --------------------------------------------------------------------------------------

@pytest.mark.skipif(not linear.panel_body_supported("avx512"), reason="this CPU lacks AVX-512F or AVX-512VL")
@pytest.mark.parametrize("m,n,k", [(8, 7, 33), (9, 13, 64), (16, 12, 256), (17, 6, 40), (24, 25, 9),
                                   (32, 31, 130), (33, 8, 512), (47, 11, 40), (64, 100, 70), (250, 19, 16)])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_panel_avx512_body_matches_avx2_body(m, n, k, strided):
    # Two-panel tiles (32 rows), a last single panel, a last panel of <= 8 rows, short weight
    # blocks: the same FMA chain per output as the AVX2 body, so the same bits.
    from cyformer._engine.linear_paths import forced_panel_body

    rng = make_rng("panel-avx512", m, n, k, strided)
    w = f32(rng.standard_normal((n, k)) / math.sqrt(k))
    b = f32(rng.standard_normal(n))
    xbuf = f32(rng.standard_normal((m, k + 3)))
    x = xbuf[:, 3:] if strided else np.ascontiguousarray(xbuf[:, :k])
    outs = {}
    with linear_path("panel"):
        for body in ("avx2", "avx512"):
            with forced_panel_body(body):
                assert linear.panel_body() == body
                out = f32(rng.standard_normal((m, n)))
                out0 = out.copy()
                linear.linear_forward(x, w, b, out, accumulate=True)
                assert_close(out, ref_linear(x, w, b, out0, True))
                for nt in (1, 2, 3):
                    o = np.zeros((m, n), np.float32)
                    linear.linear_forward(x, w, b, o, n_threads=nt)
                    outs[(body, nt)] = o
    for key, o in outs.items():
        np.testing.assert_array_equal(o, outs[("avx2", 1)], err_msg=str(key))


def test_panel_body_dispatch():
    assert linear.panel_body() == ("avx512" if linear.panel_body_supported("avx512") else "avx2")
    with pytest.raises(ValueError, match="panel body must be one of"):
        linear.set_panel_body("sse")
    for body in linear.PANEL_BODIES:
        if not linear.panel_body_supported(body):
            with pytest.raises(ValueError, match="needs"):
                linear.set_panel_body(body)
