"""The whole model against torch.nn.Transformer and transformers.MarianMTModel (same weights)."""
import json
import os

import numpy as np
import pytest

import cyformer
from cyformer import CheckpointError, Transformer, TransformerConfig

torch = pytest.importorskip("torch")
from _reference import TorchSeq2Seq, compare_padded, marian_logits, marian_model  # noqa: E402

# Logits within 1e-4 absolute (DESIGN.md section 7); encoder memory within 1e-5.
LOGITS_ATOL = 1e-4
MEMORY_ATOL = 1e-5

SRC = [[5, 6, 7, 8, 9, 3, 4], [9, 10, 3], [11, 12, 13, 14, 15]]
TGT_IN = [[1, 3, 4], [1, 11, 12, 13, 14, 15], [1]]


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_matches_torch_transformer(norm_first, activation):
    ref = TorchSeq2Seq(norm_first=norm_first, activation=activation, seed=1)
    model = ref.to_cyformer()
    assert model.config.norm_first == norm_first and model.config.final_norm
    memory = model.encode(SRC)
    assert compare_padded(memory, ref.encode(SRC), [len(s) for s in SRC]) < MEMORY_ATOL
    err = compare_padded(model.forward(SRC, TGT_IN), ref.logits(SRC, TGT_IN), [len(t) for t in TGT_IN])
    assert err < LOGITS_ATOL


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("positional,share,final_norm,output_bias", [
    ("learned", False, True, True),
    ("sinusoidal", True, False, False),
    ("learned", True, False, True),
])
def test_matches_torch_variants(norm_first, positional, share, final_norm, output_bias):
    ref = TorchSeq2Seq(norm_first=norm_first, positional=positional, share=share,
                       final_norm=final_norm, output_bias=output_bias, n_enc=1, n_dec=3, seed=2)
    model = ref.to_cyformer()
    assert model.config.share_embeddings == share and model.config.final_norm == final_norm
    err = compare_padded(model.forward(SRC, TGT_IN), ref.logits(SRC, TGT_IN), [len(t) for t in TGT_IN])
    assert err < LOGITS_ATOL


@pytest.mark.parametrize("norm_first", [False, True])
def test_single_layers_match_torch(norm_first):
    """One encoder layer and one decoder layer, no final norm: each layer on its own."""
    ref = TorchSeq2Seq(norm_first=norm_first, n_enc=1, n_dec=1, final_norm=False, seed=3)
    model = ref.to_cyformer()
    assert compare_padded(model.encode(SRC), ref.encode(SRC), [len(s) for s in SRC]) < MEMORY_ATOL
    err = compare_padded(model.forward(SRC, TGT_IN), ref.logits(SRC, TGT_IN), [len(t) for t in TGT_IN])
    assert err < LOGITS_ATOL


@pytest.fixture(scope="module", params=["swish", "relu", "gelu"])
def marian(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"marian-{request.param}")
    hf = marian_model(directory, activation=request.param, seed=4)
    return directory, hf


def test_matches_marian(marian):
    directory, hf = marian
    model = Transformer.from_pretrained(str(directory))
    c = model.config
    assert (c.positional, c.sinusoidal_layout, c.norm_first, c.final_norm) == ("sinusoidal", "halves", False, False)
    assert c.pad_id == c.decoder_start_id == hf.config.pad_token_id
    src = [[5, 6, 7, 8, 0], [9, 10, 0], [3, 0]]
    tgt_in = [[59, 3, 4], [59, 11, 12, 13], [59]]
    err = compare_padded(model.forward(src, tgt_in), marian_logits(hf, src, tgt_in), [len(t) for t in tgt_in])
    assert err < LOGITS_ATOL


def test_marian_roundtrip_through_our_checkpoint(marian, tmp_path):
    directory, hf = marian
    model = Transformer.from_pretrained(str(directory))
    model.save_pretrained(str(tmp_path))
    again = Transformer.from_pretrained(str(tmp_path))
    src, tgt_in = [[5, 6, 0]], [[59, 7, 8]]
    np.testing.assert_array_equal(again.forward(src, tgt_in), model.forward(src, tgt_in))


