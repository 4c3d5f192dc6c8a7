# Type stub for the compiled module built from engine/linear.pyx (tests/test_engine_build.py checks the two agree).
# Float arrays are float32 NumPy arrays (any float32 buffer works); "rows may be strided"
# means a view whose rows are contiguous but spaced further apart than their length.
from typing import Optional

import numpy as np
from numpy.typing import NDArray

def linear_forward(
    x: NDArray[np.float32],
    weight: NDArray[np.float32],
    bias: Optional[NDArray[np.float32]],
    out: NDArray[np.float32],
    accumulate: bool = False,
    n_threads: int = 1,
) -> None:
    """out[M, N] (+)= x[M, K] @ weight[N, K]^T + bias[N]; x and out may be row-strided views."""

def linear_backward(
    x: NDArray[np.float32],
    weight: NDArray[np.float32],
    dout: NDArray[np.float32],
    dx: Optional[NDArray[np.float32]],
    dweight: Optional[NDArray[np.float32]],
    dbias: Optional[NDArray[np.float32]],
    accumulate_dx: bool = False,
    n_threads: int = 1,
) -> None:
    """Gradients of ``out = x @ weight^T + bias`` given ``dout`` [M, N].

    ``dx`` [M, K] is overwritten (added to with ``accumulate_dx``); ``dweight`` [N, K] and
    ``dbias`` [N] are accumulated into. Any of the three may be None.
    """

def gemm(
    a: NDArray[np.float32],
    b: NDArray[np.float32],
    c: NDArray[np.float32],
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> None:
    """Row-major c = alpha * op(a) @ op(b) + beta * c, single-threaded BLAS (test/utility)."""

def set_skinny_rows(rows: int) -> int:
    """Use the skinny kernel up to ``rows`` rows (0 disables it); returns the previous value."""

def set_panel_rows(min_rows: int, max_rows: int, max_pack: int = -1) -> tuple[int, int, int]:
    """Use the panel kernel for min_rows..max_rows rows (an empty range disables it) while the
    rows packed per call hold at most ``max_pack`` floats (unchanged when negative); returns
    the previous (min_rows, max_rows, max_pack)."""

def panel_kernel_available() -> bool:
    """Whether this CPU runs the panel kernel (AVX2 and FMA on x86-64)."""

PANEL_BODIES: tuple[str, ...]

def panel_body() -> str:
    """The panel kernel's body in use: "avx512" or "avx2"."""

def set_panel_body(name: Optional[str]) -> str:
    """Force the panel kernel's body ("avx512", "avx2"; None: the run-time choice); returns the previous."""

def panel_body_supported(name: str) -> bool:
    """Whether this CPU runs the panel body ``name``."""
