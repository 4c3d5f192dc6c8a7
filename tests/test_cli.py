"""The `cyformer` command end to end: demo, train (and resume), translate, plot, errors."""
import io
import json
import os
import sys

import numpy as np
import pytest

from cyformer import Transformer, Translator
from cyformer.cli import main
from cyformer.training import list_checkpoints


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_trains_saves_and_translates(tmp_path, capsys, monkeypatch):
    out_dir = str(tmp_path / "demo")
    code, out, err = run(["demo", "--task", "reverse", "--steps", "60", "--batch-tokens", "600", "--output", out_dir,
                          "--quiet", "--threads", "2"], capsys)
    assert code == 0, err
    assert "test BLEU" in out and "translations of test sentences" in out
    for name in ("config.json", "model.safetensors", "vocab.json", "tokenizer_config.json", "history.json"):
        assert os.path.exists(os.path.join(out_dir, name)), name
    pytest.importorskip("matplotlib")
    assert os.path.getsize(os.path.join(out_dir, "training.png")) > 1000
    assert os.path.getsize(os.path.join(out_dir, "attention.png")) > 1000
    # the folder is a model cyformer translate reads
    code, out, err = run(["translate", out_dir, "--quiet", "--beam-size", "2"], capsys, stdin="a b c\n\nq r s t\n",
                         monkeypatch=monkeypatch)
    assert code == 0, err
    lines = out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    assert all(tok in "abcdefghijklmnopqrstuvwxyz" for tok in lines[0].split())


def _corpus(path, n, seed):
    rng = np.random.default_rng(seed)
    words = "the cat dog house tree small big red blue green runs sees eats".split()
    src, tgt = [], []
    for _ in range(n):
        s = list(rng.choice(words, int(rng.integers(2, 7))))
        src.append(" ".join(s))
        tgt.append(" ".join(reversed(s)))
    (path / "train.src").write_text("\n".join(src) + "\n")
    (path / "train.tgt").write_text("\n".join(tgt) + "\n")


def test_train_on_files_resumes_and_plots(tmp_path, capsys):
    _corpus(tmp_path, 300, 0)
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps({"d_model": 32, "n_heads": 4, "d_ff": 64, "n_encoder_layers": 1,
                               "n_decoder_layers": 1, "max_len": 48}))
    out_dir = str(tmp_path / "model")
    base = ["train", "--data", str(tmp_path / "train.src"), str(tmp_path / "train.tgt"),
            "--valid", str(tmp_path / "train.src"), str(tmp_path / "train.tgt"), "--config", str(cfg),
            "--output", out_dir, "--vocab-size", "40", "--batch-tokens", "300", "--valid-every", "10",
            "--checkpoint-every", "10", "--quiet", "--schedule", "constant", "--lr", "1e-3"]
    code, out, err = run(base + ["--steps", "20"], capsys)
    assert code == 0, err
    assert os.path.exists(os.path.join(out_dir, "source.spm"))
    history = json.load(open(os.path.join(out_dir, "history.json")))
    assert len(history["loss"]) == 20
    # run again with more steps: resumes from checkpoint-20, keeps the tokenizer
    code, out, err = run(base + ["--steps", "30"], capsys)
    assert code == 0, err
    history2 = json.load(open(os.path.join(out_dir, "history.json")))
    assert len(history2["loss"]) == 30 and history2["loss"][:20] == history["loss"]
    assert [os.path.basename(p) for p in list_checkpoints(os.path.join(out_dir, "checkpoints"))] == \
        ["checkpoint-20", "checkpoint-30"]
    model = Transformer.from_pretrained(out_dir)
    assert model.config.d_model == 32
    assert Translator.from_pretrained(out_dir).translate(["the cat runs"], beam_size=2)[0] is not None
    pytest.importorskip("matplotlib")
    code, out, err = run(["plot", out_dir, "--out", str(tmp_path / "curve.png")], capsys)
    assert code == 0 and os.path.getsize(tmp_path / "curve.png") > 1000
    code, out, err = run(["plot", out_dir, "--sentence", "the big dog", "--out", str(tmp_path / "att.png")], capsys)
    assert code == 0 and os.path.getsize(tmp_path / "att.png") > 1000


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "/nonexistent.src", "/nonexistent.tgt", "--output", "/tmp/x"],
     "error: No such file or directory: /nonexistent.src"),
    (["demo", "--task", "poetry", "--output", ""], "unknown task"),
    (["plot", "/nonexistent"], "history.json"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("task,steps", [("tagging", 150), ("classify", 150)])
def test_label_demo_reaches_its_accuracy_and_saves_an_encoder(tmp_path, capsys, task, steps):
    from cyformer import Encoder, Tokenizer
    out_dir = str(tmp_path / task)
    code, out, err = run(["demo", "--task", task, "--steps", str(steps), "--output", out_dir, "--quiet",
                          "--threads", "1"], capsys)
    assert code == 0, err
    assert "confusion on" in out and "rows: reference, columns: predicted" in out
    accuracy = float(out.split("test accuracy ")[1].split("%")[0])
    assert accuracy >= 95.0, out
    for name in ("config.json", "model.safetensors", "vocab.json", "tokenizer_config.json", "history.json"):
        assert os.path.exists(os.path.join(out_dir, name)), name
    # the folder is an Encoder with its labels, and its tokenizer reads the task's text
    model, tok = Encoder.from_pretrained(out_dir), Tokenizer.from_pretrained(out_dir)
    text = {"tagging": "the old duck saw a fish near the boat .", "classify": "cat rain dog snow horse"}[task]
    ids = tok.encode([text], add_eos=False)
    logits = model.classify(ids)
    names = [model.config.id2label[int(k)] for k in np.atleast_1d(logits[0].argmax(-1))]
    if task == "tagging":
        assert names == "DET ADJ NOUN VERB DET NOUN ADP DET NOUN PUNCT".split()
    else:
        assert names == ["animals"]
