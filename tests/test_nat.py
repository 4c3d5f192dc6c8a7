"""Non-autoregressive translation (cyformer.nat): logits and every gradient (length predictor
and non-causal decoder included) against a float64 nn.Transformer with the same weights;
uniform copy positions; training with the Trainer, generation, round trip, bad input."""
import math

import numpy as np
import pytest

from _shared import check_bad_input, make_rng
from cyformer import Trainer
from cyformer._engine.embedding import sinusoidal_table
from cyformer.layers import TrainContext
from cyformer.layers.base import named_views
from cyformer.model import Workspace, make_batch
from cyformer.nat import NATConfig, NATransformer, copy_positions

torch = pytest.importorskip("torch")

V, D = 23, 16


def _config(**kw):
    base = dict(src_vocab_size=V, d_model=D, n_heads=2, d_ff=32, n_encoder_layers=2, n_decoder_layers=2,
                max_len=40, max_target_len=14, dropout=0.0, final_norm=True, length_loss_weight=0.5)
    base.update(kw)
    return NATConfig(**base)


def test_copy_positions_spread_the_source_uniformly():
    np.testing.assert_array_equal(copy_positions(np.array([4]), np.array([8])), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(copy_positions(np.array([6, 3]), np.array([3, 1])), [1, 3, 5, 1])


@pytest.mark.parametrize("norm_first", [False, True])
def test_nat_logits_and_gradients_match_torch(norm_first):
    c = _config(norm_first=norm_first)
    model = NATransformer(c, seed=3)
    rng = make_rng("nat", norm_first)
    for name, v in model.parameters().items():   # non-zero biases, norms away from 1
        if name.endswith("bias"):
            v[...] = rng.normal(0, 0.1, v.shape)
        elif "norm" in name:
            v[...] = rng.uniform(0.5, 1.5, v.shape)
    srcs = [rng.integers(3, V, size=n).tolist() for n in (5, 9, 3)]
    tgt_len = np.array([7, 4, 11], dtype=np.int32)
    src_b = make_batch(srcs, vocab_size=V, max_len=c.max_len)
    tgt_b = make_batch([[3] * n for n in tgt_len], vocab_size=V, max_len=c.max_len, name="tgt")
    grads = np.zeros_like(model.params)
    tc = TrainContext(Workspace(), named_views(grads, model.layout), 1, 0, False, 0.0)
    logits, rec = model.forward_train(src_b, tgt_b, tc)
    dlogits = rng.standard_normal(logits.shape).astype(np.float32)
    got_logits = logits.copy()
    model.backward(rec, dlogits.copy(), tc)

    from torch import nn
    tr = nn.Transformer(D, 2, 2, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first,
                        dtype=torch.float64)
    params = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in model.parameters().items()}
    tr.load_state_dict({k: params[k] for k in tr.state_dict()}, strict=True)
    # load_state_dict copies; use the module's own parameters for autograd and read their grads
    pe = torch.tensor(sinusoidal_table(c.max_len, D).astype(np.float64))
    E_src, E_tgt = params["encoder.embed_tokens.weight"], params["decoder.embed_tokens.weight"]
    W_len, b_len = params["length_predictor.weight"], params["length_predictor.bias"]
    outs, length_loss = [], 0.0
    for s, t in zip(srcs, tgt_len.tolist()):
        x = E_src[torch.tensor(s)] * math.sqrt(D) + pe[:len(s)]
        memory = tr.encoder(x[None])[0]
        z = memory.mean(0) @ W_len.T + b_len
        length_loss = length_loss - torch.log_softmax(z, 0)[t]
        copy = [s[min(int((i + 0.5) * len(s) / t), len(s) - 1)] for i in range(t)]
        y = E_src[torch.tensor(copy)] * math.sqrt(D) + pe[:t]
        h = tr.decoder(y[None], memory[None])[0]
        outs.append(h @ E_tgt.T)
    ref = torch.cat(outs)
    total = (ref * torch.tensor(dlogits.astype(np.float64))).sum() + c.length_loss_weight * length_loss / len(srcs)
    total.backward()
    np.testing.assert_allclose(got_logits, ref.detach().numpy(), atol=1e-4, rtol=1e-4)
    g = named_views(grads, model.layout)
    module_grads = {k: p.grad for k, p in tr.named_parameters()}
    for name in g:
        want = module_grads[name] if name in module_grads else params[name].grad
        want = want.numpy()
        scale = max(np.abs(want).max(), 1e-3)
        np.testing.assert_allclose(g[name], want, atol=1e-4 * scale, rtol=1e-4, err_msg=name)
    assert model.last_length_loss == pytest.approx(float(length_loss.detach()) / len(srcs), rel=1e-4)


def _reverse_pairs(rng, n):
    pairs = []
    for _ in range(n):
        s = rng.integers(3, V, size=int(rng.integers(3, 9))).tolist()
        pairs.append((s, s[::-1]))
    return pairs


def test_nat_trains_with_the_trainer_and_generates(tmp_path):
    rng = make_rng("nat-train")
    model = NATransformer(_config(n_encoder_layers=1, n_decoder_layers=1, d_model=32, n_heads=4, d_ff=64,
                                  length_loss_weight=1.0), seed=0)
    trainer = Trainer(model, lr=2e-3, schedule="constant", label_smoothing=0.0, seed=0)
    train = _reverse_pairs(rng, 400)
    first = trainer.evaluate(train[:50])["loss"]
    trainer.fit(train, max_steps=150, batch_tokens=600, progress=False)
    assert trainer.evaluate(train[:50])["loss"] < 0.6 * first
    # lengths are learned first: the predicted length is right for most sources
    lengths = model.predict_lengths([s for s, _ in train[:50]])[:, 0]
    assert np.mean(np.abs(lengths - np.array([len(t) + 1 for _, t in train[:50]])) <= 1) > 0.8
    out = model.generate([s for s, _ in train[:5]], length_beam=3)
    assert len(out) == 5 and all(isinstance(r.sequences[0], list) for r in out)
    assert all(2 not in r.sequences[0] for r in out)       # EOS (id 2) ends a sequence and is not kept
    model.save_pretrained(tmp_path / "nat")
    again = NATransformer.from_pretrained(tmp_path / "nat")
    assert [r.sequences for r in again.generate([s for s, _ in train[:5]], length_beam=3)] == \
        [r.sequences for r in out]


def test_nat_bad_input(tmp_path):
    model = NATransformer(_config(), seed=0)
    check_bad_input(lambda: model.generate([[3, 4]], beam_size=0), ValueError, "length_beam")
    check_bad_input(lambda: model.generate([[3, 4]], sampling_topk=5), TypeError, "sampling_topk")
    check_bad_input(lambda: model.start_decoding([[3, 4]]), TypeError, "one pass")
    check_bad_input(lambda: _config(max_target_len=100), ValueError, "max_target_len")
    trainer = Trainer(model, seed=0)
    check_bad_input(lambda: trainer.step([[3, 4]], [[5] * 20]), ValueError, "max_target_len")
    from cyformer import Transformer, TransformerConfig
    Transformer(TransformerConfig(src_vocab_size=V, d_model=D, n_heads=2, d_ff=32, n_encoder_layers=1,
                                  n_decoder_layers=1, max_len=40)).save_pretrained(tmp_path / "ar")
    check_bad_input(lambda: NATransformer.from_pretrained(tmp_path / "ar"), ValueError, "autoregressive")
