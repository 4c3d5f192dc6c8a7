"""Files from elsewhere, files for others (issue 14, items 9 and 5).

Hostile inputs: corrupt or hand-made ``model.safetensors`` headers and JSON files
(``config.json`` of cyformer and Marian folders, ``tokenizer_config.json``, ``vocab.json``,
``trainer_state.json``) must get a CheckpointError naming the file and the problem, never a
RecursionError, TypeError, OverflowError or MemoryError. The bounds are the safetensors
reader's own: a header of at most 100,000,000 bytes, JSON nested at most 127 deep.

Written files: what cyformer writes (weights, configs, tokenizer files, checkpoint folders,
history.json) gets the mode a plain ``open()`` / ``mkdir`` gives under the umask, not
mkstemp's 0600 / mkdtemp's 0700.
"""
import json
import os
import stat
import struct

import numpy as np
import pytest

import cyformer.io as cio
from cyformer import CheckpointError, Transformer, TransformerConfig
from cyformer.io import json_depth, load_safetensors, parse_json, read_json, read_safetensors_header

F32x4 = b"\0" * 16


def safetensors_blob(header, data=b"", length=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def entry(dtype="F32", shape=(4,), offsets=(0, 16)):
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


# The seven hand-made files of the issue, and what the error must say.
SEVEN = {
    "header length 2^62": (struct.pack("<Q", 2 ** 62) + b"{}" + b"\0" * 30, "over the 100000000-byte limit"),
    "a 4 PB tensor": (safetensors_blob({"w": entry(shape=(2 ** 50,), offsets=(0, 2 ** 52))}, F32x4),
                      "ends at byte 4503599627370496 .*truncated"),
    "a negative shape": (safetensors_blob({"w": entry(shape=(-1, 4))}, F32x4), "negative dimension"),
    "overlapping tensors": (safetensors_blob({"a": entry(), "b": entry(shape=(2,), offsets=(8, 16))}, F32x4),
                            "'a' and 'b' overlap"),
    "an unknown dtype": (safetensors_blob({"w": entry(dtype="F33")}, F32x4), "unknown dtype 'F33'"),
    "an unclosed list x1000": (safetensors_blob(b"[" * 1000), "more than 127 levels deep"),
    "JSON nested 100,000 deep": (safetensors_blob(b"[" * 100_000 + b"]" * 100_000), "more than 127 levels deep"),
}

# Valid JSON, wrong shape.
WRONG_SHAPE = {
    "a list": (safetensors_blob([1, 2]), "not a JSON object"),
    "an entry that is a list": (safetensors_blob({"w": [1, 2]}), "header entry is an array"),
    "an entry that is a string": (safetensors_blob({"w": "F32"}), "header entry is a string"),
    "an entry without offsets": (safetensors_blob({"w": {"dtype": "F32", "shape": [4]}}, F32x4), "no data_offsets"),
    "a dtype that is a list": (safetensors_blob({"w": entry(dtype=["F32"])}, F32x4), "unknown dtype"),
    "a dtype that is a number": (safetensors_blob({"w": entry(dtype=4)}, F32x4), "unknown dtype 4"),
    "a float dimension": (safetensors_blob({"w": entry(shape=[4.0])}, F32x4), "not a list of integers"),
    "a bool dimension": (safetensors_blob({"w": entry(shape=[True, 4])}, F32x4), "not a list of integers"),
    "a shape that is a string": (safetensors_blob({"w": entry(shape="4")}, F32x4), "not a list of integers"),
    "a huge shape": (safetensors_blob({"w": entry(shape=[2 ** 64, 2 ** 64, 0], offsets=(0, 0))}, F32x4),
                     "too large for any array"),
    "a shape that wraps int64": (safetensors_blob({"w": entry(shape=[2 ** 62, 4], offsets=(0, 0))}, F32x4),
                                 "too large for any array"),
    "33 dimensions": (safetensors_blob({"w": entry(shape=[1] * 32 + [4])}, F32x4), "33 dimensions"),
    "string offsets": (safetensors_blob({"w": entry(offsets=["0", "16"])}, F32x4), "not a pair of integers"),
    "float offsets": (safetensors_blob({"w": entry(offsets=[0, 16.0])}, F32x4), "not a pair of integers"),
    "three offsets": (safetensors_blob({"w": entry(offsets=[0, 8, 16])}, F32x4), "not a pair of integers"),
    "reversed offsets": (safetensors_blob({"w": entry(offsets=[16, 0])}, F32x4), "invalid data_offsets"),
    "metadata of numbers": (safetensors_blob({"__metadata__": {"a": 1}}), "__metadata__"),
    "a 5000-digit number": (safetensors_blob(b'{"w": ' + b"1" * 5000 + b"}"), "not valid JSON"),
    "bad UTF-8": (safetensors_blob(b'{"\xff": 1}'), "not valid UTF-8"),
}


@pytest.mark.parametrize("case", list(SEVEN) + list(WRONG_SHAPE))
def test_hostile_safetensors_get_a_checkpoint_error(tmp_path, case):
    blob, problem = {**SEVEN, **WRONG_SHAPE}[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    for read in (read_safetensors_header, load_safetensors):
        with pytest.raises(CheckpointError, match=problem) as info:
            read(str(path))
        assert str(info.value).startswith(str(path))   # names the file


@pytest.mark.parametrize("case", list(SEVEN))
def test_hostile_weights_in_a_model_folder(tmp_path, case):
    """Through from_pretrained (both the flat-buffer path and verify=True)."""
    Transformer(TransformerConfig(src_vocab_size=11, d_model=8, n_heads=2, d_ff=16, n_encoder_layers=1,
                                  n_decoder_layers=1, max_len=8), seed=0).save_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(SEVEN[case][0])
    for verify in (False, True):
        with pytest.raises(CheckpointError, match=SEVEN[case][1]):
            Transformer.from_pretrained(str(tmp_path), verify=verify)


def test_brackets_inside_strings_do_not_count(tmp_path):
    names = {"[" * 300 + "\\\"" + "{" * 300: entry(), "x\\": entry(offsets=(16, 32))}
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_blob(names, F32x4 * 2))
    arrays = load_safetensors(str(path))
    assert sorted(arrays) == sorted(names) and all(a.shape == (4,) for a in arrays.values())


def test_nesting_limit_is_serde_jsons():
    # serde_json starts with remaining_depth 128 and fails when a bracket takes it to 0
    assert parse_json("[" * 127 + "]" * 127, "x") is not None
    with pytest.raises(CheckpointError, match="more than 127 levels"):
        parse_json("[" * 128 + "]" * 128, "x")
    assert json_depth(b'{"a": [1, {"b": "]]]]"}], "c\\"[[": []}') == 3
    assert json_depth(b'"\\\\" [[[') == 3   # an escaped backslash ends the string: outside
    assert json_depth(b'"\\" [[["') == 0     # an escaped quote does not: inside
    assert json_depth(b"]]][[[[") == 0


def test_header_size_limit(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_blob({"w": entry()}, F32x4))
    assert load_safetensors(str(path))["w"].shape == (4,)
    monkeypatch.setattr(cio, "MAX_HEADER_BYTES", 16)
    with pytest.raises(CheckpointError, match="over the 16-byte limit"):
        load_safetensors(str(path))


# -- JSON files -----------------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE_JSON = {
    "nested 100,000 deep": (DEEP.encode(), "more than 127 levels deep"),
    "an unclosed list x1000": (b"[" * 1000, "more than 127 levels deep"),
    "deep inside an object": (b'{"a": ' + b"{" * 500 + b"}" * 500 + b"}", "more than 127 levels deep"),
    "not JSON": (b"{oops", "not valid JSON"),
    "bad UTF-8": (b'{"\xff\xfe": 1}', "not valid UTF-8"),
    "a 5000-digit number": (b'{"d_model": ' + b"9" * 5000 + b"}", "not valid JSON"),
}


