# Type stub for the compiled module built from engine/softmax.pyx (tests/test_engine_build.py checks the two agree).
from typing import Tuple

import numpy as np
from numpy.typing import NDArray

def softmax_forward(x: NDArray[np.float32], log: bool = False, n_threads: int = 1) -> None:
    """x[N, V] <- softmax(x) (or log_softmax with ``log=True``) along V, in place."""


def log_softmax_stats(x: NDArray[np.float32], n_threads: int = 1) -> Tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(m [N], ls [N]) with log_softmax(x)[i, j] == (x[i, j] - m[i]) - ls[i] bitwise; x is not written."""
