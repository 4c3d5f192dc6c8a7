"""The README's Python examples run as written (each ```python block, in order, in one namespace).

A block preceded by an ``<!-- not run ... -->`` comment needs something a test cannot have (a
MarianMT folder from a hub, a user's own PyTorch model) and is only checked to compile.
"""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
_BLOCK = re.compile(r"(<!--[^>]*-->\s*\n)?```python\n(.*?)```", re.S)


def _blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start(2)) + 1
        yield line, m.group(2), bool(m.group(1) and "not run" in m.group(1))


def test_readme_has_python_examples():
    assert sum(1 for _, _, skip in _blocks() if not skip) >= 2


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    ran = 0
    for line, code, not_run in _blocks():
        compiled = compile(code, f"README.md:{line}", "exec")
        if not_run:
            continue
        exec(compiled, namespace)
        ran += 1
    assert ran >= 2
    # the training example wrote what it says it writes
    assert os.path.exists(tmp_path / "run" / "model" / "model.safetensors")
    assert os.path.exists(tmp_path / "run" / "marian" / "config.json")
    assert namespace["history"].valid[-1]["step"] == 40
    # the encoder-head example trained, and wrote a folder Encoder.from_pretrained reads
    assert namespace["head_history"].valid[-1]["step"] == 60
    assert os.path.exists(tmp_path / "run-classify" / "model" / "model.safetensors")
