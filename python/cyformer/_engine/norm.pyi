# Type stub for the compiled module built from engine/norm.pyx (tests/test_engine_build.py checks the two agree).
from typing import Optional

import numpy as np
from numpy.typing import NDArray

def layer_norm_forward(
    x: NDArray[np.float32],
    residual: Optional[NDArray[np.float32]],
    gamma: NDArray[np.float32],
    beta: NDArray[np.float32],
    out: NDArray[np.float32],
    eps: float = 1e-5,
    mean: Optional[NDArray[np.float32]] = None,
    rstd: Optional[NDArray[np.float32]] = None,
    n_threads: int = 1,
    bias: Optional[NDArray[np.float32]] = None,
) -> None:
    """x: [N, d] (updated to x + residual + bias when residual is given); out = LayerNorm(x).

    ``out`` may be ``x``; ``mean`` and ``rstd`` ([N]) are filled when given (both or neither).
    """

def layer_norm_backward(
    x: NDArray[np.float32],
    mean: NDArray[np.float32],
    rstd: NDArray[np.float32],
    gamma: NDArray[np.float32],
    dout: NDArray[np.float32],
    dx: NDArray[np.float32],
    dgamma: NDArray[np.float32],
    dbeta: NDArray[np.float32],
    accumulate: bool = False,
    n_threads: int = 1,
) -> None:
    """Gradients of ``out = LN(x)`` given ``dout`` [N, d]: ``dx`` overwritten (or added to with
    ``accumulate``; may be ``dout``), ``dgamma``/``dbeta`` [d] accumulated into."""
