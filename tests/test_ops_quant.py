"""The quantized linear kernels (cyformer._engine.quant): int8 with per-row scales on every body
this CPU runs against a NumPy reference doing the same integer arithmetic (exact int32 sums),
bf16 on every body against float64 of its own rounded operands; threads against one thread
(bitwise); bad input. A body this CPU lacks is skipped, naming its instruction set. The AMX
bodies also run on cyformer's software model of the tiles ("amx-model", wherever the CPU has
the AVX-512 instructions of their stores), and on the tiles themselves where the CPU has them."""
import math
import os

import numpy as np
import pytest

from _shared import bad_input_params, check_bad_input, f32, make_rng
from cyformer._engine import quant
from cyformer._engine.linear_paths import AMX_MODEL, forced_bf16_path, forced_int8_path

# The dequantized int8 result against the reference's float32 arithmetic: the same operations,
# so equal up to the rounding of a contracted multiply-add (a -march=native build).
DEQUANT_RTOL = 1e-6
DEQUANT_ATOL = 1e-6
# bf16 bodies against float64 of their rounded operands: float32 accumulation of K products.
BF16_RTOL = 1e-5


def _path_param(paths, supported, isa, kind, model_needs):
    def reason(p):
        return f"AMX: {quant.amx_status(kind)}" if p == "amx" and supported(model_needs) else f"this CPU lacks {isa[p]}"
    params = [pytest.param(p, marks=pytest.mark.skipif(not supported(p), reason=reason(p))) for p in paths]
    return params + [pytest.param(AMX_MODEL, marks=pytest.mark.skipif(
        not supported(model_needs), reason=f"the AMX model's stores need {isa[model_needs]}"))]


INT8_PARAMS = _path_param(quant.INT8_PATHS, quant.int8_path_supported, quant.INT8_ISA, "int8", "vnni512")
BF16_PARAMS = _path_param(quant.BF16_PATHS, quant.bf16_path_supported, quant.BF16_ISA, "bf16", "avx512bf16")
# the bodies that read packed int8 weights
PACKED_BODIES = [p for p in INT8_PARAMS if p.values[0] in ("amx", "vnni512", AMX_MODEL)]
# the bf16 bodies that round the activations to bf16 (the F32 body keeps them)
BF16_ROUNDING = ("amx", "avx512bf16", AMX_MODEL)

SHAPES = [(1, 1, 1), (1, 7, 5), (3, 9, 70), (2, 4, 64), (4, 5, 31), (5, 6, 129), (1, 13, 300),
          (17, 33, 200), (8, 3, 33), (9, 16, 63), (6, 12, 256), (33, 40, 65), (64, 130, 512)]


# --------------------------------------------------------------------------------------
# the NumPy references
# --------------------------------------------------------------------------------------

def ref_quantize(x):
    """Symmetric per-row int8 in float32 arithmetic, as the kernels do it."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    scale = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)
    return q, scale


def ref_int8_linear(x, wq, ws, b, out0=None):
    """(exact int64 sums, the dequantized float32 result)."""
    xq, xs = ref_quantize(x)
    acc = xq.astype(np.int64) @ wq.astype(np.int64).T
    out = acc.astype(np.float32) * (xs[:, None] * ws[None, :])
    if b is not None:
        out = out + b
    if out0 is not None:
        out = out0 + out
    return acc, out


def ref_bf16(a):
    """float32 -> bf16 bits, round to nearest even, by integer arithmetic."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(a, np.float32))
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)


def _case(key, m, n, k):
    rng = make_rng(*key, m, n, k)
    x = f32(rng.standard_normal((m, k)))
    w = f32(rng.standard_normal((n, k)) / math.sqrt(k))
    b = f32(rng.standard_normal(n))
    return rng, x, w, b


# --------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,k", SHAPES)
def test_quantize_rows_matches_numpy(m, n, k):
    _, x, w, _ = _case(("quantize",), m, n, k)
    for a in (x, w):
        q, s = quant.quantize_rows(a)
        rq, rs = ref_quantize(a)
        np.testing.assert_array_equal(q, rq)
        np.testing.assert_array_equal(s, rs)
        qs, ss = quant.quantize_rows(a, shifted=True)
        assert qs.dtype == np.uint8
        np.testing.assert_array_equal(qs.astype(np.int16) - 128, rq)
        np.testing.assert_array_equal(ss, rs)


