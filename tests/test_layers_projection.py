"""FeatureProjection (continuous inputs -> d_model, plus positions) forward and backward
against float64 torch autograd; make_feature_batch's layouts and its bad input."""
import numpy as np
import pytest

from _shared import assert_close, assert_grad_close, check_bad_input, make_rng
from cyformer.layers import TrainContext
from cyformer.layers.base import derive_layout, named_views
from cyformer.layers.projection import FeatureProjection
from cyformer.model import FeatureBatch, Workspace, make_feature_batch

torch = pytest.importorskip("torch")

F, D, MAX_LEN = 6, 8, 12


def _layer(positional):
    layer = FeatureProjection("input_proj", F, D, max_len=MAX_LEN, positional=positional)
    specs = derive_layout(list(layer.weights()))
    layout = [(s.name, s.shape) for s in specs]
    total = sum(int(np.prod(s)) for _, s in layout)
    params = make_rng("proj", positional).standard_normal(total).astype(np.float32)
    grads = np.zeros(total, dtype=np.float32)
    views = named_views(params, layout)
    layer.bind(views)
    return layer, views, named_views(grads, layout)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "none"])
def test_projection_forward_backward_match_torch(positional):
    layer, views, grads = _layer(positional)
    rng = make_rng("proj-data", positional)
    sets = [rng.standard_normal((n, F)).astype(np.float32) for n in (3, 7)]
    batch = make_feature_batch(sets, n_features=F, max_len=MAX_LEN)
    out = np.zeros((len(batch.features), D), dtype=np.float32)
    tc = TrainContext(Workspace(), grads, 1, 0, False, 0.0)
    rec = layer.forward_train(batch.features, batch, out, tc)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    layer.backward(rec, dout.copy(), tc)

    w = torch.tensor(views["input_proj.weight"].astype(np.float64), requires_grad=True)
    b = torch.tensor(views["input_proj.bias"].astype(np.float64), requires_grad=True)
    x = torch.tensor(np.concatenate(sets).astype(np.float64))
    ref = x @ w.T + b
    pos_idx = torch.tensor(np.concatenate([np.arange(len(s)) for s in sets]))
    table = None
    if positional == "learned":
        table = torch.tensor(views["input_proj.positions.weight"].astype(np.float64), requires_grad=True)
    elif positional == "sinusoidal":
        table = torch.tensor(layer.positions.astype(np.float64))
    if table is not None:
        ref = ref + table[pos_idx]
    (ref * torch.tensor(dout.astype(np.float64))).sum().backward()
    assert_close(out, ref.detach().numpy())
    assert_grad_close(grads["input_proj.weight"], w.grad.numpy(), rtol=1e-4)
    assert_grad_close(grads["input_proj.bias"], b.grad.numpy(), rtol=1e-4)
    if positional == "learned":
        assert_grad_close(grads["input_proj.positions.weight"], table.grad.numpy(), rtol=1e-4)


def test_feature_batch_layouts_agree():
    rng = make_rng("layouts")
    padded = rng.standard_normal((2, 5, F)).astype(np.float32)
    a = make_feature_batch(padded, [5, 3], n_features=F, max_len=MAX_LEN)
    b = make_feature_batch([padded[0], padded[1, :3]], n_features=F, max_len=MAX_LEN)
    assert isinstance(a, FeatureBatch) and a.ids.shape == (8,)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.length, [5, 3])
    np.testing.assert_array_equal(a.positions, [0, 1, 2, 3, 4, 0, 1, 2])
    one = make_feature_batch(padded[0], n_features=F, max_len=MAX_LEN)
    assert one.size == 1 and one.features.shape == (5, F)
    t = make_feature_batch(torch.from_numpy(padded), n_features=F, max_len=MAX_LEN)
    np.testing.assert_array_equal(t.features, padded.reshape(-1, F))
    m = make_feature_batch([padded[0]], n_features=F, max_len=MAX_LEN, mask=np.ones((1, 5, 5), bool))
    assert m.mask.dtype == np.uint8


@pytest.mark.parametrize("call, exc, match", [
    (lambda: make_feature_batch([], n_features=F, max_len=MAX_LEN), ValueError, "empty batch"),
    (lambda: make_feature_batch([np.zeros((3, F + 1))], n_features=F, max_len=MAX_LEN), ValueError,
     "features per vector"),
    (lambda: make_feature_batch([np.zeros((0, F))], n_features=F, max_len=MAX_LEN), ValueError, "empty"),
    (lambda: make_feature_batch([np.zeros((13, F))], n_features=F, max_len=MAX_LEN), ValueError, "max_len"),
    (lambda: make_feature_batch([np.full((2, F), np.nan)], n_features=F, max_len=MAX_LEN), ValueError, "NaN"),
    (lambda: make_feature_batch([np.array([["a"] * F])], n_features=F, max_len=MAX_LEN), TypeError, "numbers"),
    (lambda: make_feature_batch(np.zeros((2, 4, F)), [5, 1], n_features=F, max_len=MAX_LEN), ValueError,
     "exceeds"),
    (lambda: make_feature_batch(np.zeros(F), n_features=F, max_len=MAX_LEN), ValueError, "batch, length"),
    (lambda: make_feature_batch([np.zeros((4, F))], n_features=F, max_len=MAX_LEN, mask=np.ones((1, 2, 2))),
     ValueError, "mask must be"),
    (lambda: make_feature_batch([np.zeros((4, F))], [4], n_features=F, max_len=MAX_LEN), ValueError, "lengths"),
    (lambda: FeatureProjection("p", F, D, max_len=4, positional="rotary"), ValueError, "positional"),
])
def test_bad_feature_input(call, exc, match):
    check_bad_input(call, exc, match)
