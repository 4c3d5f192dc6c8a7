"""Tolerances and helpers shared by the tests (tests/README.md says what is where).

Test files import them with ``from _shared import ...``, as ``_reference``. They are not in
conftest.py because a conftest cannot be imported reliably: pytest drops the module named
``conftest`` from sys.modules whenever it loads another rootless one (bench/conftest.py in
``pytest tests bench``). conftest.py holds the fixtures.
"""
import importlib.util
import zlib

import numpy as np
import pytest

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

# --------------------------------------------------------------------------------------
# Tolerances of the kernel tests (tests/test_ops_*.py)
# --------------------------------------------------------------------------------------

# float32 kernel vs float64 reference (NumPy, or torch float64 autograd):
# |got - want| <= atol + RTOL * |want|.
RTOL = 1e-5
# ... for a forward kernel's outputs.
ATOL = 1e-5
# ... for gradients, losses and optimizer steps (backward kernels sum over more terms).
GRAD_ATOL = 2e-5
# float32 kernel vs PyTorch's own float32 forward.
TORCH_RTOL = 0.0
TORCH_ATOL = 1e-5
# n_threads=2 (or 3) vs n_threads=1.
THREAD_RTOL = 1e-6
THREAD_ATOL = 1e-6
# sinusoidal_table (computed in float64, rounded to float32) vs the formula.
SIN_ATOL = 1e-6

# torch is a test dependency, imported by the files that use it (not here: a session of
# tests that never need it does not load its runtimes).
requires_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                    reason="torch is not installed")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def make_rng(*key):
    """A NumPy generator seeded from the test's parameters (stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def i32(*values):
    return np.array(values, dtype=np.int32)


def zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def t64(a, grad=True):
    """A float64 torch tensor of ``a`` (for autograd references)."""
    import torch

    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def assert_close(got, want, rtol=RTOL, atol=ATOL):
    """A forward kernel's float32 result against a float64 reference."""
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


def assert_grad_close(got, want, rtol=RTOL, atol=GRAD_ATOL):
    """A gradient, loss or optimizer step against a float64 reference."""
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


class one_blas_thread:
    """BLAS at one thread while OpenMP threads call it, as the engine expects."""

    def __enter__(self):
        self._ctx = threadpool_limits(limits=1, user_api="blas") if threadpool_limits else None
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def max_rel_err(got, want) -> float:
    """The largest difference relative to the largest value of ``want`` (whole-model outputs of a
    quantized model against float32)."""
    return float(np.abs(got - want).max() / np.abs(want).max())


def bad_input_params(cases):
    """(id, call, exception, message pattern) rows -> parameters of a bad-input test."""
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


def check_bad_input(call, exc, match):
    """Bad input raises ``exc`` with a non-empty message matching ``match``, never crashes."""
    with pytest.raises(exc, match=match) as info:
        call()
    assert str(info.value)
