"""A Transformer whose sources are float vectors (speech frames, say; n_src_features > 0):
logits and every gradient against a float64 nn.Transformer with the same weights; the Trainer
and generate take vector sources; bad input."""
import math

import numpy as np
import pytest

from _shared import check_bad_input, make_rng
from cyformer import Trainer, Transformer, TransformerConfig
from cyformer._engine.embedding import sinusoidal_table
from cyformer.layers import TrainContext
from cyformer.layers.base import named_views
from cyformer.model import Workspace, make_batch

torch = pytest.importorskip("torch")

F, V, D = 6, 17, 16


def _config(**kw):
    base = dict(src_vocab_size=1, tgt_vocab_size=V, d_model=D, n_heads=2, d_ff=32, n_encoder_layers=2,
                n_decoder_layers=2, max_len=40, n_src_features=F, dropout=0.0, final_norm=True)
    base.update(kw)
    return TransformerConfig(**base)


def test_vector_source_logits_and_gradients_match_torch():
    model = Transformer(_config(), seed=2)
    rng = make_rng("vector-src")
    for name, v in model.parameters().items():
        if name.endswith("bias"):
            v[...] = rng.normal(0, 0.1, v.shape)
    srcs = [rng.standard_normal((n, F)).astype(np.float32) for n in (7, 4)]
    tgts = [[1, 5, 6, 7], [1, 9, 3, 3, 8, 2]]
    src_b = model._src_batch(srcs, None)
    tgt_b = make_batch(tgts, vocab_size=V, max_len=40, name="tgt")
    grads = np.zeros_like(model.params)
    tc = TrainContext(Workspace(), named_views(grads, model.layout), 1, 0, False, 0.0)
    logits, rec = model.forward_train(src_b, tgt_b, tc)
    got = logits.copy()
    dlogits = rng.standard_normal(logits.shape).astype(np.float32)
    model.backward(rec, dlogits.copy(), tc)
    np.testing.assert_allclose(model.forward(srcs, tgts)[1, :6], got[4:], atol=1e-5)

    from torch import nn
    tr = nn.Transformer(D, 2, 2, 2, 32, dropout=0.0, batch_first=True, dtype=torch.float64)
    p = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in model.parameters().items()}
    tr.load_state_dict({k: p[k] for k in tr.state_dict()})
    pe = torch.tensor(sinusoidal_table(40, D).astype(np.float64))
    outs = []
    for s, t in zip(srcs, tgts):
        x = torch.tensor(s.astype(np.float64)) @ p["encoder.input_proj.weight"].T + p["encoder.input_proj.bias"]
        memory = tr.encoder((x + pe[:len(s)])[None])
        y = p["decoder.embed_tokens.weight"][torch.tensor(t)] * math.sqrt(D) + pe[:len(t)]
        causal = nn.Transformer.generate_square_subsequent_mask(len(t), dtype=torch.float64)
        h = tr.decoder(y[None], memory, tgt_mask=causal, tgt_is_causal=True)[0]
        outs.append(h @ p["decoder.embed_tokens.weight"].T)
    ref = torch.cat(outs)
    (ref * torch.tensor(dlogits.astype(np.float64))).sum().backward()
    np.testing.assert_allclose(got, ref.detach().numpy(), atol=1e-4, rtol=1e-4)
    module = {k: v.grad for k, v in tr.named_parameters()}
    g = named_views(grads, model.layout)
    for name in g:
        want = (module[name] if name in module else p[name].grad).numpy()
        scale = max(np.abs(want).max(), 1e-3)
        np.testing.assert_allclose(g[name], want, atol=1e-4 * scale, rtol=1e-4, err_msg=name)


def test_vector_sources_train_generate_and_round_trip(tmp_path):
    rng = make_rng("vector-train")
    model = Transformer(_config(positional="learned", n_encoder_layers=1, n_decoder_layers=1), seed=0)
    # the target spells which of the F features is largest in each of 3 segments
    pairs = []
    for _ in range(64):
        x = rng.standard_normal((9, F)).astype(np.float32)
        pairs.append((x, [3 + int(x[i * 3:(i + 1) * 3].sum(0).argmax()) for i in range(3)]))
    trainer = Trainer(model, lr=3e-3, schedule="constant", seed=0)
    before = trainer.evaluate(pairs)["loss"]
    trainer.fit(pairs, max_steps=30, batch_tokens=300, progress=False)
    assert trainer.evaluate(pairs)["loss"] < before
    out = model.generate([p[0] for p in pairs[:4]], beam_size=2, max_length=6)
    model.save_pretrained(tmp_path / "m")
    again = Transformer.from_pretrained(tmp_path / "m")
    assert [r.sequences for r in again.generate([p[0] for p in pairs[:4]], beam_size=2, max_length=6)] == \
        [r.sequences for r in out]


def test_vector_source_bad_input():
    model = Transformer(_config(), seed=0)
    check_bad_input(lambda: model.generate([[1, 2, 3]]), ValueError, "features")
    check_bad_input(lambda: model.generate([np.zeros((3, F + 2))]), ValueError, "features per vector")
    check_bad_input(lambda: _config(share_embeddings=True, src_vocab_size=V), ValueError, "share_embeddings")
    check_bad_input(lambda: _config(n_src_features=-1), ValueError, "n_src_features")
