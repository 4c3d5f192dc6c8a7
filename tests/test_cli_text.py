"""`cyformer embed` and `cyformer classify`: text lines in, a .npy array or label lines out,
against TextEncoder on the same folder; stdin/stdout, files, errors in one line."""
import io
import sys

import numpy as np
import pytest

from cyformer import TextEncoder
from test_cli import run   # the CLI in-process, with captured output

pytest.importorskip("torch")
pytest.importorskip("transformers")

from _reference import bert_text_folder, sentence_transformer  # noqa: E402

BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=24, type_vocab_size=2)
LINES = ["the cat sat on the mat", "", "a dog runs very fast under the big green tree and the red car",
         "Night?"]
LABELS = {0: "negative", 1: "positive"}


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_text")
    bert_text_folder(root / "bert", BERT, seed=2)
    sentence_transformer(root / "bert", pooling="cls", normalize=True).save(str(root / "st"))
    return root / "st"


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory):
    from transformers import BertForSequenceClassification
    folder = tmp_path_factory.mktemp("cli_text") / "seq"
    bert_text_folder(folder, dict(BERT, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}),
                     seed=3, model_class=BertForSequenceClassification)
    return folder


class _BinaryStdout(io.TextIOWrapper):
    def isatty(self):
        return False


def _run_binary(argv, monkeypatch, stdin):
    """The CLI with stdin text and stdout captured as bytes (capsys's stdout is text only)."""
    from cyformer.cli import main
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setattr(sys, "stdout", _BinaryStdout(out, encoding="utf-8"))
    code = main(argv)
    sys.stdout.flush()
    return code, out.getvalue()


def test_embed_stdin_to_stdout_npy(st_dir, monkeypatch):
    code, data = _run_binary(["embed", str(st_dir), "--quiet"], monkeypatch, "\n".join(LINES) + "\n")
    assert code == 0
    vectors = np.load(io.BytesIO(data))
    want = TextEncoder.from_pretrained(str(st_dir)).embed(LINES)
    assert vectors.shape == (4, 32) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, want)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)   # the folder's Normalize


def test_embed_file_to_file_with_options(st_dir, tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    code, stdout, err = run(["embed", str(st_dir), str(src), "-o", str(out), "--batch-size", "2",
                             "--pooling", "mean,max", "--no-normalize", "--quiet", "--threads", "1"], capsys)
    assert code == 0, err
    assert stdout == ""
    want = TextEncoder.from_pretrained(str(st_dir)).embed(LINES, pooling=["mean", "max"], normalize=False)
    np.testing.assert_allclose(np.load(out), want, atol=1e-6, rtol=0)


def test_embed_refuses_a_terminal_and_reports_truncation(st_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run(["embed", str(st_dir)], capsys, stdin="a\n", monkeypatch=monkeypatch)
    assert code == 2 and "redirect stdout" in err and "Traceback" not in err
    monkeypatch.undo()
    long = " ".join(["cat"] * 40)
    code, out, err = run(["embed", str(st_dir), "-o", str(tmp_path / "v.npy"), "--quiet"], capsys,
                         stdin=f"a dog\n{long}\n", monkeypatch=monkeypatch)
    assert code == 0
    assert err.strip() == ("cyformer embed: warning: 1 of 2 text(s) were longer than max_len=24 tokens "
                           "and were truncated")


def test_classify_prints_label_and_score_per_line(seq_dir, tmp_path, capsys, monkeypatch):
    code, out, err = run(["classify", str(seq_dir), "--quiet"], capsys, stdin="\n".join(LINES) + "\n",
                         monkeypatch=monkeypatch)
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    want = TextEncoder.from_pretrained(str(seq_dir)).classify(LINES)
    assert [r[0] for r in rows] == [w.label for w in want]
    np.testing.assert_allclose([float(r[1]) for r in rows], [w.score for w in want], atol=1e-4)
    code, out2, err = run(["classify", str(seq_dir), "-", "-o", str(tmp_path / "labels.tsv"), "--quiet"], capsys,
                          stdin="\n".join(LINES) + "\n", monkeypatch=monkeypatch)
    assert code == 0 and out2 == "" and (tmp_path / "labels.tsv").read_text() == out


@pytest.mark.parametrize("argv,message", [
    (["embed", "/nonexistent-model", "-o", "/tmp/x.npy"], "model folder /nonexistent-model does not exist"),
    (["embed", "ST", "/nonexistent.txt", "-o", "/tmp/x.npy"], "input file /nonexistent.txt does not exist"),
    (["embed", "ST", "-o", "/tmp/x.npy", "--pooling", "sum"], "pooling must be one of"),
    (["embed", "ST", "-o", "/tmp/x.npy", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["embed", "ST", "-o", "/tmp/x.npy", "--prompt-name", "query2"], "prompt_name 'query2' is not one of"),
    (["classify", "ST"], "has no classification head"),
])
def test_errors_are_one_line(argv, message, st_dir, capsys, monkeypatch):
    argv = [str(st_dir) if a == "ST" else a for a in argv]
    code, out, err = run(argv, capsys, stdin="a cat\n", monkeypatch=monkeypatch)
    assert code == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("task", ["classify", "tagging"])
def test_classify_reads_a_label_demo_folder(task, tmp_path, capsys, monkeypatch):
    """A `cyformer demo --task tagging|classify` folder: an Encoder with cyformer's own vocab.json
    tokenizer (one id per word, no EOS); classify gives what the model's head says on those ids."""
    from cyformer import Encoder, Tokenizer
    from cyformer.data import load_task
    from cyformer.recipes import demo_labels
    out_dir = str(tmp_path / task)
    demo_labels(task, steps=3, n_train=200, output_dir=out_dir, examples=0, progress=False, log=lambda m: None)
    texts = [s for s, _ in load_task(task, n_train=10, n_valid=5, n_test=5, seed=1).test][:4]
    code, out, err = run(["classify", out_dir, "--quiet"], capsys, stdin="\n".join(texts) + "\n",
                         monkeypatch=monkeypatch)
    assert code == 0, err
    model, tok = Encoder.from_pretrained(out_dir), Tokenizer.from_pretrained(out_dir)
    logits = model.classify(tok.encode(texts, add_eos=False))
    names = model.config.id2label
    if task == "classify":
        assert [line.split("\t")[0] for line in out.splitlines()] == [names[k] for k in logits.argmax(-1)]
    else:
        blocks = out.strip("\n").split("\n\n")
        assert len(blocks) == len(texts)
        for block, text, row in zip(blocks, texts, logits):
            lines = [line.split("\t") for line in block.splitlines()]
            assert [w for w, _, _ in lines] == text.split()
            assert [label for _, label, _ in lines] == [names[k] for k in row[:len(lines)].argmax(-1)]
