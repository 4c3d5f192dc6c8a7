"""Training the encoder and its heads: per-tensor gradients against transformers' BertFor*
autograd (dropout off), the Trainer on sequence and token labels (accuracy, F1, resume).

Tolerances as test_training.py: every gradient tensor within GRAD_RTOL of PyTorch relative to
the tensor's largest entry (|ours - torch| <= GRAD_RTOL * max|torch|), losses within LOSS_ATOL.
"""
import os

import numpy as np
import pytest

import cyformer
from cyformer import Encoder, EncoderConfig, Trainer
from cyformer.backprop import ForwardBackward
from cyformer.convert.bert import _head_names, bert_to_cyformer_names
from cyformer.model import make_batch
from cyformer.training import latest_checkpoint, list_checkpoints

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GRAD_RTOL = 1e-4
LOSS_ATOL = 1e-5

BERT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=20, type_vocab_size=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)


def _reference(tmp_path, cls_name, seed=0, **kw):
    torch.manual_seed(seed)
    ref = getattr(transformers, cls_name)(transformers.BertConfig(**BERT, **kw))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "LayerNorm" in n or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(str(tmp_path / cls_name))
    return ref.train(), Encoder.from_pretrained(str(tmp_path / cls_name), mmap=False)


def _batch(rng, lengths):
    b, t = len(lengths), max(lengths)
    ids = rng.integers(1, BERT["vocab_size"], size=(b, t))
    types = rng.integers(0, 2, size=(b, t))
    lengths = np.asarray(lengths)
    mask = np.arange(t)[None, :] < lengths[:, None]
    ids[~mask] = 0
    types[~mask] = 0
    return ids, types, lengths, mask


def _compare(fb: ForwardBackward, enc: Encoder, ref, skip=(), names=None, prefix="bert."):
    named = {k: (v.grad.numpy() if v.grad is not None else np.zeros(tuple(v.shape), np.float32))
             for k, v in ref.named_parameters()}
    if names is None:
        names = dict(bert_to_cyformer_names(enc.config))
        names.update(_head_names(enc.config, "bert"))
    worst = {}
    for ours, theirs in names.items():
        if ours in skip:
            continue
        if isinstance(theirs, tuple):
            want = np.concatenate([named[prefix + t] for t in theirs], axis=0)
        else:
            want = named.get(prefix + theirs, named.get(theirs))
        got = fb.grad(ours)
        assert got.shape == want.shape, ours
        scale = float(np.abs(want).max()) or 1.0
        worst[ours] = err = float(np.abs(got - want).max()) / scale
        assert err <= GRAD_RTOL, (f"{ours}: max |ours - torch| / max|torch| = {err:.2e}; ours "
                                  f"{got.reshape(-1)[:4]}, torch {want.reshape(-1)[:4]}")
    assert set(worst) | set(skip) == {n for n, _ in enc.layout}   # every tensor compared
    return worst


def _packed(x, mask):
    return np.asarray(x)[mask]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sequence_classification_gradients_match_transformers(tmp_path, smoothing):
    ref, enc = _reference(tmp_path, "BertForSequenceClassification", num_labels=3)
    ids, types, lengths, mask = _batch(np.random.default_rng(0), [7, 3, 5, 1, 6])
    labels = np.array([0, 2, 1, 2, 0])
    out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
              token_type_ids=torch.tensor(types))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor(labels), label_smoothing=smoothing)
    loss.backward()
    fb = ForwardBackward(enc)
    batch = make_batch(ids, lengths, vocab_size=enc.config.vocab_size, max_len=enc.config.max_len)
    total, _, n = fb.forward_labels(batch, labels, _packed(types, mask), label_smoothing=smoothing)
    assert n == 5
    assert abs(total / n - loss.item()) <= LOSS_ATOL
    fb.backward()
    _compare(fb, enc, ref)


