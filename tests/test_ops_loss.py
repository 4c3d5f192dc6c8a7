"""loss.cross_entropy (log-softmax, label smoothing, ignored labels; loss and gradient in one
pass) against a float64 NumPy reference and torch autograd."""
import numpy as np
import pytest

from _shared import assert_grad_close, f32, make_rng, t64
from cyformer._engine import loss

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None


def ref_cross_entropy(logits, labels, eps, ignore):
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) + x.max(1, keepdims=True)
    logp = x - lse
    V = x.shape[1]
    live = labels != ignore
    safe = np.where(live, labels, 0)
    nll = -logp[np.arange(len(labels)), safe]
    loss_rows = (1 - eps) * nll - eps * logp.mean(axis=1)
    target = np.full(x.shape, eps / V)
    target[np.arange(len(labels)), safe] += 1 - eps
    grad = np.exp(logp) - target
    return np.where(live, loss_rows, 0), np.where(live, nll, 0), np.where(live[:, None], grad, 0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("V", [5, 1000])
def test_cross_entropy_matches_numpy_and_torch(eps, V):
    rng = make_rng("ce", eps, V)
    logits = f32(rng.standard_normal((40, V)) * 4)
    labels = rng.integers(0, V, 40).astype(np.int32)
    labels[[3, 9]] = -100
    want_loss, want_nll, want_grad = ref_cross_entropy(logits, labels, eps, -100)
    n = int((labels != -100).sum())
    g = logits.copy()
    losses, nlls = loss.cross_entropy(g, labels, eps, -100, True, 1.0 / n, n_threads=2)
    assert_grad_close(losses, want_loss)
    assert_grad_close(nlls, want_nll)
    assert_grad_close(g, want_grad / n, atol=1e-7)
    plain, _ = loss.cross_entropy(logits.copy(), labels, eps, -100)   # no gradient: logits untouched
    np.testing.assert_array_equal(plain, losses)
    if torch is not None:
        tl = t64(logits)
        ref = F.cross_entropy(tl, torch.from_numpy(labels.astype(np.int64)), ignore_index=-100,
                              label_smoothing=eps)
        ref.backward()
        assert abs(losses.sum(dtype=np.float64) / n - ref.item()) < 1e-5
        assert_grad_close(g, tl.grad.numpy(), atol=1e-7)


def test_cross_entropy_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        loss.cross_entropy(np.zeros((2, 4), np.float32), np.array([1, 4], np.int32))
    with pytest.raises(ValueError, match="entries"):
        loss.cross_entropy(np.zeros((2, 4), np.float32), np.array([1], np.int32))
