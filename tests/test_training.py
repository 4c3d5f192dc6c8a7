"""Training against PyTorch: per-tensor gradients, an Adam step, Marian export; resume and checkpoints.

Tolerances: every gradient tensor within GRAD_RTOL of PyTorch autograd relative to the
tensor's largest entry (|ours - torch| <= GRAD_RTOL * max|torch|), float32 on both sides,
dropout off. Losses within LOSS_ATOL.
"""
import json
import os

import numpy as np
import pytest

import cyformer
from cyformer import Transformer, TransformerConfig
from cyformer.backprop import ForwardBackward
from cyformer.model import make_batch
from cyformer.optim import ConstantSchedule, LinearDecaySchedule, NoamSchedule, clip_grad_norm
from cyformer.training import Trainer, latest_checkpoint, list_checkpoints, make_batches

torch = pytest.importorskip("torch")
from _reference import TorchSeq2Seq, marian_logits, marian_model, pad, toy_pairs  # noqa: E402

GRAD_RTOL = 1e-4
LOSS_ATOL = 1e-5


def _pairs(rng, n, vocab, eos=2, lo=3):
    out = []
    for _ in range(n):
        s = [int(x) for x in rng.integers(lo, vocab, int(rng.integers(2, 9)))]
        t = [int(x) for x in rng.integers(lo, vocab, int(rng.integers(1, 8)))] + [eos]
        out.append((s, t))
    return out


def _compare_grads(ours: dict, ref: dict, skip=()):
    worst = {}
    for name, g in ours.items():
        if name in skip:
            continue
        want = ref[name]
        scale = float(np.abs(want).max()) or 1.0
        err = float(np.abs(g - want).max()) / scale
        worst[name] = err
        assert err <= GRAD_RTOL, (f"{name}: max |ours - torch| / max|torch| = {err:.2e}; first values ours "
                                  f"{g.reshape(-1)[:4]}, torch {want.reshape(-1)[:4]}")
    return worst


def _torch_loss_and_grads(ref: TorchSeq2Seq, pairs, start=1, eps=0.1):
    """Loss and named gradients of the reference model, teacher-forced as the Trainer does."""
    params = (list(ref.transformer.parameters()) + list(ref.src_embed.parameters())
              + list(ref.tgt_embed.parameters()) + list(ref.generator.parameters()))
    if ref.src_pos is not None:
        params += list(ref.src_pos.parameters()) + list(ref.tgt_pos.parameters())
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    src = [s for s, _ in pairs]
    tgt_in = [[start] + t[:-1] for _, t in pairs]
    labels = [t for _, t in pairs]
    sids, spad = pad(src, 0)
    tids, tpad = pad(tgt_in, 0)
    lids, lpad = pad(labels, 0)
    x = ref._embed(sids, ref.src_embed, ref.src_pos)
    y = ref._embed(tids, ref.tgt_embed, ref.tgt_pos)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(tids.shape[1])
    h = ref.transformer(x, y, tgt_mask=causal, src_key_padding_mask=spad, tgt_key_padding_mask=tpad,
                        memory_key_padding_mask=spad, tgt_is_causal=True)
    logits = ref.generator(h)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             lids.masked_fill(lpad, -100).reshape(-1),
                                             label_smoothing=eps)
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in ref.transformer.named_parameters()}
    grads["encoder.embed_tokens.weight"] = ref.src_embed.weight.grad.numpy()
    if ref.tgt_embed is not ref.src_embed:
        grads["decoder.embed_tokens.weight"] = ref.tgt_embed.weight.grad.numpy()
    grads["output_projection.weight"] = ref.generator.weight.grad.numpy()
    if ref.generator.bias is not None:
        grads["output_projection.bias"] = ref.generator.bias.grad.numpy()
    if ref.src_pos is not None:
        grads["encoder.embed_positions.weight"] = ref.src_pos.weight.grad.numpy()[:ref.max_len]
        grads["decoder.embed_positions.weight"] = ref.tgt_pos.weight.grad.numpy()[:ref.max_len]
    return float(loss.detach()), grads