@pytest.mark.parametrize("family", ["distilbert", "electra"])
def test_other_families_sequence_gradients_match_transformers(tmp_path, family):
    """DistilBERT (ReLU pre-classifier, its own names) and ELECTRA (GELU head) fine-tune too."""
    from cyformer.convert.distilbert import distilbert_to_cyformer_names
    torch.manual_seed(2)
    common = dict(vocab_size=50, max_position_embeddings=20, num_labels=3)
    if family == "distilbert":
        ref = transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,
            **common))
    else:
        ref = transformers.ElectraForSequenceClassification(transformers.ElectraConfig(
            embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common))
    ref.save_pretrained(str(tmp_path / family))
    enc = Encoder.from_pretrained(str(tmp_path / family), mmap=False)
    ref.train()
    ids, types, lengths, mask = _batch(np.random.default_rng(3), [6, 3, 5])
    labels = np.array([2, 0, 1])
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)))
    if family == "electra":
        kw["token_type_ids"] = torch.tensor(types)
    out = ref(**kw, labels=torch.tensor(labels))
    out.loss.backward()
    fb = ForwardBackward(enc)
    batch = make_batch(ids, lengths, vocab_size=50, max_len=20)
    total, _, n = fb.forward_labels(batch, labels, _packed(types, mask) if family == "electra" else None)
    assert abs(total / n - out.loss.item()) <= LOSS_ATOL
    fb.backward()
    if family == "distilbert":
        names = distilbert_to_cyformer_names(enc.config)
        names.update({"pooler.dense.weight": "pre_classifier.weight", "pooler.dense.bias": "pre_classifier.bias",
                      "classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"})
    else:
        names = dict(bert_to_cyformer_names(enc.config))
        names.update(_head_names(enc.config, "electra"))
    _compare(fb, enc, ref, names=names, prefix=family + ".")


def test_token_classification_gradients_match_transformers(tmp_path):
    ref, enc = _reference(tmp_path, "BertForTokenClassification", seed=1, num_labels=4)
    rng = np.random.default_rng(1)
    ids, types, lengths, mask = _batch(rng, [6, 2, 4])
    labels = rng.integers(0, 4, size=ids.shape)
    labels[0, 1] = labels[2, 3] = -100   # ignored positions (e.g. word pieces after the first)
    labels[~mask] = -100
    out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
              token_type_ids=torch.tensor(types), labels=torch.tensor(labels))
    out.loss.backward()
    fb = ForwardBackward(enc)
    batch = make_batch(ids, lengths, vocab_size=enc.config.vocab_size, max_len=enc.config.max_len)
    total, _, n = fb.forward_labels(batch, _packed(labels, mask), _packed(types, mask))
    assert n == int((labels != -100).sum())
    assert abs(total / n - out.loss.item()) <= LOSS_ATOL
    fb.backward()
    _compare(fb, enc, ref)


@pytest.mark.parametrize("pooling,pooler", [("mean", None), ("max", None), ("cls", None), ("mean", "tanh"),
                                            ("cls", "tanh"), ("cls", "relu"), ("cls", "gelu")])
def test_pooled_head_gradients_match_torch(pooling, pooler):
    """Heads BERT does not have (mean / max pooling, no pooler): against torch autograd over
    the same computation, on an encoder of no layers (hidden states = token + position
    vectors), so the pooling's backward reaches the tables and every tensor is compared."""
    cfg = EncoderConfig(vocab_size=30, d_model=16, n_heads=2, d_ff=32, n_layers=0, max_len=10, type_vocab_size=0,
                        embedding_norm=False, head="sequence_classification", n_labels=3, pooling=pooling,
                        pooler=pooler is not None, pooler_activation=pooler or "tanh", dropout=0.0)
    enc = Encoder(cfg, seed=3)
    enc["classifier.bias"][...] = [0.1, -0.2, 0.3]
    seqs = [[3, 4, 5, 6], [7, 8], [9, 10, 11]]
    labels = np.array([1, 0, 2])
    fb = ForwardBackward(enc)
    fb.forward_labels(make_batch(seqs, vocab_size=30, max_len=10), labels)
    fb.backward()
    leaves = {n: torch.tensor(np.array(v, dtype=np.float64), requires_grad=True) for n, v in enc.parameters().items()}
    ids = torch.tensor([s + [0] * (4 - len(s)) for s in seqs])
    mask = torch.tensor([[True] * len(s) + [False] * (4 - len(s)) for s in seqs])
    h = leaves["embed_tokens.weight"][ids] + leaves["embed_positions.weight"][:4][None]
    if pooling == "mean":
        p = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    elif pooling == "max":
        p = h.masked_fill(~mask[..., None], -1e30).max(1).values
    else:
        p = h[:, 0]
    if pooler:   # BERT's tanh, DistilBERT's ReLU, ELECTRA's GELU (erf)
        act = {"tanh": torch.tanh, "relu": torch.relu, "gelu": torch.nn.functional.gelu}[pooler]
        p = act(p @ leaves["pooler.dense.weight"].T + leaves["pooler.dense.bias"])
    logits = p @ leaves["classifier.weight"].T + leaves["classifier.bias"]
    torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).backward()
    for name, leaf in leaves.items():
        np.testing.assert_allclose(fb.grad(name), leaf.grad.numpy(), atol=1e-6, rtol=1e-4, err_msg=name)


