# Type stub for the compiled module built from engine/embedding.pyx (tests/test_engine_build.py checks the two agree).
from typing import Literal, Optional

import numpy as np
from numpy.typing import NDArray

def embedding_forward(
    ids: NDArray[np.int32],
    positions: NDArray[np.int32],
    table: NDArray[np.float32],
    pos_table: Optional[NDArray[np.float32]],
    scale: float,
    out: NDArray[np.float32],
    n_threads: int = 1,
) -> None:
    """out[i] = table[ids[i]] * scale + pos_table[positions[i]]; ids, positions: [N]; out: [N, d]."""

def embedding_forward_int8(
    ids: NDArray[np.int32],
    positions: NDArray[np.int32],
    table: NDArray[np.int8],
    row_scale: NDArray[np.float32],
    pos_table: Optional[NDArray[np.float32]],
    scale: float,
    out: NDArray[np.float32],
    n_threads: int = 1,
    packed: bool = False,
) -> None:
    """out[i] = table[ids[i]] * (row_scale[ids[i]] * scale) + pos_table[positions[i]]; int8 table [V, d]
    (``packed``: as quant.pack_int8 packs it, d = out's width)."""

def embedding_forward_bf16(
    ids: NDArray[np.int32],
    positions: NDArray[np.int32],
    table: NDArray[np.uint16],
    pos_table: Optional[NDArray[np.float32]],
    scale: float,
    out: NDArray[np.float32],
    n_threads: int = 1,
) -> None:
    """out[i] = float(table[ids[i]]) * scale + pos_table[positions[i]]; bf16 bits table [V, d]."""

def embedding_backward(
    ids: NDArray[np.int32],
    positions: NDArray[np.int32],
    dout: NDArray[np.float32],
    scale: float,
    dtable: NDArray[np.float32],
    dpos_table: Optional[NDArray[np.float32]] = None,
    skip_id: int = -1,
    n_threads: int = 1,
) -> None:
    """dtable[ids[i]] += scale * dout[i] (not for ids == skip_id); dpos_table[positions[i]] += dout[i]."""

def sinusoidal_table(
    n_positions: int, d_model: int, layout: Literal["interleaved", "halves"] = "interleaved"
) -> NDArray[np.float32]:
    """The paper's fixed positional encodings, [n_positions, d_model] float32."""