TORCH_CASES = {
    "post_ln_relu": dict(norm_first=False, activation="relu"),
    "pre_ln_relu": dict(norm_first=True, activation="relu"),
    "post_ln_gelu": dict(norm_first=False, activation="gelu"),
    "pre_ln_silu": dict(norm_first=True, activation="silu"),
    "post_ln_learned_positions": dict(norm_first=False, activation="relu", positional="learned"),
    "pre_ln_shared_no_final_norm": dict(norm_first=True, activation="gelu", share=True, final_norm=False),
    "post_ln_no_output_bias": dict(norm_first=False, activation="relu", output_bias=False),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_gradients_match_torch_transformer(case):
    torch.set_num_threads(1)
    ref = TorchSeq2Seq(vocab=40, d=32, heads=4, d_ff=64, n_enc=2, n_dec=2, seed=3, **TORCH_CASES[case])
    model = ref.to_cyformer()
    pairs = _pairs(np.random.default_rng(1), 5, 40)
    want_loss, want = _torch_loss_and_grads(ref, pairs, start=model.config.decoder_start_id)
    trainer = Trainer(model, label_smoothing=0.1)
    loss, n = trainer.loss_and_gradients(pairs)
    assert n == sum(len(t) for _, t in pairs)
    assert abs(loss - want_loss) < LOSS_ATOL
    assert set(trainer.passes.gradients()) == set(want)
    _compare_grads(trainer.passes.gradients(), want)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_adam_step_matches_torch(threads):
    torch.set_num_threads(1)
    cyformer.set_num_threads(threads)
    try:
        ref = TorchSeq2Seq(vocab=40, d=32, heads=4, d_ff=64, n_enc=2, n_dec=2, seed=5, norm_first=False)
        model = ref.to_cyformer()
        pairs = _pairs(np.random.default_rng(2), 6, 40)
        lr = 1e-3
        _, grads = _torch_loss_and_grads(ref, pairs, start=model.config.decoder_start_id)
        named = dict(ref.transformer.named_parameters())
        named.update({"encoder.embed_tokens.weight": ref.src_embed.weight,
                      "decoder.embed_tokens.weight": ref.tgt_embed.weight,
                      "output_projection.weight": ref.generator.weight,
                      "output_projection.bias": ref.generator.bias})
        opt = torch.optim.Adam(list(named.values()), lr=lr, betas=(0.9, 0.98), eps=1e-9)
        opt.step()
        trainer = Trainer(model, schedule="constant", lr=lr, label_smoothing=0.1)
        trainer.step([s for s, _ in pairs], [t for _, t in pairs])
        for name, p in named.items():
            got = model[name]
            want = p.detach().numpy()
            g = np.abs(grads[name])
            # Adam's first step moves each weight by about lr * sign(grad). Where the true
            # gradient is 0 (the key bias, unused rows) float noise decides the sign, so those
            # entries are only checked to stay within lr; the rest must agree to float rounding.
            big = g > 1e-4 * max(float(g.max()), 1e-30)
            np.testing.assert_allclose(got[big], want[big], rtol=0, atol=2e-6, err_msg=name)
            assert np.all(np.abs(got - want) <= 2.01 * lr + 1e-6), name
    finally:
        cyformer.set_num_threads(cyformer.threads.default_num_threads())


def _hf_marian_grads(hf, pairs, eps):
    """HF loss (label-smoothed, computed from its logits) and gradients mapped to our names."""
    from cyformer.convert.marian import marian_tensors

    pad_id = hf.config.pad_token_id
    hf.train()
    hf.zero_grad()
    src_ids, src_pad = pad([s for s, _ in pairs], pad_id)
    labels, lab_pad = pad([t for _, t in pairs], pad_id)
    labels = labels.masked_fill(lab_pad, -100)
    out = hf(input_ids=src_ids, attention_mask=(~src_pad).long(), labels=labels)
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100, label_smoothing=eps)
    loss.backward()
    hf.eval()
    grads = {k: p.grad.numpy() for k, p in hf.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("activation", ["swish", "relu", "gelu"])
def test_gradients_match_marian_with_label_smoothing(tmp_path, activation):
    torch.set_num_threads(1)
    hf = marian_model(tmp_path, activation=activation, vocab=50, seed=4)
    model = Transformer.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(3)
    pairs = [(s, t) for s, t in toy_pairs(rng, 6, vocab_lo=1, vocab_hi=48, eos=0)]
    want_loss, hf_grads = _hf_marian_grads(hf, pairs, 0.1)
    from cyformer.convert.marian import marian_tensors
    want = marian_tensors({**hf_grads, "final_logits_bias": np.zeros((1, 50), np.float32)}, model.config)
    trainer = Trainer(model, label_smoothing=0.1)
    assert trainer.frozen == ["output_projection.bias"]   # a buffer in HF, not trained
    loss, _ = trainer.loss_and_gradients(pairs)
    assert abs(loss - want_loss) < LOSS_ATOL
    _compare_grads(trainer.passes.gradients(), want, skip={"output_projection.bias"})


def test_marian_export_after_training_loads_in_transformers(tmp_path):
    from transformers import MarianMTModel

    torch.set_num_threads(1)
    marian_model(tmp_path / "hf", vocab=50, seed=6)
    model = Transformer.from_pretrained(str(tmp_path / "hf"))
    bias = model["output_projection.bias"].copy()
    trainer = Trainer(model, schedule="constant", lr=3e-3)
    rng = np.random.default_rng(4)
    for _ in range(5):
        batch = toy_pairs(rng, 8, vocab_lo=1, vocab_hi=48, eos=0)
        trainer.step([s for s, _ in batch], [t for _, t in batch])
    np.testing.assert_array_equal(model["output_projection.bias"], bias)   # frozen
    model.save_pretrained(str(tmp_path / "export"), format="marian")
    reloaded = MarianMTModel.from_pretrained(str(tmp_path / "export")).eval()
    src = [[5, 6, 7, 8, 0], [9, 10, 0]]
    tgt_in = [[49, 3, 4, 5], [49, 8]]
    want = marian_logits(reloaded, src, tgt_in)
    got = model.forward(src, tgt_in)
    for i, n in enumerate([4, 2]):
        np.testing.assert_allclose(got[i, :n], want[i, :n], atol=1e-4, rtol=0)
    # and it comes back into cyformer unchanged
    again = Transformer.from_pretrained(str(tmp_path / "export"))
    np.testing.assert_array_equal(again.params, model.params)


def test_export_refuses_non_marian_models(tmp_path):
    model = Transformer(TransformerConfig(src_vocab_size=30, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1,
                                          n_decoder_layers=1, norm_first=True), seed=0)
    with pytest.raises(ValueError, match="post-LN"):
        model.save_pretrained(str(tmp_path), format="marian")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        model.save_pretrained(str(tmp_path), format="onnx")


# --------------------------------------------------------------------------------------
# schedules, clipping, batching
# --------------------------------------------------------------------------------------

def test_schedules():
    noam = NoamSchedule(512, 4000)
    for step in (1, 100, 4000, 10000):
        assert noam(step) == pytest.approx(512 ** -0.5 * min(step ** -0.5, step * 4000 ** -1.5))
    assert max(range(1, 10000), key=noam) == 4000
    lin = LinearDecaySchedule(1e-3, total_steps=100, warmup_steps=10)
    assert lin(5) == pytest.approx(5e-4) and lin(10) == pytest.approx(1e-3) and lin(100) == 0.0
    assert lin(55) == pytest.approx(5e-4)
    assert ConstantSchedule(2e-4)(1) == 2e-4
    with pytest.raises(ValueError):
        noam(0)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(0)
    g = rng.standard_normal(10_000).astype(np.float32)
    t = torch.nn.Parameter(torch.zeros(10_000))
    t.grad = torch.from_numpy(g.copy())
    want = torch.nn.utils.clip_grad_norm_([t], 5.0)
    norm = clip_grad_norm(g, 5.0)
    assert norm == pytest.approx(float(want), rel=1e-6)
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6)


