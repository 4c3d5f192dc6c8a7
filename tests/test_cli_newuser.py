"""What a new user does after the README: translate with the demo's folder, files in and out,
warnings and errors as one line, and folders that are not model folders (issue 14, items 1 and 4)."""
import os
import stat
import subprocess
import sys

import pytest

from test_cli import run   # the CLI in-process, with captured output
from cyformer.data import load_task
from cyformer.recipes import demo

DEMO_STEPS = 300


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A short `cyformer demo` run (dates): its folder, its exact-match score and its test set."""
    out = str(tmp_path_factory.mktemp("demo") / "cyformer-demo")
    lines = []
    result = demo("dates", steps=DEMO_STEPS, n_train=8000, output_dir=out, beam_size=4, progress=False,
                  attention_plot=False, log=lines.append)
    data = load_task("dates", n_train=8000, n_valid=300, n_test=500, seed=0)
    # the printed examples mark the right ones "ok" (they compare the written forms)
    shown = [l for l in "\n".join(lines).splitlines() if " -> " in l and "(reference " in l]
    assert len(shown) == 8 and any(l.startswith("  ok ") for l in shown), shown
    return out, result, data


def test_saved_demo_translates_the_printed_test_set_as_the_demo_did(demo_run, tmp_path):
    out, result, data = demo_run
    # the test sentences as the demo prints them ("march 21st, 2004") and the references as written
    sources = [data.task.detokenize(s, "source") for s, _ in data.test]
    refs = [data.task.detokenize(t, "target") for _, t in data.test]
    assert any("," in s for s in sources)
    inp = tmp_path / "test.txt"
    inp.write_text("\n".join(sources) + "\n", encoding="utf-8")
    # through the installed command, as a user runs it
    proc = subprocess.run([sys.executable, "-m", "cyformer.cli", "translate", out, str(inp), "-o",
                           str(tmp_path / "out.txt"), "--beam-size", "4", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr   # every token of the printed test set is known
    hyps = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hyps) == len(refs)
    exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
    assert exact == pytest.approx(result.test["exact"], abs=1e-12), (exact, result.test["exact"])
    assert exact > 0.5   # the model learned something, so the equality above is not 0 == 0
    # capitalised, hyphenated input as a person types it reads as the task's normalisation does
    hyp = subprocess.run([sys.executable, "-m", "cyformer.cli", "translate", out, "--quiet", "--beam-size", "4"],
                         input=sources[0].upper() + "\n", capture_output=True, text=True, timeout=120)
    assert hyp.returncode == 0, hyp.stderr
    assert hyp.stdout.strip() == hyps[0]


def test_unknown_tokens_are_counted_in_one_warning_line(demo_run, capsys, monkeypatch):
    out, _, _ = demo_run
    code, stdout, err = run(["translate", out, "--quiet", "--beam-size", "1"], capsys,
                            stdin="the first of march 2004\nflurb 3 zorp 2004\nwibble\n", monkeypatch=monkeypatch)
    assert code == 0, err
    lines = [l for l in err.splitlines() if l]
    assert lines == ["cyformer translate: warning: 3 source token(s) in 2 of 3 sentence(s) are not in the "
                     "vocabulary and were read as <unk> (the first in sentence 2)"], err
    assert len(stdout.split("\n")) == 4


def test_translate_reads_stdin_and_writes_stdout_or_files(demo_run, tmp_path, capsys, monkeypatch):
    out, _, data = demo_run
    sources = [data.task.detokenize(s, "source") for s, _ in data.test[:6]]
    code, from_stdin, err = run(["translate", out, "--quiet"], capsys, stdin="\n".join(sources) + "\n",
                                monkeypatch=monkeypatch)
    assert code == 0, err
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(sources) + "\n")
    code, stdout, err = run(["translate", out, str(inp), "--quiet"], capsys)
    assert code == 0 and stdout == from_stdin, err
    code, stdout, err = run(["translate", out, "-", "-o", str(tmp_path / "o.txt"), "--quiet"], capsys,
                            stdin="\n".join(sources) + "\n", monkeypatch=monkeypatch)
    assert code == 0 and stdout == "" and (tmp_path / "o.txt").read_text() == from_stdin
    # token batches decode the same sentences
    code, stdout, err = run(["translate", out, str(inp), "--quiet", "--batch-type", "tokens", "--batch-size",
                             "20"], capsys)
    assert code == 0 and stdout == from_stdin, err
    code, stdout, err = run(["translate", out, str(tmp_path / "missing.txt")], capsys)
    assert code == 2 and err.strip() == f"cyformer translate: error: input file {tmp_path / 'missing.txt'} does not exist"


def test_translate_output_file_gets_the_umask_mode(demo_run, tmp_path, capsys):
    out, _, data = demo_run
    inp = tmp_path / "in.txt"
    inp.write_text("the first of march 2004\n")
    old = os.umask(0o022)
    try:
        code, _, err = run(["translate", out, str(inp), "-o", str(tmp_path / "o.txt"), "--quiet"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(os.stat(tmp_path / "o.txt").st_mode) == 0o644


@pytest.mark.parametrize("target,message", [
    ("Helsinki-NLP/opus-mt-en-de", "looks like a Hugging Face Hub id"),
    ("{tmp}/weights/model.safetensors", "is a weights file; cyformer expects the model folder"),
    ("{tmp}/nope", "does not exist"),
])
def test_translate_says_a_local_model_folder_is_expected(target, message, tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"\0" * 16)
    code, out, err = run(["translate", target.format(tmp=tmp_path)], capsys)
    assert code == 2
    assert err.startswith("cyformer translate: error: ") and message in err and err.count("\n") == 1


def test_train_with_a_missing_data_file_names_it(tmp_path, capsys):
    (tmp_path / "a.tgt").write_text("x\n")
    code, out, err = run(["train", "--data", str(tmp_path / "missing.txt"), str(tmp_path / "a.tgt"),
                          "--output", str(tmp_path / "m")], capsys)
    assert code == 2
    assert err == f"cyformer train: error: No such file or directory: {tmp_path / 'missing.txt'}\n"
