"""Bias + activation (ffn.bias_act_forward, bias_act_forward_save, act_backward) for every
activation name and code, against float64 NumPy references, PyTorch and one thread."""
import math

import numpy as np
import pytest
from scipy.special import erf

from _shared import (THREAD_ATOL, THREAD_RTOL, TORCH_ATOL, TORCH_RTOL, assert_close, assert_grad_close,
                      bad_input_params, check_bad_input, f32, make_rng, requires_torch, t64, zeros)
from cyformer._engine import ffn

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None


# --------------------------------------------------------------------------------------
# references: forward, backward
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


def ref_act_grad(act, z):
    z = z.astype(np.float64)
    if act == "relu":
        return (z > 0).astype(np.float64)
    if act == "gelu":
        return 0.5 * (1 + erf(z / math.sqrt(2))) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if act == "silu":
        s = 1 / (1 + np.exp(-z))
        return s * (1 + z * (1 - s))
    u = math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)
    th = np.tanh(u)
    return 0.5 * (1 + th) + 0.5 * z * (1 - th ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * z * z)


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------

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


def test_bias_act_threads_agree():
    # With test_softmax_threads_agree and test_embedding_threads_agree, the per-row kernels'
    # thread test: one seed, the same draws, so the three see the same data.
    rng = make_rng("rows-threads")
    x0 = f32(rng.standard_normal((301, 67)) * 3)
    b = f32(rng.standard_normal(67))
    for nt in (2, 3):
        for act in ("gelu", "relu", "silu"):
            a, c = x0.copy(), x0.copy()
            ffn.bias_act_forward(a, b, act, n_threads=1)
            ffn.bias_act_forward(c, b, act, n_threads=nt)
            np.testing.assert_allclose(c, a, rtol=THREAD_RTOL, atol=THREAD_ATOL)


# --------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "gelu_tanh"])
def test_activation_backward_matches_numpy_and_torch(act):
    rng = make_rng("act-bw", act)
    pre = f32(rng.standard_normal((20, 70)) * 3)
    bias = f32(rng.standard_normal(70))
    dh = f32(rng.standard_normal((20, 70)))
    saved, out = pre.copy(), np.zeros_like(pre)
    ffn.bias_act_forward_save(saved, bias, act, out)
    assert_grad_close(saved, pre.astype(np.float64) + bias)
    g = dh.copy()
    ffn.act_backward(g, saved, act, n_threads=2)
    assert_grad_close(g, dh * ref_act_grad(act, saved))
    if torch is not None:
        fn = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu,
              "gelu_tanh": lambda z: F.gelu(z, approximate="tanh")}[act]
        tz = t64(saved)
        (fn(tz) * torch.from_numpy(dh.astype(np.float64))).sum().backward()
        assert_grad_close(g, tz.grad.numpy())
        assert_grad_close(out, fn(t64(saved, False)).numpy())


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------

BAD_INPUTS = [
    ("act_unknown", lambda: ffn.bias_act_forward(zeros(2, 3), None, "tanhh"), ValueError,
     "unknown activation"),
    ("act_bad_code", lambda: ffn.bias_act_forward(zeros(2, 3), None, 9), ValueError,
     "unknown activation code"),
    ("act_bias_len", lambda: ffn.bias_act_forward(zeros(2, 3), zeros(4), "relu"), ValueError,
     "bias has"),
    ("act_x_float64", lambda: ffn.bias_act_forward(zeros(2, 3, dtype=np.float64), None, "relu"),
     ValueError, "dtype"),
    ("act_cols_strided", lambda: ffn.bias_act_forward(zeros(2, 6)[:, ::2], None, "relu"),
     ValueError, "contiguous"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(BAD_INPUTS))
def test_bad_input_raises(call, exc, match):
    check_bad_input(call, exc, match)
