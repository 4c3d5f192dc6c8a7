"""The notes' training tips: guided attention's penalty and gradients against torch autograd,
scheduled sampling / noisy teacher forcing (what is replaced, seeded, resumable), bad options."""
import numpy as np
import pytest

from _shared import check_bad_input, make_rng
from cyformer import Trainer, Transformer, TransformerConfig
from cyformer.layers.attention import guided_attention
from cyformer.model import make_batch

torch = pytest.importorskip("torch")


def test_guided_attention_penalty_and_gradients_match_torch():
    rng = make_rng("guide")
    d, h = 12, 3
    tgt = make_batch([[1] * 5, [1] * 3], vocab_size=4, max_len=16, name="tgt")
    src = make_batch([[1] * 7, [1] * 4], vocab_size=4, max_len=16)
    q = rng.standard_normal((8, d)).astype(np.float32)
    k = rng.standard_normal((11, d)).astype(np.float32)
    loss, dq, dk = guided_attention(q, k, tgt, src, h, 0.7, 0.25)
    tq, tk = torch.tensor(q.astype(np.float64), requires_grad=True), torch.tensor(k.astype(np.float64), requires_grad=True)
    total = 0.0
    for (t0, nt), (s0, ns) in zip([(0, 5), (5, 3)], [(0, 7), (7, 4)]):
        qh = tq[t0:t0 + nt].reshape(nt, h, d // h).transpose(0, 1)
        kh = tk[s0:s0 + ns].reshape(ns, h, d // h).transpose(0, 1)
        a = torch.softmax(qh @ kh.transpose(1, 2) / np.sqrt(d // h), -1)
        gap = torch.arange(ns)[None, :] / ns - torch.arange(nt)[:, None] / nt
        w = 1 - torch.exp(-gap.double() ** 2 / (2 * 0.25 ** 2))
        total = total + 0.7 * (a * w).sum() / h
    total.backward()
    assert loss == pytest.approx(float(total.detach()), rel=1e-6)
    np.testing.assert_allclose(dq, tq.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dk, tk.grad.numpy(), rtol=1e-4, atol=1e-6)


def _model():
    return Transformer(TransformerConfig(src_vocab_size=20, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1,
                                         n_decoder_layers=2, max_len=32, dropout=0.0), seed=0)


def _pairs(n=40, seed=0):
    rng = make_rng("tips-pairs", seed)
    out = []
    for _ in range(n):
        s = rng.integers(3, 20, size=int(rng.integers(3, 8))).tolist()
        out.append((s, list(s)))
    return out


def test_guided_attention_adds_its_penalty_and_its_gradient():
    pairs = _pairs(8)
    plain, guided = Trainer(_model(), seed=0), Trainer(_model(), seed=0, guided_attention=2.0)
    l0, _ = plain.loss_and_gradients(pairs, training=False)
    l1, _ = guided.loss_and_gradients(pairs, training=False)
    extra = guided.passes.last_guided_loss
    assert extra > 0 and l1 == pytest.approx(l0 + extra / sum(len(t) + 1 for _, t in pairs), rel=1e-6)
    diff = guided.passes.grads - plain.passes.grads
    g = dict(zip([n for n, _ in guided.model.layout], np.split(diff, np.cumsum(
        [int(np.prod(s)) for _, s in guided.model.layout])[:-1])))
    # the penalty reaches the last decoder layer's cross-attention queries and keys, and what feeds them
    assert np.abs(g["decoder.layers.1.multihead_attn.in_proj_weight"]).max() > 0
    assert np.abs(g["decoder.layers.1.multihead_attn.out_proj.weight"]).max() == 0


@pytest.mark.parametrize("source", ["model", "random"])
def test_scheduled_sampling_replaces_the_scheduled_share(source):
    tr = Trainer(_model(), seed=3, scheduled_sampling=0.5, scheduled_sampling_steps=10,
                 scheduled_sampling_source=source)
    assert tr.sampling_rate(0) == 0.0 and tr.sampling_rate(5) == 0.25 and tr.sampling_rate(50) == 0.5
    tr.step_count = 20
    src_b, tgt_b, labels = tr._teacher_forcing(_pairs(200))
    sampled = tr._sample_inputs(src_b, tgt_b, labels, seed=7)
    changed = sampled.ids != tgt_b.ids
    assert not changed[tgt_b.start].any()                          # the start token stays
    share = changed.sum() / (len(tgt_b.ids) - tgt_b.size)
    assert 0.3 < share < 0.6                                        # about half (a replacement may equal the input)
    again = tr._sample_inputs(src_b, tgt_b, labels, seed=7)
    np.testing.assert_array_equal(again.ids, sampled.ids)           # seeded: a resumed run draws the same


def test_scheduled_sampling_trains_and_resumes_exactly(tmp_path):
    pairs = _pairs(60)
    a = Trainer(_model(), seed=1, scheduled_sampling=0.3, scheduled_sampling_source="model", guided_attention=0.5)
    a.fit(pairs, max_steps=6, batch_tokens=200, progress=False, output_dir=str(tmp_path / "run"), checkpoint_every=3)
    b = Trainer.from_checkpoint(str(tmp_path / "run" / "checkpoint-3"))
    assert b.tips == a.tips
    b.fit(pairs, max_steps=6, batch_tokens=200, progress=False)
    np.testing.assert_array_equal(a.model.params, b.model.params)


def test_training_tip_options_are_checked():
    check_bad_input(lambda: Trainer(_model(), scheduled_sampling=1.5), ValueError, "scheduled_sampling")
    check_bad_input(lambda: Trainer(_model(), scheduled_sampling_source="oracle"), ValueError, "source")
    check_bad_input(lambda: Trainer(_model(), guided_attention=-1), ValueError, "guided_attention")
    check_bad_input(lambda: Trainer(_model(), scheduled_sampling_steps=-2), ValueError, "steps")
    from cyformer import Encoder, EncoderConfig
    enc = Encoder(EncoderConfig(vocab_size=10, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=8,
                                head="sequence_classification"))
    check_bad_input(lambda: Trainer(enc, guided_attention=1.0), ValueError, "translation models")
    from cyformer.nat import NATConfig, NATransformer
    nat = NATransformer(NATConfig(src_vocab_size=20, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1,
                                  n_decoder_layers=1, max_len=32, max_target_len=16))
    check_bad_input(lambda: Trainer(nat, scheduled_sampling=0.2), ValueError, "non-autoregressive")
