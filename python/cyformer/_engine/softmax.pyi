# Type stub for the compiled module built from engine/softmax.pyx (tests/test_engine_build.py checks the two agree).
import numpy as np
from numpy.typing import NDArray

def softmax_forward(x: NDArray[np.float32], log: bool = False, n_threads: int = 1) -> None:
    """x[N, V] <- softmax(x) (or log_softmax with ``log=True``) along V, in place."""
