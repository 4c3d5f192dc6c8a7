"""The vector-set demos (digits, speech, graph) run end to end on a small budget: they print
the test accuracy and the comparison, and write a folder that loads and plots again."""
import os
import re

import numpy as np
import pytest

from cyformer import Encoder
from cyformer.vector_demo import plot_example_attention, vector_demo


@pytest.mark.parametrize("task, compare", [("digits", False), ("speech", True), ("graph", True)])
def test_vector_demo_runs_and_saves(task, compare, tmp_path):
    if task == "digits":
        pytest.importorskip("sklearn")
    lines = []
    out = tmp_path / task
    small = {} if task == "digits" else dict(n_train=200, n_valid=20, n_test=20)
    r = vector_demo(task, steps=12, output_dir=str(out), compare=compare, progress=False, log=lines.append,
                    data_options=small)
    text = "\n".join(lines)
    assert re.search(r"^test accuracy \d+\.\d%", text, re.M), text
    assert 0.0 <= r.test["accuracy"] <= 1.0
    if task == "speech":
        assert "full attention:" in text and "window of 16 frames" in text
        assert r.comparison is not None and r.model.config.attention_window == 16
    if task == "graph":
        assert "no-edge baseline" in text
    model = Encoder.from_pretrained(str(out))
    assert model.config.n_features == r.data.n_features
    ex = np.load(out / "example.npz")
    logits = model.classify([ex["features"]], edges=[ex["edges"]] if "edges" in ex.files else None)
    assert np.isfinite(logits).all()
    pytest.importorskip("matplotlib")
    assert os.path.exists(out / "attention.png")
    assert plot_example_attention(str(out), str(tmp_path / "again.png")).endswith("again.png")


def test_vector_demo_bad_task():
    with pytest.raises(ValueError, match="unknown vector task"):
        vector_demo("music", output_dir=None)
    with pytest.raises(ValueError, match="steps"):
        vector_demo("graph", steps=1, output_dir=None)


def test_cli_demo_and_plot_of_a_vector_task(tmp_path, capsys):
    from cyformer.cli import main
    out = tmp_path / "g"
    assert main(["demo", "--task", "graph", "--steps", "4", "--output", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "no-edge baseline" in text
    pytest.importorskip("matplotlib")
    assert main(["plot", str(out), "--attention", "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").exists()
    assert main(["plot", str(tmp_path), "--attention"]) != 0     # no example.npz: a one-line error
    assert "example.npz" in capsys.readouterr().err