def test_dropout_gradients_are_the_gradients_of_the_dropped_network():
    """With dropout on (embeddings, attention, FFN, residuals, classifier), the loss is a
    function of the parameters for a fixed seed; the gradient's directional derivative matches
    central differences of that loss (float64 accumulation of float32 losses)."""
    cfg = EncoderConfig(vocab_size=30, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=10, type_vocab_size=2,
                        head="token_classification", n_labels=3, dropout=0.2, attention_dropout=0.1)
    enc = Encoder(cfg, seed=1)
    batch = make_batch([[3, 4, 5, 6], [7, 8], [9, 10, 11]], vocab_size=30, max_len=10)
    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0])
    types = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1])
    fb = ForwardBackward(enc)
    fb.forward_labels(batch, labels, types, seed=7)
    fb.backward()
    direction = np.random.default_rng(0).standard_normal(enc.params.size).astype(np.float32)
    base = enc.params.copy()

    def loss_at(t):
        enc.params[...] = base + t * direction
        total, _, n = ForwardBackward(enc).forward_labels(batch, labels, types, seed=7, grad_scale=0.0)
        return total / n

    eps = 1e-3
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    enc.params[...] = base
    analytic = float(np.dot(fb.grads.astype(np.float64), direction))
    assert abs(analytic - numeric) <= 2e-2 * abs(numeric) + 1e-3, (analytic, numeric)
    # another seed drops other units: another loss
    a = ForwardBackward(enc).forward_labels(batch, labels, types, seed=7, grad_scale=0.0)[0]
    b = ForwardBackward(enc).forward_labels(batch, labels, types, seed=8, grad_scale=0.0)[0]
    c = ForwardBackward(enc).forward_labels(batch, labels, types, training=False, grad_scale=0.0)[0]
    assert a != b and c != a
    np.testing.assert_allclose(c / 9, ForwardBackward(enc).forward_labels(batch, labels, types, seed=7,
                               training=False, grad_scale=0.0)[0] / 9, rtol=0)


# -- the Trainer on labels --------------------------------------------------------------------------
def _tiny(head="sequence_classification", n_labels=3, **kw):
    c = dict(vocab_size=24, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_len=16, type_vocab_size=0,
             head=head, n_labels=n_labels, pooling="mean", dropout=0.1)
    c.update(kw)
    return Encoder(EncoderConfig(**c), seed=0)