def test_quantize_rows_edges():
    x = f32([[0, 0, 0], [1, -1, 0.5], [-3, 1.5, 0.0]])
    q, s = quant.quantize_rows(x)
    np.testing.assert_array_equal(q[0], 0)
    assert s[0] == 0
    np.testing.assert_array_equal(q[1], [127, -127, 64])  # rint(63.5) is 64 (even)
    np.testing.assert_array_equal(q[2], [-127, 64, 0])   # 1.5 * 127/3 = 63.5 -> 64
    np.testing.assert_array_equal(quant.int8_compensation(np.array([[1, -2, 127]], np.int8)), [128 * 126])


@pytest.mark.parametrize("path", INT8_PARAMS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_body_exact_sums(path, m, n, k):
    _, x, w, b = _case(("int8-sums",), m, n, k)
    wq, ws = quant.quantize_rows(w)
    comp = quant.int8_compensation(wq)
    want, want_out = ref_int8_linear(x, wq, ws, b)
    with forced_int8_path(path):
        np.testing.assert_array_equal(quant.int8_accumulators(x, wq, comp), want)
        out = np.full((m, n), np.nan, np.float32)
        quant.int8_linear_forward(x, wq, ws, comp, b, out)
    np.testing.assert_allclose(out, want_out, rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)


@pytest.mark.parametrize("path", INT8_PARAMS)
def test_int8_body_extreme_values(path):
    # Every activation and weight at +-127 (the int16 pair limit of vpmaddubsw in the AVX2
    # body, the largest shifted products of the VNNI bodies), long rows.
    rng = make_rng("int8-extreme")
    m, n, k = 5, 9, 1000
    x = f32(rng.choice([-1.0, 1.0], size=(m, k)))
    wq = rng.choice(np.array([-127, 127], np.int8), size=(n, k))
    with forced_int8_path(path):
        got = quant.int8_accumulators(x, wq)
    np.testing.assert_array_equal(got, (127 * x.astype(np.int64)) @ wq.astype(np.int64).T)


def test_int8_bodies_give_the_same_bits():
    _, x, w, b = _case(("int8-bits",), 23, 70, 333)
    wq, ws = quant.quantize_rows(w)
    results = []
    for path in quant.INT8_PATHS:
        if quant.int8_path_supported(path):
            out = np.zeros((23, 70), np.float32)
            with forced_int8_path(path):
                quant.int8_linear_forward(x, wq, ws, None, b, out)
            results.append(out)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_int8_accumulate_bias_strided(strided):
    rng, x, w, b = _case(("int8-views",), 7, 11, 90)
    wq, ws = quant.quantize_rows(w)
    if strided:
        x = f32(np.pad(x, ((0, 0), (2, 3))))[:, 2:92]
        obuf = f32(rng.standard_normal((7, 15)))
        out = obuf[:, 1:12]
    else:
        obuf = f32(rng.standard_normal((7, 11)))
        out = obuf
    before = obuf.copy()
    out0 = out.copy()
    quant.int8_linear_forward(x, wq, ws, quant.int8_compensation(wq), b, out, accumulate=True)
    np.testing.assert_allclose(out, ref_int8_linear(x, wq, ws, b, out0)[1], rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)
    quant.int8_linear_forward(x, wq, ws, None, None, out)
    np.testing.assert_allclose(out, ref_int8_linear(x, wq, ws, None)[1], rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)
    if strided:
        np.testing.assert_array_equal(obuf[:, 0], before[:, 0])
        np.testing.assert_array_equal(obuf[:, 12:], before[:, 12:])


def test_int8_close_to_float32():
    # The quantization error itself: small against the float product's scale.
    _, x, w, b = _case(("int8-float",), 16, 64, 512)
    wq, ws = quant.quantize_rows(w)
    out = np.zeros((16, 64), np.float32)
    quant.int8_linear_forward(x, wq, ws, None, b, out)
    want = x.astype(np.float64) @ w.astype(np.float64).T + b
    assert np.abs(out - want).max() < 0.02 * np.abs(want).max()


@pytest.mark.parametrize("path", INT8_PARAMS)
@pytest.mark.parametrize("m", [1, 4, 40, 200])  # columns split (few rows) and rows split
def test_int8_threads_bitwise(path, m):
    _, x, w, b = _case(("int8-threads",), m, 300, 256)
    wq, ws = quant.quantize_rows(w)
    comp = quant.int8_compensation(wq)
    outs = []
    with forced_int8_path(path):
        for nt in (1, 2, 3):
            out = np.zeros((m, 300), np.float32)
            quant.int8_linear_forward(x, wq, ws, comp, b, out, n_threads=nt)
            outs.append(out)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_int8_nan_rows_give_nan():
    _, x, w, b = _case(("int8-nan",), 3, 5, 40)
    x[1, 7] = np.nan
    x[2, 0] = np.inf
    wq, ws = quant.quantize_rows(w)
    out = np.zeros((3, 5), np.float32)
    quant.int8_linear_forward(x, wq, ws, None, b, out)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all() and np.isnan(out[2]).all()


def test_int8_empty():
    wq = np.zeros((3, 0), np.int8)
    out = np.ones((2, 3), np.float32)
    quant.int8_linear_forward(np.zeros((2, 0), np.float32), wq, np.ones(3, np.float32), None,
                              f32([1, 2, 3]), out)
    np.testing.assert_array_equal(out, [[1, 2, 3], [1, 2, 3]])
    quant.int8_linear_forward(np.zeros((0, 4), np.float32), np.zeros((3, 4), np.int8),
                              np.ones(3, np.float32), None, None, np.zeros((0, 3), np.float32))


def test_int8_dispatch_names_and_forcing():
    assert quant.int8_path() == quant.best_int8_path()
    supported = [p for p in quant.INT8_PATHS if quant.int8_path_supported(p)]
    assert quant.best_int8_path() == supported[0] and "portable" in supported
    for p in quant.INT8_PATHS:
        if not quant.int8_path_supported(p):
            with pytest.raises(ValueError, match="needs .*" + quant.INT8_ISA[p].split(" (")[0]):
                quant.set_int8_path(p)
    assert quant.int8_path() == quant.best_int8_path()


_X = f32(np.ones((2, 8)))
_WQ = np.ones((3, 8), np.int8)
_WS = np.ones(3, np.float32)
INT8_BAD = [
    ("weight-cols", lambda: quant.int8_linear_forward(_X, np.ones((3, 7), np.int8), _WS, None, None,
                                                      np.zeros((2, 3), np.float32)), ValueError, "weight is"),
    ("weight-dtype", lambda: quant.int8_linear_forward(_X, np.ones((3, 8), np.float32), _WS, None, None,
                                                       np.zeros((2, 3), np.float32)), ValueError, "mismatch"),
    ("scale-len", lambda: quant.int8_linear_forward(_X, _WQ, np.ones(2, np.float32), None, None,
                                                    np.zeros((2, 3), np.float32)), ValueError, "scale"),
    ("comp-len", lambda: quant.int8_linear_forward(_X, _WQ, _WS, np.zeros(4, np.int32), None,
                                                   np.zeros((2, 3), np.float32)), ValueError, "compensation"),
    ("comp-dtype", lambda: quant.int8_linear_forward(_X, _WQ, _WS, np.zeros(3, np.int64), None,
                                                     np.zeros((2, 3), np.float32)), ValueError, "mismatch"),
    ("out-shape", lambda: quant.int8_linear_forward(_X, _WQ, _WS, None, None, np.zeros((2, 4), np.float32)),
     ValueError, "out is"),
    ("bias-len", lambda: quant.int8_linear_forward(_X, _WQ, _WS, None, np.ones(2, np.float32),
                                                   np.zeros((2, 3), np.float32)), ValueError, "bias"),
    ("x-cols-strided", lambda: quant.int8_linear_forward(f32(np.ones((2, 16)))[:, ::2], _WQ, _WS, None, None,
                                                         np.zeros((2, 3), np.float32)), ValueError, "contiguous"),
    ("path-name", lambda: quant.set_int8_path("amx-fp16"), ValueError, "int8 path must be one of"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(INT8_BAD))
def test_int8_bad_input(call, exc, match):
    check_bad_input(call, exc, match)


# --------------------------------------------------------------------------------------
# bf16
# --------------------------------------------------------------------------------------

def test_bfloat16_rounding_matches_numpy():
    rng = make_rng("bf16-round")
    a = f32(np.concatenate([rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000),
                            [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8,
                             3.4e38, 1e-40]]))
    got = quant.to_bfloat16(a)
    np.testing.assert_array_equal(got, ref_bf16(a))
    back = quant.from_bfloat16(got)
    normal = np.isfinite(a) & (np.abs(a) < 3.3e38) & (np.abs(a) > 1e-37)  # no overflow, no subnormals
    np.testing.assert_allclose(back[normal], a[normal], rtol=2.0 ** -8)
    assert np.isnan(back[np.isnan(a)]).all()
    assert back[-2] == np.inf  # 3.4e38 is past bf16's largest finite value
    assert quant.to_bfloat16(f32([[1.0, 2.0]])).shape == (1, 2)


@pytest.mark.parametrize("path", BF16_PARAMS)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "acc"])
def test_bf16_body_matches_float64(path, m, n, k, accumulate):
    rng, x, w, b = _case(("bf16",), m, n, k)
    wb = quant.to_bfloat16(w)
    out = f32(rng.standard_normal((m, n)))
    out0 = out.copy()
    with forced_bf16_path(path):
        quant.bf16_linear_forward(x, wb, b, out, accumulate=accumulate)
    # the AVX512BF16 body rounds the activations to bf16 too; the F32 body keeps them
    xr = quant.from_bfloat16(quant.to_bfloat16(x)) if path in BF16_ROUNDING else x
    prod = xr.astype(np.float64) @ quant.from_bfloat16(wb).astype(np.float64).T
    want = prod + b + (out0 if accumulate else 0)
    scale = np.abs(xr).astype(np.float64) @ np.abs(quant.from_bfloat16(wb)).astype(np.float64).T
    assert np.all(np.abs(out - want) <= BF16_RTOL * (scale + np.abs(want)) + 1e-6)


