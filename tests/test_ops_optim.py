"""The optimizer kernels over one flat buffer (adam_update with L2 or decoupled weight decay,
sgd_update with momentum and Nesterov) against a float64 NumPy reference and torch.optim;
sum_squares and scale (gradient clipping) against float64 and one thread."""
import math

import numpy as np
import pytest

from _shared import assert_grad_close, f32, make_rng
from cyformer._engine import optim

try:
    import torch
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None


def ref_adam(p, grads, lr, b1, b2, eps, wd, decoupled):
    p = p.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if wd and decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return p


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.01, False), (0.1, True)])
def test_adam_matches_numpy_and_torch(wd, decoupled):
    rng = make_rng("adam", wd, decoupled)
    p0 = f32(rng.standard_normal(5000))
    grads = [f32(rng.standard_normal(5000)) for _ in range(4)]
    p, m, v = p0.copy(), np.zeros(5000, np.float32), np.zeros(5000, np.float32)
    for t, g in enumerate(grads, start=1):
        optim.adam_update(p, g, m, v, t, 1e-3, 0.9, 0.98, 1e-9, wd, decoupled, n_threads=2)
    assert_grad_close(p, ref_adam(p0, grads, 1e-3, 0.9, 0.98, 1e-9, wd, decoupled), atol=1e-6)
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)([tp], lr=1e-3, betas=(0.9, 0.98), eps=1e-9,
                                                                     weight_decay=wd)
        for g in grads:
            tp.grad = torch.from_numpy(g)
            opt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2)])
def test_sgd_matches_torch(momentum, nesterov, wd):
    if torch is None:
        pytest.skip("torch is not installed")
    rng = make_rng("sgd", momentum, nesterov, wd)
    p0 = f32(rng.standard_normal(3000))
    p, buf = p0.copy(), np.zeros(3000, np.float32)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.SGD([tp], lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    for step in range(4):
        g = f32(rng.standard_normal(3000))
        optim.sgd_update(p, g, buf, 0.05, momentum, 0.0, wd, nesterov, step == 0)
        tp.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=0, atol=1e-6)


def test_sum_squares_is_exact_enough_and_thread_independent():
    x = f32(make_rng("ss").standard_normal(300_001))
    one, two = optim.sum_squares(x, 1), optim.sum_squares(x, 2)
    assert one == two
    assert abs(one - float((x.astype(np.float64) ** 2).sum())) < 1e-9 * one
    assert optim.sum_squares(np.zeros(0, np.float32)) == 0.0
    optim.scale(x, 0.5, 2)
    assert abs(optim.sum_squares(x) - one / 4) < 1e-9 * one
