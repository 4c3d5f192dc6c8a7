"""layer_norm_forward (with the fused residual add and saved statistics) and
layer_norm_backward, against float64 NumPy references, PyTorch and one thread."""
import numpy as np
import pytest

from _shared import (GRAD_ATOL, THREAD_ATOL, THREAD_RTOL, TORCH_ATOL, TORCH_RTOL, assert_close,
                      assert_grad_close, bad_input_params, check_bad_input, f32, make_rng, requires_torch,
                      t64, zeros)
from cyformer._engine import norm

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None


# --------------------------------------------------------------------------------------
# references: forward, backward
# --------------------------------------------------------------------------------------

def ref_layer_norm(xs, gamma, beta, eps):
    x = xs.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mean) * rstd * gamma + beta, mean[:, 0], rstd[:, 0]


def ref_layer_norm_backward(x, gamma, dy, eps):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy * gamma
    dx = rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------

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
# backward
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,d", [(1, 1), (7, 48), (100, 257)])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_layer_norm_backward_matches_numpy(n, d, accumulate, threads):
    rng = make_rng("ln-bw", n, d, accumulate)
    x = f32(rng.standard_normal((n, d)) * 3 + 1)
    gamma, beta = f32(rng.uniform(0.5, 1.5, d)), f32(rng.standard_normal(d))
    dy = f32(rng.standard_normal((n, d)))
    mean, rstd = np.zeros(n, np.float32), np.zeros(n, np.float32)
    norm.layer_norm_forward(x.copy(), None, gamma, beta, np.zeros_like(x), 1e-5, mean, rstd)
    dx0 = f32(rng.standard_normal((n, d)))
    dx, dg, db = dx0.copy(), np.ones(d, np.float32), np.ones(d, np.float32)
    norm.layer_norm_backward(x, mean, rstd, gamma, dy, dx, dg, db, accumulate=accumulate, n_threads=threads)
    want_dx, want_dg, want_db = ref_layer_norm_backward(x, gamma, dy, 1e-5)
    assert_grad_close(dx, want_dx + (dx0 if accumulate else 0), atol=1e-4 if d == 1 else GRAD_ATOL)
    assert_grad_close(dg, 1 + want_dg)
    assert_grad_close(db, 1 + want_db)


@requires_torch
def test_layer_norm_backward_matches_torch_and_aliases():
    rng = make_rng("ln-bw-torch")
    x = f32(rng.standard_normal((30, 64)) * 2)
    gamma, beta, dy = f32(rng.uniform(0.5, 1.5, 64)), f32(rng.standard_normal(64)), f32(rng.standard_normal((30, 64)))
    mean, rstd = np.zeros(30, np.float32), np.zeros(30, np.float32)
    norm.layer_norm_forward(x.copy(), None, gamma, beta, np.zeros_like(x), 1e-5, mean, rstd)
    tx, tg, tb = t64(x), t64(gamma), t64(beta)
    (F.layer_norm(tx, (64,), tg, tb, 1e-5) * torch.from_numpy(dy.astype(np.float64))).sum().backward()
    g = dy.copy()  # dx written over dy
    dg, db = np.zeros(64, np.float32), np.zeros(64, np.float32)
    norm.layer_norm_backward(x, mean, rstd, gamma, g, g, dg, db)
    assert_grad_close(g, tx.grad.numpy())
    assert_grad_close(dg, tg.grad.numpy())
    assert_grad_close(db, tb.grad.numpy())


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------

def _ln(x=None, r=None, g=None, b=None, out=None, **kw):
    x = zeros(4, 6) if x is None else x
    g = zeros(6) if g is None else g
    b = zeros(6) if b is None else b
    out = zeros(4, 6) if out is None else out
    return lambda: norm.layer_norm_forward(x, r, g, b, out, 1e-5, **kw)


BAD_INPUTS = [
    ("ln_gamma_len", _ln(g=zeros(5)), ValueError, "gamma and beta"),
    ("ln_beta_len", _ln(b=zeros(7)), ValueError, "gamma and beta"),
    ("ln_out_shape", _ln(out=zeros(4, 5)), ValueError, "out must"),
    ("ln_residual_shape", _ln(r=zeros(3, 6)), ValueError, "residual must"),
    ("ln_mean_without_rstd", _ln(mean=zeros(4)), ValueError, "both mean and rstd"),
    ("ln_stats_len", _ln(mean=zeros(3), rstd=zeros(3)), ValueError, "entries"),
    ("ln_x_float64", _ln(x=zeros(4, 6, dtype=np.float64)), ValueError, "dtype"),
    ("ln_x_not_contig", _ln(x=zeros(4, 12)[:, ::2]), ValueError, "contiguous"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(BAD_INPUTS))
def test_bad_input_raises(call, exc, match):
    check_bad_input(call, exc, match)