def test_marian_missing_and_unexpected_tensors_are_named(marian, tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, _ = marian
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    del tensors["model.decoder.layers.1.fc2.bias"]
    tensors["model.decoder.layers.9.fc2.bias"] = np.zeros(4, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with open(os.path.join(directory, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    with pytest.raises(CheckpointError, match="decoder.layers.1.fc2.bias"):
        Transformer.from_pretrained(str(tmp_path))
    tensors["model.decoder.layers.1.fc2.bias"] = np.zeros(32, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="layers.9.fc2.bias"):
        Transformer.from_pretrained(str(tmp_path))


def small_model(**kw):
    cfg = dict(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, d_ff=64,
               n_encoder_layers=2, n_decoder_layers=2, max_len=40)
    cfg.update(kw)
    return Transformer(TransformerConfig(**cfg), seed=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_one_and_two_threads_agree(norm_first):
    model = small_model(norm_first=norm_first, d_model=64, d_ff=256)
    rng = np.random.default_rng(0)
    src = [list(rng.integers(3, 50, n)) for n in (37, 5, 21, 40)]
    tgt = [list(rng.integers(3, 50, n)) for n in (12, 40, 1, 30)]
    try:
        cyformer.set_num_threads(1)
        one = model.forward(src, tgt)
        cyformer.set_num_threads(2)
        two = model.forward(src, tgt)
    finally:
        cyformer.set_num_threads(cyformer.threads.default_num_threads())
    np.testing.assert_allclose(one, two, rtol=1e-6, atol=1e-6)


def test_padded_array_input_equals_lists():
    model = small_model()
    src = [[5, 6, 7], [8, 9]]
    tgt = [[1, 4], [1, 5, 6, 7]]
    padded_src = np.array([[5, 6, 7], [8, 9, 0]])
    padded_tgt = np.array([[1, 4, 0, 0], [1, 5, 6, 7]])
    a = model.forward(src, tgt)
    b = model.forward(padded_src, padded_tgt, src_lengths=[3, 2], tgt_lengths=np.array([2, 4]))
    np.testing.assert_array_equal(a, b)
    assert np.all(a[0, 2:] == 0)


def test_batched_equals_one_by_one():
    model = small_model()
    src = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    tgt = [[1, 4], [1, 5, 6, 7], [1]]
    batched = model.forward(src, tgt)
    for i in range(3):
        single = model.forward([src[i]], [tgt[i]])
        np.testing.assert_allclose(batched[i, :len(tgt[i])], single[0], rtol=1e-5, atol=1e-6)


def test_save_load_is_memory_mapped_and_exact(tmp_path):
    model = small_model(positional="learned", share_embeddings=True)
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = Transformer.from_pretrained(str(tmp_path))
    assert isinstance(loaded.params, np.memmap), "our own checkpoint must load without a copy"
    np.testing.assert_array_equal(loaded.params, model.params)
    assert loaded.config == model.config
    src, tgt = [[5, 6, 7]], [[1, 4]]
    np.testing.assert_array_equal(loaded.forward(src, tgt), model.forward(src, tgt))
    # The file is readable by the reference safetensors library, with our names.
    from safetensors.numpy import load_file
    tensors = load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(tensors["decoder.layers.1.linear2.weight"],
                                  model["decoder.layers.1.linear2.weight"])


def test_loaded_model_can_be_modified_without_touching_the_file(tmp_path):
    model = small_model()
    model.save_pretrained(str(tmp_path))
    before = (tmp_path / "model.safetensors").read_bytes()
    loaded = Transformer.from_pretrained(str(tmp_path))
    loaded.params[:] = 0.5
    assert (tmp_path / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "truncate_header", "garbage_header", "empty", "huge_header"])
def test_damaged_weights_are_refused(tmp_path, damage):
    model = small_model()
    model.save_pretrained(str(tmp_path))
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        data = data[:-100]
    elif damage == "truncate_header":
        data = data[:20]
    elif damage == "garbage_header":
        data = data[:8] + b"\xff{not json" + data[18:]
    elif damage == "empty":
        data = b""
    elif damage == "huge_header":
        data = (2 ** 62).to_bytes(8, "little") + data[8:]
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        Transformer.from_pretrained(str(tmp_path))


def test_config_and_weights_that_disagree(tmp_path):
    model = small_model()
    model.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["d_ff"] = 128
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"linear1.weight: expected \[128, 32\], got \[64, 32\]"):
        Transformer.from_pretrained(str(tmp_path))
    cfg["d_ff"] = 64
    cfg["n_decoder_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing: decoder.layers.2"):
        Transformer.from_pretrained(str(tmp_path))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        Transformer.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        Transformer.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text("{bad json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Transformer.from_pretrained(str(tmp_path))


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    model.save_pretrained(str(tmp_path))
    good = (tmp_path / "model.safetensors").read_bytes()
    other = small_model()
    other.init_parameters(seed=7)

    import cyformer.io as cio
    real_fsync = os.fsync

    def crash(fd):
        raise OSError("disk full")
    monkeypatch.setattr(cio.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(str(tmp_path))
    monkeypatch.setattr(cio.os, "fsync", real_fsync)
    assert (tmp_path / "model.safetensors").read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    Transformer.from_pretrained(str(tmp_path))


BAD_INPUTS = [
    ([[5, 50]], ValueError, "outside the vocabulary"),
    ([[5, -1]], ValueError, "outside the vocabulary"),
    ([], ValueError, "empty batch"),
    ([[5], []], ValueError, r"src\[1\] is empty"),
    ([list(range(3, 44))], ValueError, "more than max_len=40"),
    ([[5.0, 6.0]], TypeError, "integer token ids"),
    (np.zeros((2, 3), dtype=np.float32), TypeError, "integer token ids"),
    (np.zeros((2, 3, 4), dtype=np.int64), ValueError, "must be"),
    (np.zeros((0, 3), dtype=np.int64), ValueError, "empty batch"),
    (np.zeros((2, 0), dtype=np.int64), ValueError, "is empty"),
    ("hello", TypeError, "not text; to translate text use cyformer.Translator"),
    ([[[1, 2]]], ValueError, "flat list"),
    (np.array([[True, False]]), TypeError, "integer token ids"),
]


@pytest.mark.parametrize("src,exc,match", BAD_INPUTS)
def test_bad_source_input(src, exc, match):
    model = small_model()
    with pytest.raises(exc, match=match):
        model.encode(src)


def test_bad_forward_input():
    model = small_model()
    with pytest.raises(ValueError, match="2 sequences but tgt_in has 1"):
        model.forward([[5], [6]], [[1]])
    with pytest.raises(ValueError, match="tgt_in holds token id 99"):
        model.forward([[5]], [[1, 99]])
    with pytest.raises(ValueError, match="exceeds the padded width"):
        model.forward(np.array([[5, 6]]), np.array([[1]]), src_lengths=[3])
    with pytest.raises(ValueError, match="lengths must have shape"):
        model.forward(np.array([[5, 6]]), np.array([[1]]), src_lengths=[2, 2])
    with pytest.raises(TypeError, match="lengths must be integers"):
        model.forward(np.array([[5, 6]]), np.array([[1]]), src_lengths=[1.5])


def test_output_after_error_is_still_right():
    model = small_model()
    good = model.forward([[5, 6]], [[1, 2]])
    with pytest.raises(ValueError):
        model.forward([[5, 600]], [[1, 2]])
    np.testing.assert_array_equal(model.forward([[5, 6]], [[1, 2]]), good)
