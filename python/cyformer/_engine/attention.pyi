# Type stub for the compiled module built from engine/attention.pyx (tests/test_engine_build.py checks the two agree).
from typing import Optional, Union

import numpy as np
from numpy.typing import NDArray

def attention_forward(
    q: NDArray[np.float32],
    k: NDArray[np.float32],
    v: NDArray[np.float32],
    out: NDArray[np.float32],
    q_start: NDArray[np.int32],
    q_len: NDArray[np.int32],
    k_start: NDArray[np.int32],
    k_len: NDArray[np.int32],
    n_heads: int,
    scale: float = -1.0,
    causal: bool = False,
    window: int = -1,
    mask: Optional[Union[NDArray[np.uint8], NDArray[np.bool_]]] = None,
    probs: Optional[NDArray[np.float32]] = None,
    dropout: float = 0.0,
    seed: int = 0,
    n_threads: int = 1,
    lse: Optional[NDArray[np.float32]] = None,
) -> None:
    """Multi-head attention over packed sequences, written into ``out``.

    q, out: [Nq, d]; k, v: [Nk, d] (row-strided views allowed); d = n_heads * d_k.
    Sequence b reads q rows q_start[b]:q_start[b]+q_len[b] and k/v rows
    k_start[b]:k_start[b]+k_len[b]. mask: optional [B or 1, Tq, Tk], nonzero = may attend.
    probs: optional [B, n_heads, Tq, Tk] receiving the attention weights (before dropout).
    ``scale`` < 0 means 1/sqrt(d_k); ``window`` < 0 means no local window. ``dropout`` > 0
    drops attention weights with a mask that is a function of ``seed`` (uint64) and position.
    lse: optional C-contiguous [n_heads, Nq] receiving each query row's log-sum-exp of its
    scaled scores over the visible keys (-inf for a row that sees none).
    """

def attention_backward(
    q: NDArray[np.float32],
    k: NDArray[np.float32],
    v: NDArray[np.float32],
    dout: NDArray[np.float32],
    dq: NDArray[np.float32],
    dk: NDArray[np.float32],
    dv: NDArray[np.float32],
    q_start: NDArray[np.int32],
    q_len: NDArray[np.int32],
    k_start: NDArray[np.int32],
    k_len: NDArray[np.int32],
    n_heads: int,
    scale: float = -1.0,
    causal: bool = False,
    window: int = -1,
    mask: Optional[Union[NDArray[np.uint8], NDArray[np.bool_]]] = None,
    dropout: float = 0.0,
    seed: int = 0,
    n_threads: int = 1,
    out: Optional[NDArray[np.float32]] = None,
    lse: Optional[NDArray[np.float32]] = None,
) -> None:
    """Gradients of ``attention_forward`` (same arguments) given ``dout`` [Nq, d].

    ``dq`` [Nq, d], ``dk`` and ``dv`` [Nk, d] are overwritten on the rows the sequences cover;
    the weights are recomputed from q and k, the dropout mask from ``seed``. ``out`` and
    ``lse``: the forward's output and log-sum-exp (together or not at all), which spare long
    sequences a pass that recomputes them.
    """

def row_kernels(level: Optional[int] = None) -> str:
    """The row path's body (decoding's one query per lane, short sequences): "avx512" (head
    widths a multiple of 16 up to 128) or "portable"; ``level`` 0 forces portable, 2 allows AVX-512."""


def tile_kernels() -> str:
    """The kernels multiplying the tiles of long sequences on this CPU: "avx512", "avx2-fma" or "sgemm"."""
