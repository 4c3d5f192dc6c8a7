# Type stub for the compiled module built from engine/ffn.pyx (keep the two in step).
from typing import Dict, Optional, Union

import numpy as np
from numpy.typing import NDArray

ACTIVATIONS: Dict[str, int]
"""Activation names (PyTorch's and Hugging Face's) to kernel codes."""

def activation_code(name: str) -> int:
    """The kernel code of an activation name; ValueError naming the known ones otherwise."""

def bias_act_forward(
    x: NDArray[np.float32],
    bias: Optional[NDArray[np.float32]],
    act: Union[str, int] = "identity",
    n_threads: int = 1,
) -> None:
    """x[N, F] = act(x + bias[F]) in place; bias may be None. Rows may be strided."""

def bias_act_forward_save(
    pre: NDArray[np.float32],
    bias: Optional[NDArray[np.float32]],
    act: Union[str, int],
    out: NDArray[np.float32],
    n_threads: int = 1,
) -> None:
    """Training form: ``pre += bias`` (kept for the backward pass), ``out = act(pre)``."""

def act_backward(
    dh: NDArray[np.float32], pre: NDArray[np.float32], act: Union[str, int], n_threads: int = 1
) -> None:
    """``dh *= act'(pre)`` in place; ``pre`` is the activation's input (bias included)."""
