# Type stub for the compiled module built from engine/ffn.pyx; tests/test_engine_build.py checks
# that it declares the compiled functions' parameters and the public constants.
from typing import Dict, Optional, Tuple, Union

import numpy as np
from numpy.typing import NDArray

ACTIVATIONS: Dict[str, int]
"""Every accepted activation name (PyTorch's, Hugging Face's, aliases) to its kernel code,
read from engine/activation_table.h."""

ACTIVATION_NAMES: Tuple[str, ...]
"""The accepted names in table order, kernels first (config.ACTIVATIONS is this tuple)."""

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
