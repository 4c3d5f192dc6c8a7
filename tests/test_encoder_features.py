"""Encoders of vector sets (n_features > 0): a learned input projection plus positions,
local-window and graph-edge attention; forward, logits and every parameter's gradient
against a float64 PyTorch model (nn.TransformerEncoder) with the same weights, one example
at a time; save/load round trip and bad input."""
import numpy as np
import pytest

from _shared import check_bad_input, make_rng
from cyformer import Encoder, EncoderConfig
from cyformer.layers import TrainContext
from cyformer.layers.base import named_views
from cyformer.model import Workspace

torch = pytest.importorskip("torch")

F = 5


def _config(**kw):
    base = dict(vocab_size=1, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=24, type_vocab_size=0,
                n_features=F, embedding_norm=False, dropout=0.0, head="token_classification", n_labels=3)
    base.update(kw)
    return EncoderConfig(**base)


def _torch_model(model):
    c = model.config
    layer = torch.nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.d_ff, dropout=0.0, activation="gelu",
                                             layer_norm_eps=c.layer_norm_eps, batch_first=True,
                                             norm_first=c.norm_first, dtype=torch.float64)
    final = torch.nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, dtype=torch.float64) if c.norm_first else None
    stack = torch.nn.TransformerEncoder(layer, c.n_layers, norm=final, enable_nested_tensor=False)
    state = {k[len("encoder."):]: torch.tensor(v.astype(np.float64))
             for k, v in model.parameters().items() if k.startswith("encoder.")}
    stack.load_state_dict(state)
    p = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in model.parameters().items()
         if not k.startswith("encoder.")}
    return stack, p


def _reference(model, sets, allowed, dlogits):
    stack, p = _torch_model(model)
    outs = []
    for x, ok in zip(sets, allowed):
        n = len(x)
        h = torch.tensor(x.astype(np.float64)) @ p["input_proj.weight"].T + p["input_proj.bias"]
        if "input_proj.positions.weight" in p:
            h = h + p["input_proj.positions.weight"][:n]
        block = None if ok is None else torch.tensor(~ok[:n, :n])   # True = may NOT attend (torch)
        h = stack(h[None], mask=block)[0]
        outs.append(h @ p["classifier.weight"].T + p["classifier.bias"])
    logits = torch.cat(outs)
    (logits * torch.tensor(dlogits.astype(np.float64))).sum().backward()
    grads = {k: v.grad.numpy() for k, v in p.items()}
    grads.update({"encoder." + k: v.grad.numpy() for k, v in stack.named_parameters()})
    return logits.detach().numpy(), grads


@pytest.mark.parametrize("kind", ["full", "window", "graph", "pre-ln"])
def test_feature_encoder_matches_torch_forward_and_gradients(kind):
    rng = make_rng("feature-encoder", kind)
    cfg = _config(attention_window=3 if kind == "window" else None, norm_first=kind == "pre-ln",
                  positional="none" if kind == "graph" else "learned")
    model = Encoder(cfg, seed=1)
    sets = [rng.standard_normal((n, F)).astype(np.float32) for n in (6, 11, 9)]
    edges = None
    if kind == "graph":
        edges = [rng.integers(0, len(s), size=(len(s), 2)) for s in sets]
        from cyformer.features import adjacency_mask
        allowed = [m.astype(bool) for m in adjacency_mask(edges, [len(s) for s in sets])]
    elif kind == "window":
        i = np.arange(24)
        allowed = [np.abs(i[:, None] - i[None, :]) <= 3] * len(sets)
    else:
        allowed = [None] * len(sets)
    logits = model.classify(sets, edges=edges)
    n_total = sum(len(s) for s in sets)
    dlogits = rng.standard_normal((n_total, 3)).astype(np.float32)
    ref_logits, ref_grads = _reference(model, sets, allowed, dlogits)
    packed = np.concatenate([logits[b, :len(s)] for b, s in enumerate(sets)])
    np.testing.assert_allclose(packed, ref_logits, atol=1e-4, rtol=1e-4)

    batch = model._batch(sets, None, None, edges)
    grads = np.zeros_like(model.params)
    tc = TrainContext(Workspace(), named_views(grads, model.layout), 1, 0, False, 0.0)
    out, rec = model.forward_train(batch, None, tc)
    np.testing.assert_allclose(out, packed, atol=1e-5)
    model.backward(rec, dlogits.copy(), tc)
    g = named_views(grads, model.layout)
    for name, want in ref_grads.items():
        scale = max(np.abs(want).max(), 1e-3)
        np.testing.assert_allclose(g[name], want, atol=1e-4 * scale, rtol=1e-4, err_msg=name)


def test_feature_encoder_padded_input_sequence_head_and_round_trip(tmp_path):
    rng = make_rng("feature-rt")
    model = Encoder(_config(head="sequence_classification", pooling="mean", positional="sinusoidal"), seed=2)
    padded = rng.standard_normal((2, 7, F)).astype(np.float32)
    a = model.classify(padded, [7, 4])
    b = model.classify([padded[0], padded[1, :4]])
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 3)
    model.save_pretrained(tmp_path / "m")
    again = Encoder.from_pretrained(tmp_path / "m")
    assert again.config.n_features == F and again.config.positional == "sinusoidal"
    np.testing.assert_array_equal(again.classify(padded, [7, 4]), a)
    np.testing.assert_allclose(again.embed(padded, [7, 4]).shape, (2, 16))


@pytest.mark.parametrize("call, exc, match", [
    (lambda m: m.forward([np.zeros((3, F + 1))]), ValueError, "features per vector"),
    (lambda m: m.forward([[1, 2, 3]]), ValueError, "features"),
    (lambda m: m.forward([np.zeros((3, F))], edges=[[(0, 5)]]), ValueError, "outside its 3 nodes"),
    (lambda m: m.forward([np.zeros((3, F))], edges=[[]], mask=np.ones((1, 3, 3))), ValueError, "not both"),
    (lambda m: m.forward([np.zeros((3, F))], token_type_ids=[[0, 0, 0]]), ValueError, "token_type_ids"),
])
def test_feature_encoder_bad_input(call, exc, match):
    model = Encoder(_config(), seed=0)
    check_bad_input(lambda: call(model), exc, match)


def test_feature_config_errors():
    check_bad_input(lambda: _config(type_vocab_size=2), ValueError, "type_vocab_size=0")
    check_bad_input(lambda: _config(attention_window=-1), ValueError, "attention_window")
    check_bad_input(lambda: _config(positional="rotary"), ValueError, "positional")
    check_bad_input(lambda: EncoderConfig(positional="none"), ValueError, "needs n_features")
    token_model = Encoder(EncoderConfig(vocab_size=10, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=8))
    check_bad_input(lambda: token_model.forward([[1, 2]], edges=[[(0, 1)]]), ValueError, "feature vectors")
