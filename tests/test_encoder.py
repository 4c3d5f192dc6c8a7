"""cyformer.Encoder (encoder-only, BERT family): against transformers' BertModel, pooling
against NumPy, save/load round trip, bad input."""
import json

import numpy as np
import pytest

from cyformer import CheckpointError, Encoder, EncoderConfig, Transformer

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

BERT_CONFIGS = {
    "tiny": dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=24, type_vocab_size=2),
    "wider": dict(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                  intermediate_size=80, max_position_embeddings=40, type_vocab_size=3,
                  layer_norm_eps=1e-7),
}


def _bert_folder(tmp_path, name, seed=0):
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**BERT_CONFIGS[name])).eval()
    with torch.no_grad():   # non-trivial LayerNorm parameters and biases
        for n, p in model.named_parameters():
            if "LayerNorm" in n or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / f"bert-{name}"
    model.save_pretrained(str(folder))
    return model, folder


def _inputs(cfg, rng, lengths):
    b, t = len(lengths), max(lengths)
    ids = rng.integers(1, cfg["vocab_size"], size=(b, t))
    types = rng.integers(0, cfg["type_vocab_size"], size=(b, t))
    lengths = np.asarray(lengths)
    mask = np.arange(t)[None, :] < lengths[:, None]
    ids[~mask] = 0
    types[~mask] = 0
    return ids, types, lengths, mask


@pytest.mark.parametrize("name", sorted(BERT_CONFIGS))
def test_bert_hidden_states_match_transformers(tmp_path, name):
    ref, folder = _bert_folder(tmp_path, name)
    enc = Encoder.from_pretrained(str(folder))
    cfg = BERT_CONFIGS[name]
    ids, types, lengths, mask = _inputs(cfg, np.random.default_rng(1), [7, 3, 5, 1])
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                   token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    got = enc.forward(ids, lengths, token_type_ids=types)
    assert got.shape == (4, 7, cfg["hidden_size"])
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=0)
    assert not got[~mask].any()   # zeros past the lengths
    # no token types: type 0 everywhere, as BertModel
    with torch.no_grad():
        want0 = ref(input_ids=torch.tensor(ids[:1])).last_hidden_state.numpy()
    np.testing.assert_allclose(enc.forward(ids[:1]), want0, atol=1e-4, rtol=0)
    # lists of lists give the same as a padded array with lengths
    as_lists = [list(r[:n]) for r, n in zip(ids, lengths)]
    type_lists = [list(r[:n]) for r, n in zip(types, lengths)]
    np.testing.assert_array_equal(enc.forward(as_lists, token_type_ids=type_lists), got)


