"""softmax_forward and its log-softmax, with masked (-inf) rows and large or offset logits,
against float64 NumPy references, PyTorch and one thread."""
import numpy as np
import pytest

from _shared import (THREAD_ATOL, THREAD_RTOL, TORCH_ATOL, TORCH_RTOL, assert_close, bad_input_params,
                      check_bad_input, f32, make_rng, requires_torch, zeros)
from cyformer._engine import softmax

try:
    import torch
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None


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


def test_softmax_threads_agree():
    rng = make_rng("rows-threads")  # the data of test_ops_ffn.py's test_bias_act_threads_agree
    x0 = f32(rng.standard_normal((301, 67)) * 3)
    for nt in (2, 3):
        for log in (False, True):
            a, c = x0.copy(), x0.copy()
            softmax.softmax_forward(a, log, n_threads=1)
            softmax.softmax_forward(c, log, n_threads=nt)
            np.testing.assert_allclose(c, a, rtol=THREAD_RTOL, atol=THREAD_ATOL)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------

BAD_INPUTS = [
    ("softmax_float64", lambda: softmax.softmax_forward(zeros(2, 3, dtype=np.float64)),
     ValueError, "dtype"),
    ("softmax_not_contig", lambda: softmax.softmax_forward(zeros(2, 6)[:, ::2]), ValueError,
     "contiguous"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(BAD_INPUTS))
def test_bad_input_raises(call, exc, match):
    check_bad_input(call, exc, match)


@pytest.mark.parametrize("rows,v", [(1, 1), (3, 17), (16, 32000), (5, 100)])
def test_log_softmax_stats_give_the_written_log_softmax_bitwise(rows, v):
    # greedy decoding scores its pick as (x - m) - ls without writing the log-softmax
    from cyformer._engine.softmax import log_softmax_stats

    rng = np.random.default_rng(rows * 1000 + v)
    x = (rng.standard_normal((rows, v)) * 4).astype(np.float32)
    x[0, ::2] = -np.inf
    if rows > 2:
        x[2, :] = -np.inf   # no finite entry: all -inf
    want = x.copy()
    softmax.softmax_forward(want, log=True, n_threads=1)
    before = x.copy()
    for nt in (1, 2):
        m, ls = log_softmax_stats(x, nt)
        with np.errstate(invalid="ignore"):
            got = (x - m[:, None]) - ls[:, None]
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, before)