def _majority(n, seed=0):
    """ids in 3..23; label = which third of the vocabulary (3-9, 10-16, 17-23) most tokens fall in."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        s = rng.integers(3, 24, int(rng.integers(3, 10)))
        counts = np.bincount((s - 3) // 7, minlength=3)
        if (counts == counts.max()).sum() == 1:
            out.append(([int(x) for x in s], int(counts.argmax())))
    return out


def _tags(n, seed=0):
    """label per token: which third of the vocabulary (3-9, 10-16, 17-23) it is in."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = [int(x) for x in rng.integers(3, 24, int(rng.integers(2, 12)))]
        tags = [(t - 3) // 7 for t in s]
        out.append((s, tags))
    return out


def test_trainer_learns_sequence_labels():
    model = _tiny()
    trainer = Trainer(model, optimizer="adamw", schedule="constant", lr=3e-3, warmup_steps=20, label_smoothing=0.0,
                      seed=1)
    train, valid = _majority(2000), _majority(200, seed=5)
    history = trainer.fit(train, valid, max_steps=150, batch_tokens=400, valid_every=50, progress=False)
    assert [v["step"] for v in history.valid] == [50, 100, 150]
    final = history.valid[-1]
    assert set(final) == {"step", "loss", "nll", "accuracy"}
    assert final["accuracy"] >= 0.9, final
    gold, pred = trainer.predict_labels(valid)
    assert gold.shape == (200,) and abs(np.mean(gold == pred) - final["accuracy"]) < 1e-12
    probs = model.classify([s for s, _ in valid[:5]])
    assert probs.shape == (5, 3)


def test_trainer_learns_token_labels_and_ignores_minus_100():
    model = _tiny(head="token_classification", n_labels=3, pooling="cls")
    trainer = Trainer(model, optimizer="adam", schedule="constant", lr=2e-3, warmup_steps=20, label_smoothing=0.1,
                      seed=2)
    train, valid = _tags(1000), _tags(100, seed=7)
    # label names work as well as indices; -100 positions are not trained or scored
    train = [(s, [model.config.id2label[t] if j % 2 else t for j, t in enumerate(tags)]) for s, tags in train]
    masked = [(s, [-100] + tags[1:]) for s, tags in valid]
    trainer.fit(train, masked, max_steps=120, batch_tokens=300, valid_every=120, progress=False)
    final = trainer.history.valid[-1]
    assert final["accuracy"] >= 0.95 and final["f1"] >= 0.9, final
    gold, _ = trainer.predict_labels(masked)
    assert gold.size == sum(len(s) - 1 for s, _ in valid)


def test_macro_f1_and_confusion_matrix():
    from sklearn.metrics import f1_score
    from cyformer.training import confusion_matrix, macro_f1
    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    pred[:50] = gold[:50]
    assert abs(macro_f1(gold, pred) - f1_score(gold, pred, average="macro")) < 1e-12
    m = confusion_matrix(gold, pred, 4)
    assert m.sum() == 200 and np.trace(m) == int((gold == pred).sum()) and m[gold[0], pred[0]] >= 1


def test_label_training_threads_agree():
    losses = []
    for nt in (1, 2):
        cyformer.set_num_threads(nt)
        trainer = Trainer(_tiny(), seed=2, warmup_steps=10)
        losses.append(trainer.fit(_majority(200), max_steps=6, batch_tokens=150, progress=False).loss)
    cyformer.set_num_threads(cyformer.threads.default_num_threads())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


@pytest.mark.parametrize("head", ["sequence_classification", "token_classification"])
def test_label_resume_reproduces_the_uninterrupted_run(tmp_path, head):
    data = _majority if head == "sequence_classification" else _tags
    train, valid = data(300), data(20, seed=9)
    make = lambda: Trainer(_tiny(head=head), seed=4, warmup_steps=10)  # noqa: E731
    full = make()
    full.fit(train, valid, max_steps=12, batch_tokens=150, valid_every=6, output_dir=str(tmp_path / "full"),
             checkpoint_every=5, progress=False)
    first = make()
    first.fit(train, valid, max_steps=5, batch_tokens=150, valid_every=6, output_dir=str(tmp_path / "part"),
              checkpoint_every=5, progress=False)
    second = make()   # a fresh process: resumed from the folder
    second.fit(train, valid, max_steps=12, batch_tokens=150, valid_every=6, output_dir=str(tmp_path / "part"),
               checkpoint_every=5, progress=False)
    assert second.history.loss == full.history.loss   # bit for bit (dropout on)
    periodic = lambda h: [v for v in h.valid if v["step"] % 6 == 0]  # noqa: E731
    assert periodic(second.history) == periodic(full.history)
    np.testing.assert_array_equal(second.model.params, full.model.params)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "part"))] == ["checkpoint-10",
                                                                                      "checkpoint-12"]
    resumed = Trainer.from_checkpoint(latest_checkpoint(str(tmp_path / "full")))
    assert isinstance(resumed.model, Encoder) and resumed.step_count == 12
    np.testing.assert_array_equal(resumed.model.params, full.model.params)
    np.testing.assert_array_equal(resumed.optimizer.exp_avg, full.optimizer.exp_avg)


