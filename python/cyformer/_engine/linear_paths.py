"""Forcing ``linear_forward`` onto one of its kernels, for the tests and benchmarks of each path,
and the quantized kernels (``quant``) onto one of their bodies.

The one Python module here: it only sets the dispatch thresholds of the compiled ``linear``
module (``set_panel_rows``, ``set_skinny_rows``) or the body of ``quant`` and restores them.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

LINEAR_PATHS = ("panel", "skinny", "BLAS")


@contextlib.contextmanager
def linear_path(name: str) -> Iterator[None]:
    """Force ``linear_forward`` onto one kernel ("panel", "skinny" or "BLAS") for every row
    count and size, restoring the dispatch afterwards (benchmarks and tests of each path)."""
    from . import linear

    if name not in LINEAR_PATHS:
        raise ValueError(f"linear path must be one of {LINEAR_PATHS}, got {name!r}")
    panel = linear.set_panel_rows(*((1, 1 << 30, 1 << 40) if name == "panel" else (1, 0)))
    skinny = linear.set_skinny_rows(1 << 30 if name == "skinny" else 0)
    try:
        yield
    finally:
        linear.set_panel_rows(*panel)
        linear.set_skinny_rows(skinny)


def available_linear_paths() -> tuple:
    """The paths this CPU runs: the panel kernel needs AVX2 and FMA."""
    from . import linear

    return tuple(p for p in LINEAR_PATHS if p != "panel" or linear.panel_kernel_available())


@contextlib.contextmanager
def _forcing(setter, name: str) -> Iterator[None]:
    # setter(name) returns the previous name, and takes it back afterwards
    old = setter(name)
    try:
        yield
    finally:
        setter(old)


# The AMX bodies on cyformer's software model of the tiles (quant.set_amx_emulation): what the
# tests of the AMX bodies run on CPUs without tiles. It needs what the bodies' other
# instructions need (AVX-512 VNNI / AVX-512 BF16).
AMX_MODEL = "amx-model"


@contextlib.contextmanager
def _forcing_amx_model(setter, real_path_supported) -> Iterator[None]:
    from . import quant

    if not real_path_supported:
        raise ValueError(f"{AMX_MODEL} needs the instruction sets of the AMX bodies' stores, which this CPU lacks")
    emulating = quant.set_amx_emulation(True)
    try:
        with _forcing(setter, "amx"):
            yield
    finally:
        quant.set_amx_emulation(emulating)


def forced_int8_path(name: str):
    """Run the int8 kernels (``quant.int8_linear_forward``) on body ``name`` of
    ``quant.INT8_PATHS`` or on ``AMX_MODEL``; ValueError naming the instruction set when this
    CPU lacks it."""
    from . import quant

    if name == AMX_MODEL:
        return _forcing_amx_model(quant.set_int8_path, quant.int8_path_supported("vnni512"))
    return _forcing(quant.set_int8_path, name)


def forced_bf16_path(name: str):
    """Run the bf16 kernels on body ``name`` of ``quant.BF16_PATHS`` or on ``AMX_MODEL``."""
    from . import quant

    if name == AMX_MODEL:
        return _forcing_amx_model(quant.set_bf16_path, quant.bf16_path_supported("avx512bf16"))
    return _forcing(quant.set_bf16_path, name)


def forced_panel_body(name: str):
    """Run the panel kernel on body ``name`` ("avx512", "avx2") of ``linear.PANEL_BODIES``."""
    from . import linear

    return _forcing(linear.set_panel_body, name)