def test_make_batches_respects_token_budget_and_is_deterministic():
    lengths = np.random.default_rng(0).integers(1, 30, 500)
    a = make_batches(lengths, 200, seed=3, epoch=1)
    b = make_batches(lengths, 200, seed=3, epoch=1)
    c = make_batches(lengths, 200, seed=3, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert sorted(np.concatenate(a).tolist()) == list(range(500))
    assert all(lengths[x].sum() <= 200 for x in a)


# --------------------------------------------------------------------------------------
# the Trainer: learning, threads, resume, checkpoints, bad input
# --------------------------------------------------------------------------------------

def _tiny(dropout=0.1, **kw):
    cfg = TransformerConfig(src_vocab_size=24, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2,
                            n_decoder_layers=2, max_len=32, dropout=dropout, **kw)
    return Transformer(cfg, seed=0)


def _copy_data(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = [int(x) for x in rng.integers(3, 24, int(rng.integers(2, 7)))]
        out.append((s, s + [2]))
    return out


def test_trainer_learns_a_copy_task():
    model = _tiny(dropout=0.0)
    trainer = Trainer(model, schedule="constant", lr=3e-3, warmup_steps=20, label_smoothing=0.0, seed=1)
    train = _copy_data(2000)
    history = trainer.fit(train, max_steps=600, batch_tokens=400, progress=False)
    assert np.mean(history.loss[:10]) > 2.5
    assert np.mean(history.loss[-10:]) < 0.3
    out = model.generate([s for s, _ in train[:20]], max_length=10)
    assert np.mean([r.sequences[0] == t for r, (_, t) in zip(out, train[:20])]) >= 0.8


def test_training_threads_agree():
    losses = []
    for nt in (1, 2):
        cyformer.set_num_threads(nt)
        trainer = Trainer(_tiny(), seed=2)
        losses.append(trainer.fit(_copy_data(300), max_steps=8, batch_tokens=150, progress=False).loss)
    cyformer.set_num_threads(cyformer.threads.default_num_threads())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    train, valid = _copy_data(300), _copy_data(20, seed=9)
    full = Trainer(_tiny(), seed=4, warmup_steps=10)
    full.fit(train, valid, max_steps=12, batch_tokens=150, valid_every=6, output_dir=str(tmp_path / "full"),
             checkpoint_every=5, progress=False)
    first = Trainer(_tiny(), seed=4, warmup_steps=10)
    first.fit(train, valid, max_steps=5, batch_tokens=150, valid_every=6, output_dir=str(tmp_path / "part"),
              checkpoint_every=5, progress=False)
    # a fresh process would start here: a new model and trainer, resumed from the folder
    second = Trainer(_tiny(), seed=4, warmup_steps=10)
    second.fit(train, valid, max_steps=12, batch_tokens=150, valid_every=6, output_dir=str(tmp_path / "part"),
               checkpoint_every=5, progress=False)
    assert second.history.loss == full.history.loss           # bit for bit
    periodic = lambda h: [v for v in h.valid if v["step"] % 6 == 0]  # noqa: E731 (the partial run also
    assert periodic(second.history) == periodic(full.history)       # validated when it stopped at 5)
    np.testing.assert_array_equal(second.model.params, full.model.params)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "part"))] == ["checkpoint-10",
                                                                                      "checkpoint-12"]
    resumed = Trainer.from_checkpoint(latest_checkpoint(str(tmp_path / "full")))
    assert resumed.step_count == 12 and resumed.epoch == full.epoch
    np.testing.assert_array_equal(resumed.optimizer.exp_avg, full.optimizer.exp_avg)


