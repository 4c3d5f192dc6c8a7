# Type stub for the compiled module built from engine/search.pyx (tests/test_engine_build.py checks the two agree).
from typing import Tuple

import numpy as np
from numpy.typing import NDArray

def topk(
    scores: NDArray[np.float32], k: int, n_threads: int = 1
) -> Tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(values [R, k], indices [R, k]) of each row's k largest, best first; ties keep the lower index."""
