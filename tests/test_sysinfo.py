"""`cyformer info` tells the truth about OPENBLAS_CORETYPE (issue 14, item 6)."""
import os
import platform
import subprocess
import sys

import pytest


def info(coretype):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    proc = subprocess.run([sys.executable, "-m", "cyformer", "info"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_unset():
    assert "OPENBLAS_CORETYPE: not set" in info(None)


def test_unknown_core_type_is_reported_as_ignored():
    out = info("Bogus")
    assert "OPENBLAS_CORETYPE=Bogus is set but not in effect" in out
    assert "in effect: OpenBLAS runs" not in out


@pytest.mark.skipif(platform.machine() != "x86_64", reason="Haswell is an x86-64 core type")
def test_known_core_type_is_reported_in_effect_with_the_default():
    out = info("Haswell")
    assert "core type: Haswell" in out
    assert "OPENBLAS_CORETYPE=Haswell is set and in effect: OpenBLAS runs Haswell kernels; without it " \
           "OpenBLAS picks" in out
