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
