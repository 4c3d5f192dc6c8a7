# Type stub for the compiled module built from engine/loss.pyx (tests/test_engine_build.py checks the two agree).
from typing import Tuple

import numpy as np
from numpy.typing import NDArray

def cross_entropy(
    logits: NDArray[np.float32],
    labels: NDArray[np.int32],
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    grad: bool = False,
    grad_scale: float = 1.0,
    n_threads: int = 1,
) -> Tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per-row (loss [N], nll [N]); 0 for ignored rows.

    With ``grad=True`` each row of ``logits`` [N, V] is replaced by
    ``grad_scale * (softmax - target)``, the gradient of ``grad_scale * loss``.
    """