def test_bert_for_sequence_classification_folder_loads_the_encoder(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(3)
    ref = BertForSequenceClassification(BertConfig(**BERT_CONFIGS["tiny"], num_labels=3)).eval()
    ref.save_pretrained(str(tmp_path / "cls"))
    enc = Encoder.from_pretrained(str(tmp_path / "cls"))
    ids = np.array([[5, 9, 12, 3]])
    with torch.no_grad():
        want = ref.bert(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(enc.forward(ids), want, atol=1e-4, rtol=0)


def _small(**kw):
    c = dict(vocab_size=40, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=12, type_vocab_size=2)
    c.update(kw)
    return EncoderConfig(**c)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_matches_numpy(pooling, normalize):
    enc = Encoder(_small(), seed=4)
    seqs = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    h = enc.forward(seqs)
    want = []
    for b, s in enumerate(seqs):
        rows = h[b, :len(s)]
        want.append({"mean": rows.mean(0), "cls": rows[0], "max": rows.max(0)}[pooling])
    want = np.stack(want)
    if normalize:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    got = enc.embed(seqs, pooling=pooling, normalize=normalize)
    assert got.shape == (3, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    enc = Encoder(_small(embedding_norm=False, type_vocab_size=0, activation="relu"), seed=7)
    enc.save_pretrained(str(tmp_path / "m"))
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    assert raw["model_type"] == "cyformer-encoder"
    back = Encoder.from_pretrained(str(tmp_path / "m"))
    assert back.config == enc.config
    assert back.params.base is not None   # memory-mapped: the file's data section is the buffer
    np.testing.assert_array_equal(back.params, enc.params)
    seqs = [[1, 2, 3], [4, 5, 6, 7]]
    np.testing.assert_array_equal(back.forward(seqs), enc.forward(seqs))
    copied = Encoder.from_pretrained(str(tmp_path / "m"), mmap=False, verify=True)
    np.testing.assert_array_equal(copied.embed(seqs), enc.embed(seqs))
    assert EncoderConfig.from_json(enc.config.to_json()) == enc.config
    # tensors in another order: copied in by name
    from cyformer.io import save_safetensors
    save_safetensors(str(tmp_path / "m" / "model.safetensors"), dict(reversed(list(enc.state_dict().items()))))
    shuffled = Encoder.from_pretrained(str(tmp_path / "m"))
    np.testing.assert_array_equal(shuffled.forward(seqs), enc.forward(seqs))


def test_bert_round_trips_through_our_format(tmp_path):
    ref, folder = _bert_folder(tmp_path, "tiny")
    enc = Encoder.from_pretrained(str(folder))
    enc.save_pretrained(str(tmp_path / "ours"))
    back = Encoder.from_pretrained(str(tmp_path / "ours"))
    ids = [[4, 5, 6], [7, 8]]
    tt = [[0, 1, 1], [1, 0]]
    np.testing.assert_array_equal(back.forward(ids, token_type_ids=tt), enc.forward(ids, token_type_ids=tt))


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        _small(d_model=15)
    with pytest.raises(ValueError, match="activation"):
        _small(activation="tanh-ish")
    with pytest.raises(TypeError, match="type_vocab_size"):
        _small(type_vocab_size=1.5)
    with pytest.raises(ValueError, match="unknown EncoderConfig fields: bogus"):
        EncoderConfig.from_dict({"bogus": 1})
    with pytest.raises(TypeError, match="EncoderConfig"):
        Encoder(object())


def test_bad_inputs():
    enc = Encoder(_small(), seed=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        enc.forward([[1, 40]])
    with pytest.raises(ValueError, match="max_len"):
        enc.forward([list(range(1, 14))])
    with pytest.raises(ValueError, match="empty"):
        enc.forward([[1, 2], []])
    with pytest.raises(ValueError, match=r"token_type_ids holds 2, outside \[0, 2\)"):
        enc.forward([[1, 2]], token_type_ids=[[0, 2]])
    with pytest.raises(ValueError, match="token_type_ids"):
        enc.forward(np.array([[1, 2, 3]]), token_type_ids=np.array([[0, 1]]))
    with pytest.raises(ValueError, match="pooling"):
        enc.embed([[1, 2]], pooling="sum")
    no_types = Encoder(_small(type_vocab_size=0), seed=0)
    with pytest.raises(ValueError, match="no token-type embeddings"):
        no_types.forward([[1, 2]], token_type_ids=[[0, 0]])


def test_bad_folders(tmp_path):
    ref, folder = _bert_folder(tmp_path, "tiny")
    # a tensor missing: named in the error
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing: encoder\.layer\.1\.attention\.self\.key\.weight"):
        Encoder.from_pretrained(str(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Encoder.from_pretrained(str(folder))
    # an unsupported architecture is named
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        Encoder.from_pretrained(str(other))
    # a relative-position BERT is refused by name
    cfg = json.loads((folder / "config.json").read_text())
    cfg["position_embedding_type"] = "relative_key"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="relative_key"):
        Encoder.from_pretrained(str(folder))
    # the two model kinds point at each other
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="Encoder.from_pretrained"):
        Transformer.from_pretrained(str(other))
    with pytest.raises(FileNotFoundError):
        Encoder.from_pretrained(str(tmp_path / "nowhere"))
    Encoder(_small(), seed=0).save_pretrained(str(tmp_path / "enc"))
    with pytest.raises(ValueError, match="cyformer-encoder.*Encoder.from_pretrained"):
        Transformer.from_pretrained(str(tmp_path / "enc"))
    from cyformer import TransformerConfig
    Transformer(TransformerConfig(src_vocab_size=20, d_model=8, n_heads=2, d_ff=16, n_encoder_layers=1,
                                  n_decoder_layers=1, max_len=8)).save_pretrained(str(tmp_path / "s2s"))
    with pytest.raises(ValueError, match="'cyformer' is not supported.*Transformer.from_pretrained"):
        Encoder.from_pretrained(str(tmp_path / "s2s"))


# -- heads (issue 11, items 1, 2 and 6) -----------------------------------------------------------
LOGITS_ATOL = 1e-4   # logits vs transformers' float32 forward


def _perturbed(model):
    with torch.no_grad():   # non-trivial LayerNorm parameters and biases
        for n, p in model.named_parameters():
            if "LayerNorm" in n or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _hf_folder(tmp_path, cls_name, config_name="tiny", seed=0, family="bert", **kw):
    import transformers
    torch.manual_seed(seed)
    cfg = dict(BERT_CONFIGS[config_name])
    if family == "bert":
        config = transformers.BertConfig(**cfg, **kw)
    else:   # RoBERTa-family: positions start at pad_token_id + 1, one token type
        cfg.update(max_position_embeddings=cfg["max_position_embeddings"] + 2, type_vocab_size=1,
                   pad_token_id=1)
        config = {"roberta": transformers.RobertaConfig, "xlm-roberta": transformers.XLMRobertaConfig,
                  "camembert": transformers.CamembertConfig}[family](**cfg, **kw)
    model = _perturbed(getattr(transformers, cls_name)(config))
    folder = tmp_path / cls_name
    model.save_pretrained(str(folder))
    return model, folder


def _masked_batch(cfg, rng, lengths, n_types=None):
    ids, types, lengths, mask = _inputs(dict(cfg, type_vocab_size=n_types or cfg["type_vocab_size"]),
                                        rng, lengths)
    ids[:, 0] = 2   # a CLS-like first token
    ids[ids == 1] = 3   # keep RoBERTa's pad id (1) out of the real tokens
    return ids, types, lengths, mask


def _torch_inputs(ids, types, mask, with_types=True):
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)))
    if with_types:
        kw["token_type_ids"] = torch.tensor(types)
    return kw


@pytest.mark.parametrize("config_name", sorted(BERT_CONFIGS))
def test_bert_sequence_classification_logits(tmp_path, config_name):
    ref, folder = _hf_folder(tmp_path, "BertForSequenceClassification", config_name, num_labels=3,
                             id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    enc = Encoder.from_pretrained(str(folder))
    c = enc.config
    assert (c.head, c.n_labels, c.pooler, c.pooling) == ("sequence_classification", 3, True, "cls")
    assert c.id2label == {0: "neg", 1: "neu", 2: "pos"} and c.label2id == {"neg": 0, "neu": 1, "pos": 2}
    cfg = BERT_CONFIGS[config_name]
    ids, types, lengths, mask = _masked_batch(cfg, np.random.default_rng(2), [7, 3, 5, 1])
    with torch.no_grad():
        want = ref(**_torch_inputs(ids, types, mask)).logits.numpy()
    got = enc.classify(ids, lengths, token_type_ids=types)
    assert got.shape == (4, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=LOGITS_ATOL, rtol=0)
    # the same through lists, and after a round trip through our own format
    lists = [list(r[:n]) for r, n in zip(ids, lengths)]
    np.testing.assert_allclose(enc.classify(lists, token_type_ids=[list(r[:n]) for r, n in zip(types, lengths)]),
                               got, atol=1e-6, rtol=0)
    enc.save_pretrained(str(tmp_path / "ours"))
    back = Encoder.from_pretrained(str(tmp_path / "ours"))
    assert back.config == enc.config
    np.testing.assert_array_equal(back.classify(ids, lengths, token_type_ids=types), got)


@pytest.mark.parametrize("config_name", sorted(BERT_CONFIGS))
def test_bert_token_classification_logits(tmp_path, config_name):
    ref, folder = _hf_folder(tmp_path, "BertForTokenClassification", config_name, num_labels=5)
    enc = Encoder.from_pretrained(str(folder))
    assert (enc.config.head, enc.config.n_labels, enc.config.pooler) == ("token_classification", 5, False)
    assert enc.config.id2label[4] == "LABEL_4"
    cfg = BERT_CONFIGS[config_name]
    ids, types, lengths, mask = _masked_batch(cfg, np.random.default_rng(3), [6, 2, 4])
    with torch.no_grad():
        want = ref(**_torch_inputs(ids, types, mask)).logits.numpy()
    got = enc.classify(ids, lengths, token_type_ids=types)
    assert got.shape == (3, 6, 5)
    np.testing.assert_allclose(got[mask], want[mask], atol=LOGITS_ATOL, rtol=0)
    assert not got[~mask].any()   # zeros past the lengths, as forward


def test_bert_model_pooler_output(tmp_path):
    ref, folder = _hf_folder(tmp_path, "BertModel")
    enc = Encoder.from_pretrained(str(folder))
    assert enc.config.pooler and enc.config.head is None
    cfg = BERT_CONFIGS["tiny"]
    ids, types, lengths, mask = _masked_batch(cfg, np.random.default_rng(4), [5, 3])
    with torch.no_grad():
        out = ref(**_torch_inputs(ids, types, mask))
    np.testing.assert_allclose(enc.embed(ids, lengths, token_type_ids=types, pooling="pooler"),
                               out.pooler_output.numpy(), atol=LOGITS_ATOL, rtol=0)
    np.testing.assert_allclose(enc.forward(ids, lengths, token_type_ids=types)[mask],
                               out.last_hidden_state.numpy()[mask], atol=LOGITS_ATOL, rtol=0)
    # a BertModel saved without its pooler loads without one
    from transformers import BertConfig, BertModel
    BertModel(BertConfig(**cfg), add_pooling_layer=False).save_pretrained(str(tmp_path / "nopool"))
    assert not Encoder.from_pretrained(str(tmp_path / "nopool")).config.pooler


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "camembert"])
@pytest.mark.parametrize("kind", ["Model", "ForSequenceClassification", "ForTokenClassification"])
def test_roberta_family_loads(tmp_path, family, kind):
    prefix = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert"}[family]
    ref, folder = _hf_folder(tmp_path, prefix + kind, family=family, num_labels=3)
    enc = Encoder.from_pretrained(str(folder))
    cfg = BERT_CONFIGS["tiny"]
    assert enc.config.max_len == cfg["max_position_embeddings"]   # the offset rows are not positions
    ids, types, lengths, mask = _masked_batch(cfg, np.random.default_rng(5), [7, 4, 1], n_types=1)
    ids[~mask] = 1   # RoBERTa pads with pad_token_id (it derives positions from it)
    with torch.no_grad():
        out = ref(**_torch_inputs(ids, types, mask, with_types=False))
    if kind == "Model":
        np.testing.assert_allclose(enc.forward(ids, lengths)[mask], out.last_hidden_state.numpy()[mask],
                                   atol=LOGITS_ATOL, rtol=0)
        np.testing.assert_allclose(enc.embed(ids, lengths, pooling="pooler"), out.pooler_output.numpy(),
                                   atol=LOGITS_ATOL, rtol=0)
    elif kind == "ForSequenceClassification":
        np.testing.assert_allclose(enc.classify(ids, lengths), out.logits.numpy(), atol=LOGITS_ATOL, rtol=0)
    else:
        np.testing.assert_allclose(enc.classify(ids, lengths)[mask], out.logits.numpy()[mask],
                                   atol=LOGITS_ATOL, rtol=0)


