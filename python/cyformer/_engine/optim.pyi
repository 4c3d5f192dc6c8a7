# Type stub for the compiled module built from engine/optim.pyx (tests/test_engine_build.py checks the two agree).
from typing import Optional

import numpy as np
from numpy.typing import NDArray

def adam_update(
    params: NDArray[np.float32],
    grads: NDArray[np.float32],
    exp_avg: NDArray[np.float32],
    exp_avg_sq: NDArray[np.float32],
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    n_threads: int = 1,
) -> None:
    """One Adam step (``decoupled=True``: AdamW) on every entry, in place; ``step`` counts from 1."""

def sgd_update(
    params: NDArray[np.float32],
    grads: NDArray[np.float32],
    momentum_buffer: Optional[NDArray[np.float32]],
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    first_step: bool = False,
    n_threads: int = 1,
) -> None:
    """One SGD step in place; with ``momentum`` > 0, ``momentum_buffer`` [n] carries the velocity."""

def sum_squares(x: NDArray[np.float32], n_threads: int = 1) -> float:
    """sum(x**2) in double precision, independent of the thread count."""

def scale(x: NDArray[np.float32], alpha: float, n_threads: int = 1) -> None:
    """x *= alpha in place."""
