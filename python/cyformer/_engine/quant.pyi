# Type stub for the compiled module built from engine/quant.pyx (tests/test_engine_build.py checks the two agree).
# int8: weights int8 [N, K] with float32 scales [N] (and the int32 compensation [N] the VNNI
# bodies use); bf16: weights as uint16 bits [N, K]. x and out are float32, rows may be strided.
from typing import Dict, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

INT8_PATHS: Tuple[str, ...]
INT8_ISA: Dict[str, str]
BF16_PATHS: Tuple[str, ...]
BF16_ISA: Dict[str, str]
AMX_MIN_ROWS: int

def int8_path() -> str:
    """The int8 kernel body in use (``INT8_PATHS``)."""

def bf16_path() -> str:
    """The bf16 kernel body in use (``BF16_PATHS``)."""

def int8_path_supported(name: str) -> bool:
    """Whether this CPU runs the int8 body ``name``."""

def bf16_path_supported(name: str) -> bool:
    """Whether this CPU runs the bf16 body ``name``."""

def best_int8_path() -> str:
    """The body the run-time dispatch picks on this CPU."""

def best_bf16_path() -> str: ...

def set_int8_path(name: Optional[str]) -> str:
    """Force the int8 body ``name`` (None: the run-time choice); returns the previous name."""

def set_bf16_path(name: Optional[str]) -> str:
    """Force the bf16 body ``name`` (None: the run-time choice); returns the previous name."""

def quantize_rows(x: NDArray[np.float32], shifted: bool = False) -> Tuple[NDArray, NDArray[np.float32]]:
    """Per-row symmetric int8: (q [M, K] int8, or uint8 q + 128 when shifted; scale [M])."""

def int8_compensation(wq: NDArray[np.int8]) -> NDArray[np.int32]:
    """comp[n] = 128 * sum_k wq[n, k]."""

def int8_linear_forward(
    x: NDArray[np.float32],
    weight: NDArray[np.int8],
    w_scale: NDArray[np.float32],
    w_comp: Optional[NDArray[np.int32]],
    bias: Optional[NDArray[np.float32]],
    out: NDArray[np.float32],
    accumulate: bool = False,
    n_threads: int = 1,
) -> None:
    """out[M, N] (+)= dequant(quant(x) @ weight^T) + bias."""

def int8_accumulators(
    x: NDArray[np.float32],
    weight: NDArray[np.int8],
    w_comp: Optional[NDArray[np.int32]] = None,
    n_threads: int = 1,
    packed: bool = False,
) -> NDArray[np.int32]:
    """The exact int32 sums of quant(x) @ weight^T as the current body computes them
    (``packed``: the outer-product VNNI512 body over pack_int8(weight))."""

INT8_PACK_ROWS: int

def int8_packs() -> bool:
    """Whether the int8 body in use reads packed weights (the outer-product VNNI512 body)."""

def empty_packed_int8(n: int, k: int) -> NDArray[np.int8]:
    """An uninitialised packed array for an [n, k] matrix (64-byte aligned)."""

def pack_int8(wq: NDArray[np.int8], out: Optional[NDArray[np.int8]] = None, row0: int = 0) -> NDArray[np.int8]:
    """[N, K] int8 -> [ceil(N / 16), ceil(K / 4) * 64], 64-byte aligned; ``out``: rows from row0 on, in place."""

def unpack_int8(packed: NDArray[np.int8], n: int, k: int, n0: int = 0, n1: Optional[int] = None,
                rows: Optional[NDArray[np.int64]] = None) -> NDArray[np.int8]:
    """Rows n0:n1 (or the rows ``rows``, in order) of the [n, k] matrix pack_int8 packed."""

def int8_packed_linear_forward(
    x: NDArray[np.float32],
    packed: NDArray[np.int8],
    w_scale: NDArray[np.float32],
    w_comp: NDArray[np.int32],
    bias: Optional[NDArray[np.float32]],
    out: NDArray[np.float32],
    accumulate: bool = False,
    n_threads: int = 1,
) -> None:
    """As int8_linear_forward with weights packed by pack_int8 (needs AVX-512 VNNI)."""

def to_bfloat16(a: NDArray[np.float32]) -> NDArray[np.uint16]:
    """float32 -> bf16 bits (round to nearest even)."""

def from_bfloat16(a: NDArray[np.uint16]) -> NDArray[np.float32]:
    """bf16 bits -> float32 (exact)."""

def bf16_linear_forward(
    x: NDArray[np.float32],
    weight: NDArray[np.uint16],
    bias: Optional[NDArray[np.float32]],
    out: NDArray[np.float32],
    accumulate: bool = False,
    n_threads: int = 1,
) -> None:
    """out[M, N] (+)= x @ weight^T + bias, bf16 weights, float32 accumulation."""

def amx_status(kind: str = "int8") -> str:
    """Whether the AMX tiles of ``kind`` ("int8", or "bf16" alias "bfloat16") run here: "available", or why not."""

def set_amx_emulation(on: bool) -> bool:
    """Run the AMX bodies on cyformer's software model of the tiles; returns the previous setting."""

def amx_model_counts() -> Tuple[int, int]:
    """(operations, faults) of the software model so far."""

def amx_selfcheck(kind: str = "int8", model: bool = True) -> bool:
    """The AMX body's self-check (exact sums of a 37 x 40 x 203 case) on the model or the hardware."""