def _distilbert_folder(tmp_path, cls_name, seed=0, **kw):
    import transformers
    torch.manual_seed(seed)
    cfg = BERT_CONFIGS["tiny"]
    config = transformers.DistilBertConfig(vocab_size=cfg["vocab_size"], dim=cfg["hidden_size"],
                                           n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
                                           hidden_dim=cfg["intermediate_size"],
                                           max_position_embeddings=cfg["max_position_embeddings"], **kw)
    model = _perturbed(getattr(transformers, cls_name)(config))
    model.save_pretrained(str(tmp_path / cls_name))
    return model, tmp_path / cls_name


@pytest.mark.parametrize("family", ["electra", "distilbert"])
@pytest.mark.parametrize("kind", ["Model", "ForSequenceClassification", "ForTokenClassification"])
def test_electra_and_distilbert_load(tmp_path, family, kind):
    if family == "electra":
        import transformers
        torch.manual_seed(0)
        ref = _perturbed(getattr(transformers, "Electra" + kind)(transformers.ElectraConfig(
            embedding_size=BERT_CONFIGS["tiny"]["hidden_size"], num_labels=3, **BERT_CONFIGS["tiny"])))
        folder = tmp_path / kind
        ref.save_pretrained(str(folder))
    else:
        ref, folder = _distilbert_folder(tmp_path, "DistilBert" + kind, num_labels=3)
    enc = Encoder.from_pretrained(str(folder))
    if kind == "ForSequenceClassification":
        assert enc.config.pooler and enc.config.pooler_activation == {"electra": "gelu", "distilbert": "relu"}[family]
    cfg = BERT_CONFIGS["tiny"]
    n_types = 2 if family == "electra" else 1
    ids, types, lengths, mask = _masked_batch(cfg, np.random.default_rng(6), [7, 4, 1], n_types=n_types)
    with torch.no_grad():
        out = ref(**_torch_inputs(ids, types, mask, with_types=family == "electra"))
    tt = types if family == "electra" else None
    if kind == "Model":
        np.testing.assert_allclose(enc.forward(ids, lengths, token_type_ids=tt)[mask],
                                   out.last_hidden_state.numpy()[mask], atol=LOGITS_ATOL, rtol=0)
    elif kind == "ForSequenceClassification":
        np.testing.assert_allclose(enc.classify(ids, lengths, token_type_ids=tt), out.logits.numpy(),
                                   atol=LOGITS_ATOL, rtol=0)
    else:
        np.testing.assert_allclose(enc.classify(ids, lengths, token_type_ids=tt)[mask], out.logits.numpy()[mask],
                                   atol=LOGITS_ATOL, rtol=0)