@pytest.mark.parametrize("path", BF16_PARAMS)
@pytest.mark.parametrize("m", [1, 4, 40, 200])
def test_bf16_threads_bitwise(path, m):
    _, x, w, b = _case(("bf16-threads",), m, 300, 256)
    wb = quant.to_bfloat16(w)
    outs = []
    with forced_bf16_path(path):
        for nt in (1, 2, 3):
            out = np.zeros((m, 300), np.float32)
            quant.bf16_linear_forward(x, wb, b, out, n_threads=nt)
            outs.append(out)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_bf16_strided_views():
    rng, x, w, b = _case(("bf16-views",), 5, 9, 40)
    wb = quant.to_bfloat16(w)
    xv = f32(np.pad(x, ((0, 0), (1, 2))))[:, 1:41]
    obuf = f32(rng.standard_normal((5, 12)))
    before = obuf.copy()
    with forced_bf16_path("f32"):
        quant.bf16_linear_forward(xv, wb, b, obuf[:, 2:11])
    want = x.astype(np.float64) @ quant.from_bfloat16(wb).astype(np.float64).T + b
    np.testing.assert_allclose(obuf[:, 2:11], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(obuf[:, :2], before[:, :2])
    np.testing.assert_array_equal(obuf[:, 11:], before[:, 11:])


BF16_BAD = [
    ("weight-cols", lambda: quant.bf16_linear_forward(_X, np.ones((3, 7), np.uint16), None,
                                                      np.zeros((2, 3), np.float32)), ValueError, "weight is"),
    ("weight-dtype", lambda: quant.bf16_linear_forward(_X, np.ones((3, 8), np.float32), None,
                                                       np.zeros((2, 3), np.float32)), ValueError, "mismatch"),
    ("out-shape", lambda: quant.bf16_linear_forward(_X, np.ones((3, 8), np.uint16), None,
                                                    np.zeros((3, 3), np.float32)), ValueError, "out is"),
    ("path-name", lambda: quant.set_bf16_path("amx-fp16"), ValueError, "bf16 path must be one of"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(BF16_BAD))
def test_bf16_bad_input(call, exc, match):
    check_bad_input(call, exc, match)


def test_bf16_dispatch_names():
    assert quant.bf16_path() == quant.best_bf16_path()
    for p in quant.BF16_PATHS:
        if not quant.bf16_path_supported(p):
            with pytest.raises(ValueError, match="needs"):
                quant.set_bf16_path(p)


# --------------------------------------------------------------------------------------
# int8, packed weights: the outer-product VNNI512 body (pack_int8)
# --------------------------------------------------------------------------------------

needs_vnni512 = pytest.mark.skipif(not quant.int8_path_supported("vnni512"),
                                   reason=f"this CPU lacks {quant.INT8_ISA['vnni512']}")


def ref_pack(wq):
    """The packed layout by NumPy: blocks of 16 rows, 4 bytes of k per row, zeros past N, K."""
    n, k = wq.shape
    nb, k4 = -(-n // 16), -(-k // 4)
    padded = np.zeros((nb * 16, k4 * 4), np.int8)
    padded[:n, :k] = wq
    return padded.reshape(nb, 16, k4, 4).transpose(0, 2, 1, 3).reshape(nb, k4 * 64)


def test_pack_int8_layout_and_unpack():
    rng = make_rng("int8-pack")
    for n, k in [(1, 1), (16, 4), (17, 5), (37, 70), (64, 384), (3, 0)]:
        wq = rng.integers(-127, 128, size=(n, k)).astype(np.int8)
        p = quant.pack_int8(wq)
        np.testing.assert_array_equal(p, ref_pack(wq))
        assert p.size == 0 or p.ctypes.data % 64 == 0
        np.testing.assert_array_equal(quant.unpack_int8(p, n, k), wq)
        if n > 2:
            np.testing.assert_array_equal(quant.unpack_int8(p, n, k, 1, n - 1), wq[1:n - 1])
        ids = rng.integers(0, n, size=9)
        np.testing.assert_array_equal(quant.unpack_int8(p, n, k, rows=ids), wq[ids])


def test_pack_int8_in_blocks_of_rows_equals_the_whole():
    # a matrix quantized or read a block of rows at a time, packed in place block by block
    rng = make_rng("int8-pack-blocks")
    wq = rng.integers(-127, 128, size=(75, 37)).astype(np.int8)
    out = quant.empty_packed_int8(75, 37)
    for r in range(0, 75, 32):
        assert quant.pack_int8(wq[r:r + 32], out=out, row0=r) is out
    np.testing.assert_array_equal(out, quant.pack_int8(wq))
    with pytest.raises(ValueError, match="do not fit"):
        quant.pack_int8(wq[:16], out=out, row0=8)      # not on a block boundary
    with pytest.raises(ValueError, match="do not fit"):
        quant.pack_int8(wq[:32], out=out, row0=64)     # past the end
    with pytest.raises(ValueError, match="needs out"):
        quant.pack_int8(wq, row0=16)


@pytest.mark.parametrize("body", PACKED_BODIES)
@pytest.mark.parametrize("m,n,k", SHAPES + [(13, 1152, 384), (7, 100, 3), (600, 70, 40), (48, 16, 1024)])
def test_packed_body_exact_sums_and_bits(body, m, n, k):
    _, x, w, b = _case(("int8-packed",), m, n, k)
    wq, ws = quant.quantize_rows(w)
    comp = quant.int8_compensation(wq)
    want, want_out = ref_int8_linear(x, wq, ws, b)
    out = np.full((m, n), np.nan, np.float32)
    with forced_int8_path(body):
        np.testing.assert_array_equal(quant.int8_accumulators(x, wq, comp, packed=True), want)
        quant.int8_packed_linear_forward(x, quant.pack_int8(wq), ws, comp, b, out)
    np.testing.assert_allclose(out, want_out, rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)
    # the same float operations as the row-major bodies' store: the same bits
    same = np.zeros((m, n), np.float32)
    with forced_int8_path("portable"):
        quant.int8_linear_forward(x, wq, ws, comp, b, same)
    np.testing.assert_array_equal(out, same)


@pytest.mark.parametrize("body", PACKED_BODIES)
def test_packed_body_extreme_values(body):
    rng = make_rng("int8-packed-extreme")
    m, n, k = 37, 40, 1001
    x = f32(rng.choice([-1.0, 1.0], size=(m, k)))
    wq = rng.choice(np.array([-127, 127], np.int8), size=(n, k))
    with forced_int8_path(body):
        got = quant.int8_accumulators(x, wq, packed=True)
    np.testing.assert_array_equal(got, (127 * x.astype(np.int64)) @ wq.astype(np.int64).T)


@pytest.mark.parametrize("body", PACKED_BODIES)
@pytest.mark.parametrize("m", [1, 4, 40, 200])  # columns split (few rows) and rows split
def test_packed_body_threads_bitwise(body, m):
    _, x, w, b = _case(("int8-packed-threads",), m, 300, 256)
    wq, ws = quant.quantize_rows(w)
    comp, p = quant.int8_compensation(wq), quant.pack_int8(wq)
    outs = []
    with forced_int8_path(body):
        for nt in (1, 2, 3):
            out = np.zeros((m, 300), np.float32)
            quant.int8_packed_linear_forward(x, p, ws, comp, b, out, n_threads=nt)
            outs.append(out)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


@pytest.mark.parametrize("body", PACKED_BODIES)
@pytest.mark.parametrize("m", [7, 37])
def test_packed_body_accumulate_strided(body, m):
    rng, x, w, b = _case(("int8-packed-views",), m, 21, 90)
    wq, ws = quant.quantize_rows(w)
    comp, p = quant.int8_compensation(wq), quant.pack_int8(wq)
    x = f32(np.pad(x, ((0, 0), (2, 3))))[:, 2:92]
    obuf = f32(rng.standard_normal((m, 25)))
    out, before = obuf[:, 1:22], obuf.copy()
    out0 = out.copy()
    with forced_int8_path(body):
        quant.int8_packed_linear_forward(x, p, ws, comp, b, out, accumulate=True)
    np.testing.assert_allclose(out, ref_int8_linear(x, wq, ws, b, out0)[1], rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL)
    np.testing.assert_array_equal(obuf[:, 0], before[:, 0])
    np.testing.assert_array_equal(obuf[:, 22:], before[:, 22:])


_P = quant.pack_int8(_WQ)
PACKED_BAD = [
    ("packed-shape", lambda: quant.int8_packed_linear_forward(_X, quant.pack_int8(np.ones((3, 12), np.int8)), _WS,
                                                              np.zeros(3, np.int32), None, np.zeros((2, 3), np.float32)),
     ValueError, "packed weights are"),
    ("packed-unaligned", lambda: quant.int8_packed_linear_forward(
        _X, np.zeros((2, 129), np.int8)[1:, 1:], _WS, np.zeros(3, np.int32), None, np.zeros((2, 3), np.float32)),
     ValueError, "64-byte|contiguous"),
    ("packed-comp", lambda: quant.int8_packed_linear_forward(_X, _P, _WS, np.zeros(2, np.int32), None,
                                                             np.zeros((2, 3), np.float32)), ValueError, "compensation"),
    ("packed-out", lambda: quant.int8_packed_linear_forward(_X, _P, _WS, np.zeros(3, np.int32), None,
                                                            np.zeros((3, 3), np.float32)), ValueError, "out is"),
    ("unpack-rows", lambda: quant.unpack_int8(_P, 3, 8, 2, 5), ValueError, "outside"),
    ("unpack-ids", lambda: quant.unpack_int8(_P, 3, 8, rows=[0, 3]), ValueError, "row ids"),
]


@needs_vnni512
@pytest.mark.parametrize("call,exc,match", bad_input_params(PACKED_BAD))
def test_packed_bad_input(call, exc, match):
    check_bad_input(call, exc, match)


# --------------------------------------------------------------------------------------
# AMX: the tiles from 16 rows, the software model, the hardware against the model
# --------------------------------------------------------------------------------------

needs_amx_model = pytest.mark.skipif(not (quant.int8_path_supported("vnni512") and quant.bf16_path_supported("avx512bf16")),
                                     reason="the AMX model's stores need AVX-512 VNNI and AVX-512 BF16")


def test_amx_status_says_why():
    for kind in ("int8", "bf16"):
        status = quant.amx_status(kind)
        assert status == "available" or any(w in status for w in ("no AMX", "OS", "kernel", "self-check", "CYFORMER_AMX"))
        paths = quant.INT8_PATHS if kind == "int8" else quant.BF16_PATHS
        assert "amx" in paths
        if status == "available":   # the dispatch takes the tiles first
            assert (quant.best_int8_path() if kind == "int8" else quant.best_bf16_path()) == "amx"
    assert quant.amx_status("bfloat16") == quant.amx_status("bf16")   # the compute type's name
    with pytest.raises(ValueError, match="kind"):
        quant.amx_status("fp16")


def test_amx_can_be_turned_off():
    # CYFORMER_AMX=0: no tile-state request, the dispatch keeps the AVX-512 bodies
    import subprocess
    import sys

    code = ("from cyformer._engine import quant; "
            "print(quant.amx_status('int8'), '|', quant.amx_status('bf16'), '|', quant.int8_path(), quant.bf16_path())")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, CYFORMER_AMX="0"),
                         capture_output=True, text=True, check=True).stdout
    int8_status, bf16_status, paths = (part.strip() for part in out.split("|"))
    assert int8_status == bf16_status == "turned off by CYFORMER_AMX=0"
    assert "amx" not in paths.split()


@needs_amx_model
@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_amx_model_selfcheck(kind):
    ops, faults = quant.amx_model_counts()
    assert quant.amx_selfcheck(kind, model=True)
    ops1, faults1 = quant.amx_model_counts()
    assert ops1 > ops and faults1 == faults


def _run(kind, m, n=40, k=100):
    _, x, w, b = _case(("amx-rows", kind), m, n, k)
    out = np.zeros((m, n), np.float32)
    if kind == "int8":
        wq, ws = quant.quantize_rows(w)
        quant.int8_packed_linear_forward(x, quant.pack_int8(wq), ws, quant.int8_compensation(wq), b, out)
    else:
        quant.bf16_linear_forward(x, quant.to_bfloat16(w), b, out)
    return out


@needs_amx_model
@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_amx_tiles_from_16_rows_without_faults(kind):
    forced = forced_int8_path if kind == "int8" else forced_bf16_path
    with forced(AMX_MODEL):
        ops, faults = quant.amx_model_counts()
        _run(kind, quant.AMX_MIN_ROWS - 1)
        assert quant.amx_model_counts() == (ops, faults)   # fewer rows: the AVX-512 body
        _run(kind, quant.AMX_MIN_ROWS)
        ops1, faults1 = quant.amx_model_counts()
        assert ops1 > ops and faults1 == faults


@needs_amx_model
def test_amx_emulation_off_restores_the_dispatch():
    old = quant.set_amx_emulation(True)
    try:
        quant.set_int8_path("amx")
        quant.set_bf16_path("amx")
    finally:
        quant.set_amx_emulation(old)
    if quant.amx_status("int8") != "available":
        assert quant.int8_path() == quant.best_int8_path() != "amx"
    if quant.amx_status("bf16") != "available":
        assert quant.bf16_path() == quant.best_bf16_path() != "amx"
    quant.set_int8_path(None)
    quant.set_bf16_path(None)


needs_amx_hw = pytest.mark.skipif(
    not (quant.amx_status("int8") == "available" and quant.amx_status("bf16") == "available"),
    reason=f"AMX: {quant.amx_status('int8')}")


@needs_amx_hw
@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_amx_instructions_match_the_model(kind):
    # the hardware tiles against the model over shapes with every tail: int8 bit for bit, bf16
    # to float32 accumulation (the hardware's order of the pair additions is its own)
    assert quant.amx_selfcheck(kind, model=False)
    forced = forced_int8_path if kind == "int8" else forced_bf16_path
    for m, n, k in [(16, 16, 64), (37, 40, 203), (100, 130, 512), (600, 70, 40)]:
        with forced("amx"):
            hw = _run(kind, m, n, k)
        with forced(AMX_MODEL):
            model = _run(kind, m, n, k)
        if kind == "int8":
            np.testing.assert_array_equal(hw, model)
        else:
            np.testing.assert_allclose(hw, model, rtol=1e-5, atol=1e-5)
