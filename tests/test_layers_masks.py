"""Self-attention with a local window (speech frames) and with a per-example boolean mask
(graph edges), through the layer library: forward and gradients against float64 PyTorch
autograd on the same weights, one sequence at a time."""
import numpy as np
import pytest

from _shared import assert_close, assert_grad_close, make_rng
from cyformer.features import adjacency_mask
from cyformer.layers import TrainContext
from cyformer.layers.attention import MultiHeadAttention
from cyformer.layers.base import derive_layout, named_views
from cyformer.model import Batch, Workspace

torch = pytest.importorskip("torch")

D, H = 16, 2
LENGTHS = [5, 9]


def _layer(window=None):
    mha = MultiHeadAttention("attn", D, H, window=window)
    specs = derive_layout(list(mha.weights()))
    layout = [(s.name, s.shape) for s in specs]
    total = sum(int(np.prod(s)) for _, s in layout)
    rng = make_rng("masks", window)
    params = (rng.standard_normal(total) * 0.3).astype(np.float32)
    grads = np.zeros(total, dtype=np.float32)
    mha.bind(named_views(params, layout))
    return mha, named_views(params, layout), named_views(grads, layout)


def _reference(x, views, allowed, dout):
    """float64 torch: per-sequence MHA under ``allowed[b]`` [L, L]; returns (out, grads)."""
    t = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in views.items()}
    xs = torch.tensor(x.astype(np.float64), requires_grad=True)
    outs, start = [], 0
    for b, n in enumerate(LENGTHS):
        xb = xs[start:start + n]
        qkv = xb @ t["attn.in_proj_weight"].T + t["attn.in_proj_bias"]
        q, k, v = (qkv[:, i * D:(i + 1) * D].reshape(n, H, D // H).transpose(0, 1) for i in range(3))
        s = q @ k.transpose(1, 2) / np.sqrt(D // H)
        s = s.masked_fill(~torch.tensor(allowed[b][:n, :n]), float("-inf"))
        ctx = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(n, D)
        outs.append(ctx @ t["attn.out_proj.weight"].T + t["attn.out_proj.bias"])
        start += n
    out = torch.cat(outs)
    (out * torch.tensor(dout.astype(np.float64))).sum().backward()
    return out.detach().numpy(), xs.grad.numpy(), {k: v.grad.numpy() for k, v in t.items()}


def _run(mha, grads, x, batch, dout):
    ws = Workspace()
    tc = TrainContext(ws, grads, 1, 0, False, 0.0)
    out = np.zeros_like(x)
    rec = mha.forward_train(x, batch, out, tc)
    infer = np.zeros_like(x)
    mha.forward(x, batch, infer, Workspace(), 1)
    np.testing.assert_array_equal(infer, out)       # inference and training passes agree
    dx = np.zeros_like(x)
    mha.backward(rec, dout.copy(), dx, tc)
    return out, dx


@pytest.mark.parametrize("kind", ["window", "graph"])
def test_masked_self_attention_forward_and_backward_match_torch(kind):
    rng = make_rng("masks-data", kind)
    n = sum(LENGTHS)
    x = rng.standard_normal((n, D)).astype(np.float32)
    dout = rng.standard_normal((n, D)).astype(np.float32)
    length = np.array(LENGTHS, dtype=np.int32)
    T = max(LENGTHS)
    if kind == "window":
        mha, views, grads = _layer(window=2)
        batch = Batch(np.zeros(n, dtype=np.int32), length)
        i = np.arange(T)
        allowed = [np.abs(i[:, None] - i[None, :]) <= 2] * len(LENGTHS)
    else:
        mha, views, grads = _layer()
        edges = [[(0, 1), (1, 2), (3, 4)], [(0, 8), (2, 5), (5, 6), (6, 7), (1, 3)]]
        mask = adjacency_mask(edges, LENGTHS)
        batch = Batch(np.zeros(n, dtype=np.int32), length, mask=mask)
        allowed = [m.astype(bool) for m in mask]
    out, dx = _run(mha, grads, x, batch, dout)
    ref_out, ref_dx, ref_grads = _reference(x, views, allowed, dout)
    assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert_grad_close(dx, ref_dx, rtol=1e-4, atol=1e-5)
    for name, g in ref_grads.items():
        assert_grad_close(grads[name], g, rtol=1e-4, atol=1e-5)


def test_window_zero_attends_to_itself_only():
    mha, views, grads = _layer(window=0)
    rng = make_rng("window0")
    x = rng.standard_normal((sum(LENGTHS), D)).astype(np.float32)
    out = np.zeros_like(x)
    mha.forward(x, Batch(np.zeros(len(x), dtype=np.int32), np.array(LENGTHS, dtype=np.int32)), out,
                Workspace(), 1)
    v = x @ views["attn.in_proj_weight"][2 * D:].T + views["attn.in_proj_bias"][2 * D:]
    assert_close(out, v @ views["attn.out_proj.weight"].T + views["attn.out_proj.bias"], atol=1e-5)


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        MultiHeadAttention("a", D, H, window=-3)
