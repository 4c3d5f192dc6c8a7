# Type stub for the compiled module built from engine/dropout.pyx (tests/test_engine_build.py checks the two agree).
import numpy as np
from numpy.typing import NDArray

def dropout(x: NDArray[np.float32], p: float, seed: int, offset: int = 0, n_threads: int = 1) -> None:
    """x[N, F] <- x * mask / (1 - p) in place, the mask a function of (seed, index + offset).

    The same call on the gradient applies the same mask (backward). Rows may be strided.
    """
