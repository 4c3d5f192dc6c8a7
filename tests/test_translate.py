"""Tokenizers, Translator and the `cyformer translate` command, end to end."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cyformer
from cyformer import SentencePieceTokenizer, Tokenizer, Translator, Transformer, VocabTokenizer

from _reference import sentencepiece_folder, toy_sentences


@pytest.fixture(scope="module")
def marian_folder(tmp_path_factory):
    """A Marian-layout folder: spm tokenizer files + a MarianMTModel with seeded weights."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from _reference import marian_model
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("marian-spm")
    vocab = sentencepiece_folder(str(directory))
    marian_model(directory, vocab=len(vocab), seed=2)
    return str(directory)


def test_sentencepiece_tokenizer_matches_marian_tokenizer(marian_folder):
    from transformers import MarianTokenizer
    ours = Tokenizer.from_pretrained(marian_folder)
    assert isinstance(ours, SentencePieceTokenizer)
    theirs = MarianTokenizer(os.path.join(marian_folder, "source.spm"), os.path.join(marian_folder, "target.spm"),
                             os.path.join(marian_folder, "vocab.json"))
    texts = toy_sentences(np.random.default_rng(1), 20) + ["zebra quickly", "the  cat", "Ünïcode ok"]
    ids = ours.encode(texts)
    assert ids == [theirs(t)["input_ids"] for t in texts]
    assert ours.decode(ids, side="source") == theirs.batch_decode(ids, skip_special_tokens=True)
    assert ours.eos_id == theirs.eos_token_id and ours.pad_id == theirs.pad_token_id


def test_unknown_pieces_map_to_unk(marian_folder):
    tok = Tokenizer.from_pretrained(marian_folder)
    ids = tok.encode(["qqq zzz"])[0]
    assert tok.unk_id in ids and ids[-1] == tok.eos_id


def test_vocab_tokenizer_round_trip(tmp_path):
    texts = ["one two three", "three two one", "four"]
    tok = VocabTokenizer.build(texts)
    ids = tok.encode(texts)
    assert all(s[-1] == tok.eos_id for s in ids)
    assert tok.decode(ids) == texts
    tok.save_pretrained(str(tmp_path))
    again = Tokenizer.from_pretrained(str(tmp_path))
    assert isinstance(again, VocabTokenizer) and again.vocab == tok.vocab
    assert again.encode(["two five"]) == [[tok.vocab["two"], tok.unk_id, tok.eos_id]]
    chars = VocabTokenizer.build(["abc", "cab"], level="char")
    assert chars.decode(chars.encode(["bac"])) == ["bac"]


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.from_pretrained(str(tmp_path))
    tok = VocabTokenizer(["a"])
    with pytest.raises(TypeError, match="list of texts"):
        tok.encode("a")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([[999]])


def test_translator_batches_in_input_order(marian_folder):
    translator = Translator.from_pretrained(marian_folder)
    texts = toy_sentences(np.random.default_rng(3), 11)
    texts[4] = ""
    texts[7] = "   "
    batched = translator.translate(texts, beam_size=2, max_batch_size=3, max_length=10)
    assert batched[4] == "" and batched[7] == ""
    for i in (0, 5, 10):
        assert translator.translate([texts[i]], beam_size=2, max_length=10) == [batched[i]]
    results = translator.translate_batch(texts, beam_size=2, num_hypotheses=2, max_length=10)
    assert results[4] is None and len(results[0].sequences) == 2


def test_translator_truncates_long_inputs(marian_folder):
    translator = Translator.from_pretrained(marian_folder)
    long_text = " ".join(["the cat"] * 200)
    with pytest.warns(UserWarning, match="truncated"):
        out = translator.translate([long_text], max_length=5)
    assert len(out) == 1


def cli_env():
    """Child processes import the same cyformer as this test (installed or in-tree)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(cyformer.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_translates_a_file(marian_folder, tmp_path):
    texts = toy_sentences(np.random.default_rng(4), 9)
    texts[2] = ""
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    cmd = [sys.executable, "-m", "cyformer.cli", "translate", marian_folder, "--beam-size", "3",
           "--max-length", "12", "--batch-size", "4"]
    with open(tmp_path / "in.txt") as fin:
        proc = subprocess.run(cmd, stdin=fin, capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(texts)
    expected = Translator.from_pretrained(marian_folder).translate(texts, beam_size=3, max_length=12)
    assert lines[:-1] == expected


def test_cli_reports_bad_options(marian_folder):
    cmd = [sys.executable, "-m", "cyformer.cli", "translate", marian_folder, "--beam-size", "0"]
    proc = subprocess.run(cmd, input="the cat\n", capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 2 and "beam_size must be >= 1" in proc.stderr