def _tokenizer_folder(folder, vocab=None, config=None):
    from cyformer.tokenizer import VocabTokenizer
    VocabTokenizer(list("abc")).save_pretrained(str(folder))
    if vocab is not None:
        (folder / "vocab.json").write_bytes(vocab)
    if config is not None:
        (folder / "tokenizer_config.json").write_bytes(config)


def _load_model(folder):
    return Transformer.from_pretrained(str(folder))


def _load_marian(folder):
    from cyformer.convert import load_marian
    return load_marian(str(folder))


def _load_tokenizer(folder):
    from cyformer.tokenizer import Tokenizer
    return Tokenizer.from_pretrained(str(folder))


def _load_vocab_tokenizer(folder):
    from cyformer.tokenizer import VocabTokenizer
    return VocabTokenizer.from_pretrained(str(folder))


def _load_spm_vocab(folder):
    from cyformer.tokenizer import SentencePieceTokenizer
    (folder / "source.spm").write_bytes(b"")   # the vocabulary is read first
    return SentencePieceTokenizer.from_pretrained(str(folder))


# (file, loader): every reader of the JSON files a model folder holds
JSON_READERS = {
    "config.json/from_pretrained": ("config.json", _load_model),
    "config.json/load_marian": ("config.json", _load_marian),
    "config.json/TransformerConfig.load": ("config.json", lambda f: TransformerConfig.load(str(f / "config.json"))),
    "tokenizer_config.json/Tokenizer": ("tokenizer_config.json", _load_tokenizer),
    "tokenizer_config.json/VocabTokenizer": ("tokenizer_config.json", _load_vocab_tokenizer),
    "vocab.json/VocabTokenizer": ("vocab.json", _load_vocab_tokenizer),
    "vocab.json/SentencePieceTokenizer": ("vocab.json", _load_spm_vocab),
}