def test_electra_with_an_embedding_projection_is_refused(tmp_path):
    import transformers
    transformers.ElectraModel(transformers.ElectraConfig(embedding_size=16, **BERT_CONFIGS["tiny"])).save_pretrained(
        str(tmp_path / "e"))
    with pytest.raises(CheckpointError, match="embedding_size.*embeddings_project"):
        Encoder.from_pretrained(str(tmp_path / "e"))


def test_head_config_fields_and_validation():
    c = _small(head="sequence_classification", n_labels=3, pooler=True)
    assert c.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    back = EncoderConfig.from_json(c.to_json())   # JSON keys are strings: read back as ints
    assert back == c and back.id2label[2] == "LABEL_2"
    assert json.loads(c.to_json())["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    named = _small(head="token_classification", n_labels=2, id2label={0: "O", 1: "NOUN"})
    assert named.label2id == {"O": 0, "NOUN": 1}
    with pytest.raises(ValueError, match="head must be None or one of"):
        _small(head="regression")
    with pytest.raises(ValueError, match="id2label must name the classes 0..2"):
        _small(head="sequence_classification", n_labels=3, id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="names a label twice: 'a'"):
        _small(n_labels=2, id2label={0: "a", 1: "a"})
    with pytest.raises(TypeError, match="id2label keys"):
        _small(n_labels=1, id2label={"x": "a"})
    with pytest.raises(ValueError, match="n_labels must be >= 1"):
        _small(head="sequence_classification", n_labels=0)
    with pytest.raises(ValueError, match="pooling must be one of"):
        _small(head="sequence_classification", pooling="sum")
    with pytest.raises(ValueError, match="classifier_dropout"):
        _small(classifier_dropout=1.5)
    with pytest.raises(ValueError, match="pooler_activation"):
        _small(pooler=True, pooler_activation="softmax")


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
@pytest.mark.parametrize("pooler", [False, True])
def test_sequence_head_matches_numpy(pooling, pooler):
    enc = Encoder(_small(head="sequence_classification", n_labels=4, pooling=pooling, pooler=pooler), seed=5)
    seqs = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    h = enc.forward(seqs)
    p = np.stack([{"cls": r[0], "mean": r.mean(0), "max": r.max(0)}[pooling]
                  for r in (h[b, :len(s)] for b, s in enumerate(seqs))]).astype(np.float64)
    if pooler:
        p = np.tanh(p @ enc["pooler.dense.weight"].T.astype(np.float64) + enc["pooler.dense.bias"])
    want = p @ enc["classifier.weight"].T.astype(np.float64) + enc["classifier.bias"]
    np.testing.assert_allclose(enc.classify(seqs), want, atol=1e-5, rtol=1e-5)


def test_head_bad_input(tmp_path):
    plain = Encoder(_small(), seed=0)
    with pytest.raises(ValueError, match="no classification head.*config.head is None"):
        plain.classify([[1, 2]])
    with pytest.raises(ValueError, match="pooling='pooler'.*has none"):
        plain.embed([[1, 2]], pooling="pooler")
    # a headless checkpoint names its architecture
    from transformers import BertConfig, BertForMaskedLM
    BertForMaskedLM(BertConfig(**BERT_CONFIGS["tiny"])).save_pretrained(str(tmp_path / "mlm"))
    mlm = Encoder.from_pretrained(str(tmp_path / "mlm"))
    with pytest.raises(ValueError, match="no classification head.*BertForMaskedLM"):
        mlm.classify([[1, 2]])
    mlm.forward([[1, 2]])   # the encoder itself is usable
    tagger = Encoder(_small(head="token_classification", n_labels=3), seed=0)
    with pytest.raises(ValueError, match=r"token_type_ids holds 5, outside \[0, 2\)"):
        tagger.classify([[1, 2]], token_type_ids=[[0, 5]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tagger.classify([[1, 99]])
    # a classifier tensor missing from a BertFor*Classification folder is named
    ref, folder = _hf_folder(tmp_path, "BertForSequenceClassification")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["classifier.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing: classifier.weight"):
        Encoder.from_pretrained(str(folder))
    # unsupported families are named
    (tmp_path / "albert").mkdir()
    (tmp_path / "albert" / "config.json").write_text(json.dumps({"model_type": "albert",
                                                                  "architectures": ["AlbertModel"]}))
    with pytest.raises(ValueError, match="model_type 'albert' is not supported"):
        Encoder.from_pretrained(str(tmp_path / "albert"))
