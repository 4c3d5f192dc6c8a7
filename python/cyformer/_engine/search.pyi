# Type stub for the compiled module built from engine/search.pyx (tests/test_engine_build.py checks the two agree).
from typing import Optional, Sequence, Tuple

import numpy as np
from numpy.typing import NDArray

def topk(
    scores: NDArray[np.float32], k: int, n_threads: int = 1, offsets: Optional[NDArray[np.float32]] = None,
    log_softmax: bool = False, banned: Optional[Sequence[int]] = None
) -> Tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(values [R, k], indices [R, k]) of each row's k largest, best first; ties keep the lower index.
    ``offsets`` [R, S]: entry j of segment s (N / S entries each) counts as scores + offsets[r, s].
    ``log_softmax``: each segment is first its log-softmax (as softmax_forward writes it), ``banned``
    columns of every segment -inf; nothing is written."""