@pytest.mark.parametrize("reader", list(JSON_READERS))
@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_json_files_get_a_checkpoint_error(tmp_path, reader, case):
    name, load = JSON_READERS[reader]
    if name != "config.json":
        _tokenizer_folder(tmp_path)
    blob, problem = HOSTILE_JSON[case]
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(CheckpointError, match=problem) as info:
        load(tmp_path)
    assert str(tmp_path / name) in str(info.value)


@pytest.mark.parametrize("reader", ["config.json/from_pretrained", "config.json/load_marian",
                                    "tokenizer_config.json/Tokenizer"])
def test_json_files_of_the_wrong_shape(tmp_path, reader):
    name, load = JSON_READERS[reader]
    (tmp_path / name).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object, not an array"):
        load(tmp_path)


def test_vocab_ids_must_be_integers(tmp_path):
    _tokenizer_folder(tmp_path, vocab=b'{"<pad>": 0, "</s>": true, "<unk>": 2.0, "<s>": 3}')
    with pytest.raises(ValueError, match="integer ids"):
        _load_vocab_tokenizer(tmp_path)


def test_json_size_limit(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad": " " * 100}))
    assert read_json(str(path), expect=dict)
    with pytest.raises(CheckpointError, match="larger than 50 bytes"):
        read_json(str(path), max_bytes=50)
    monkeypatch.setattr(cio, "MAX_JSON_BYTES", 50)   # the default every loader uses
    with pytest.raises(CheckpointError, match="larger than 50 bytes"):
        TransformerConfig.load(str(path))


def test_config_from_json_is_bounded():
    with pytest.raises(ValueError, match="config nests arrays/objects more than 127"):
        TransformerConfig.from_json(DEEP)


def test_trainer_state_is_bounded(tmp_path):
    from cyformer.training import STATE_NAME, Trainer
    model = Transformer(TransformerConfig(src_vocab_size=11, d_model=8, n_heads=2, d_ff=16, n_encoder_layers=1,
                                          n_decoder_layers=1, max_len=8), seed=0)
    path = Trainer(model, schedule="constant", lr=1e-3).save_checkpoint(str(tmp_path))
    with open(os.path.join(path, STATE_NAME), "w") as f:
        f.write(DEEP)
    with pytest.raises(CheckpointError, match="more than 127 levels deep"):
        Trainer.from_checkpoint(path)


# -- file modes -----------------------------------------------------------------------------
def _modes(folder):
    """{relative path: permission bits} of everything under folder (folders included)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            out[os.path.relpath(p, folder)] = stat.S_IMODE(os.stat(p).st_mode)
    return out


@pytest.fixture
def umask():
    """Set the process umask for one test; restored after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _write_everything(root):
    """Every writer of user-visible files, into root."""
    from cyformer.recipes import _finish
    from cyformer.tokenizer import SentencePieceTokenizer, VocabTokenizer
    from cyformer.training import Trainer

    model = Transformer(TransformerConfig(src_vocab_size=40, d_model=8, n_heads=2, d_ff=16, n_encoder_layers=1,
                                          n_decoder_layers=1, max_len=8), seed=0)
    model.save_pretrained(os.path.join(root, "model"))
    VocabTokenizer(list("abc")).save_pretrained(os.path.join(root, "model"))
    model.config.save(os.path.join(root, "config-only.json"))
    trainer = Trainer(model, schedule="constant", lr=1e-3)
    trainer.save_checkpoint(os.path.join(root, "run"))
    trainer.save_checkpoint(os.path.join(root, "run"))      # the same step again: replaced
    marian = Transformer(TransformerConfig(src_vocab_size=40, d_model=8, n_heads=2, d_ff=16, n_encoder_layers=1,
                                           n_decoder_layers=1, max_len=8, norm_first=False, final_norm=False,
                                           positional="sinusoidal", sinusoidal_layout="halves",
                                           tie_output=True, activation="relu"), seed=0)
    marian.save_pretrained(os.path.join(root, "marian"), format="marian")
    texts = [f"w{i} w{i % 7} x{i % 3} y{i % 11}" for i in range(300)]
    spm = SentencePieceTokenizer.train(texts, os.path.join(root, "spm-train"), vocab_size=40)
    spm.save_pretrained(os.path.join(root, "spm-copy"))     # copies the .spm files

    class Log:
        lines = []

        def __call__(self, s):
            self.lines.append(s)
    import cyformer.plots as plots

    def no_plot(*a, **k):
        raise ImportError("no plots in this test")
    orig, plots.plot_history = plots.plot_history, no_plot
    try:
        _finish(trainer, VocabTokenizer(list("abc")), os.path.join(root, "finished"), "t", Log())
    finally:
        plots.plot_history = orig


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    _write_everything(str(tmp_path))
    modes = _modes(str(tmp_path))
    for must in ("model/model.safetensors", "model/config.json", "model/vocab.json",
                 "model/tokenizer_config.json", "config-only.json", "marian/model.safetensors",
                 "marian/config.json", "marian/generation_config.json", "spm-train/source.spm",
                 "spm-train/target.spm", "spm-train/vocab.json", "spm-copy/source.spm", "spm-copy/vocab.json",
                 "finished/history.json", "finished/model.safetensors", "run/checkpoint-0",
                 "run/checkpoint-0/model.safetensors", "run/checkpoint-0/trainer_state.json"):
        assert must in modes, must
    for path, mode in modes.items():
        want = dir_mode if os.path.isdir(tmp_path / path) else file_mode
        assert mode == want, f"{path}: {oct(mode)} under umask {oct(mask)}, expected {oct(want)}"
    assert not [p for p in modes if os.path.basename(p).startswith(".")]   # no temporary files left


def test_umask_is_read_without_changing_it(umask, monkeypatch):
    umask(0o027)
    assert cio.current_umask() == 0o027
    assert cio.file_mode() == 0o640 and cio.dir_mode() == 0o750

    def no_proc(path, *a, **k):
        raise FileNotFoundError(path)
    monkeypatch.setattr(cio, "open", no_proc, raising=False)   # not Linux: set and restore
    assert cio.current_umask() == 0o027
    assert umask(0o027) == 0o027   # left as it was


def test_rewriting_a_file_takes_the_current_umask(tmp_path, umask):
    path = str(tmp_path / "f.bin")
    umask(0o077)
    cio.atomic_write_bytes(path, b"one")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    umask(0o022)
    cio.atomic_write_bytes(path, [b"t", memoryview(b"wo")])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644 and open(path, "rb").read() == b"two"
    cio.atomic_copy_file(path, str(tmp_path / "g.bin"))
    assert open(tmp_path / "g.bin", "rb").read() == b"two"
    assert np.array_equal(sorted(os.listdir(tmp_path)), ["f.bin", "g.bin"])