def test_fine_tuning_a_loaded_checkpoint(tmp_path):
    ref, enc = _reference(tmp_path, "BertForSequenceClassification", num_labels=2)
    enc = Encoder.from_pretrained(str(tmp_path / "BertForSequenceClassification"))   # memory-mapped
    trainer = Trainer(enc, optimizer="adamw", schedule="linear", lr=1e-3, warmup_steps=5, total_steps=60,
                      label_smoothing=0.0, weight_decay=0.01)
    rng = np.random.default_rng(0)
    data = [([2] + [int(x) for x in rng.integers(3, 50, 6)], 0) for _ in range(40)]
    data = [(s, int(s[1] >= 26)) for s, _ in data]
    before = trainer.evaluate(data)["loss"]
    trainer.fit(data, max_steps=60, batch_tokens=120, progress=False)
    assert trainer.evaluate(data)["loss"] < before
    trainer.model.save_pretrained(str(tmp_path / "tuned"))
    np.testing.assert_array_equal(Encoder.from_pretrained(str(tmp_path / "tuned")).classify([[2, 5, 6]]),
                                  trainer.model.classify([[2, 5, 6]]))


def test_trainer_examples_with_token_types():
    """(ids, label, token_type_ids) examples: the same loss as the passes given the packed types."""
    model = _tiny(type_vocab_size=2, dropout=0.0)
    trainer = Trainer(model, label_smoothing=0.0)
    examples = [([3, 4, 5], 1, [0, 0, 1]), ([6, 7], 2, [1, 1]), ([8, 9, 10, 11], 0, None)]
    loss = trainer.evaluate(examples)["loss"]
    fb = ForwardBackward(model)
    batch = make_batch([e[0] for e in examples], vocab_size=24, max_len=16)
    total, _, n = fb.forward_labels(batch, np.array([1, 2, 0]), np.array([0, 0, 1, 1, 1, 0, 0, 0, 0]),
                                    training=False, grad_scale=0.0)
    assert abs(loss - total / n) < 1e-6
    assert abs(loss - trainer.evaluate([e[:2] for e in examples])["loss"]) > 1e-6   # the types count
    with pytest.raises(ValueError, match=r"token_type_ids holds 2, outside \[0, 2\)"):
        trainer.step([[3, 4]], [1], token_type_ids=[[0, 2]])


def test_label_trainer_bad_input():
    trainer = Trainer(_tiny())
    with pytest.raises(ValueError, match="empty batch"):
        trainer.step([], [])
    with pytest.raises(ValueError, match=r"labels\[0\] holds 3, outside \[0, n_labels=3\)"):
        trainer.step([[3, 4]], [3])
    with pytest.raises(ValueError, match="unknown label 'LABEL_9'"):
        trainer.step([[3, 4]], ["LABEL_9"])
    with pytest.raises(TypeError, match="class index or a label name"):
        trainer.step([[3, 4]], [1.5])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trainer.step([[3, 99]], [1])
    with pytest.raises(ValueError, match="max_len"):
        trainer.step([[3] * 40], [1])
    with pytest.raises(ValueError, match="2 sequences but tgt has 1"):
        trainer.step([[3], [4]], [1])
    tagger = Trainer(_tiny(head="token_classification"))
    with pytest.raises(ValueError, match="has 1 labels for 2 tokens"):
        tagger.step([[3, 4]], [[1]])
    with pytest.raises(ValueError, match=r"labels\[0\]\[1\] holds -1"):
        tagger.step([[3, 4]], [[1, -1]])
    with pytest.raises(ValueError, match="token_type_ids given, but this encoder has no token-type"):
        tagger.step([[3, 4]], [[1, 2]], token_type_ids=[[0, 0]])
    with pytest.raises(ValueError, match="has none.*config.head is None"):
        Trainer(Encoder(EncoderConfig(vocab_size=10, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=8)))
    with pytest.raises(ValueError, match="regression"):
        Trainer(_tiny(n_labels=1))
    assert trainer.step_count == 0 and tagger.step_count == 0