def test_crash_mid_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = Trainer(_tiny(), seed=0)
    train = _copy_data(100)
    trainer.fit(train, max_steps=2, batch_tokens=100, output_dir=str(tmp_path), progress=False)
    good = latest_checkpoint(str(tmp_path))
    trainer.step([s for s, _ in train[:4]], [t for _, t in train[:4]])

    import cyformer.training as training

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(training, "save_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(str(tmp_path))
    assert latest_checkpoint(str(tmp_path)) == good
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(good)]   # no half-written folder left
    restored = Trainer.from_checkpoint(good)
    assert restored.step_count == 2


def test_trainer_bad_input():
    trainer = Trainer(_tiny())
    with pytest.raises(ValueError, match="empty batch"):
        trainer.step([], [])
    with pytest.raises(ValueError, match="tgt\\[0\\] is empty"):
        trainer.step([[3, 4]], [[]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trainer.step([[3, 4]], [[99, 2]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trainer.step([[-1, 4]], [[5, 2]])
    with pytest.raises(ValueError, match="2 sequences but tgt has 1"):
        trainer.step([[3], [4]], [[5]])
    with pytest.raises(TypeError, match="integer"):
        trainer.step([[3.5, 4.0]], [[5, 2]])
    with pytest.raises(ValueError, match="max_len"):
        trainer.step([[3] * 40], [[5, 2]])
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(_tiny(), optimizer="lion")
    with pytest.raises(ValueError, match="frozen"):
        Trainer(_tiny(), frozen=["nope"])
    assert trainer.step_count == 0                      # nothing was applied
