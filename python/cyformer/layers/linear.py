"""``Linear``: y = x W^T + b over packed rows, W [out, in] as nn.Linear stores it.

The one place that knows how a weight matrix is stored. The float32 matrix is a view of the
model's parameter buffer; a compute type (``compute_type``, CTranslate2's names) adds the
form the kernels read:

* ``float32``: the view itself (``cyformer._engine.linear``);
* ``int8``: int8 [out, in] with one float32 scale per output row (symmetric, max|w| / 127)
  and the per-row sums the VNNI kernels' unsigned activations need; activations are
  quantized per row at run time, products summed exactly in int32 (``_engine.quant``);
* ``bfloat16``: the matrix rounded to bf16 (uint16 bits), float32 accumulation.

Bias, and everything outside the matrix products, stays float32.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np

from .._engine import quant
from ..io import file_mapped, release_pages
from .._engine.linear import linear_backward, linear_forward
from .base import Layer, Views, WeightSpec

COMPUTE_TYPES = ("float32", "int8", "bfloat16")
# What ``compute_type`` accepts: the stored types, "auto" (the fastest this CPU runs natively)
# and "default" (what the checkpoint holds: float32 unless it was saved quantized).
COMPUTE_TYPE_CHOICES = COMPUTE_TYPES + ("auto", "default")
# int8 bodies that run natively (the portable one is a correctness fallback, slower than float32)
_NATIVE_INT8 = ("amx", "vnni512", "vnni256", "avxvnni", "avx2")
_NATIVE_BF16 = ("amx", "avx512bf16")


def resolve_compute_type(compute_type: str, default: str = "float32") -> str:
    """The stored type for a requested ``compute_type``: "auto" is int8 where the CPU has an
    int8 dot-product instruction set (AVX-512 VNNI, AVX-VNNI or AVX2), else float32; "default"
    is ``default``. A type the CPU cannot run natively is a ValueError naming what it lacks."""
    if not isinstance(compute_type, str):
        raise TypeError(f"compute_type must be a str, not {type(compute_type).__name__}")
    if compute_type not in COMPUTE_TYPE_CHOICES:
        raise ValueError(f"compute_type must be one of {', '.join(COMPUTE_TYPE_CHOICES)}; got {compute_type!r}")
    if compute_type == "default":
        return default
    if compute_type == "auto":
        return "int8" if quant.best_int8_path() in _NATIVE_INT8 else "float32"
    if compute_type == "int8" and quant.best_int8_path() not in _NATIVE_INT8:
        raise ValueError("compute_type='int8' needs AVX2 (or AVX-512 VNNI / AVX-VNNI), which this CPU does not "
                         "have; use compute_type='float32' (or 'auto')")
    if compute_type == "bfloat16" and quant.best_bf16_path() not in _NATIVE_BF16:
        raise ValueError(f"compute_type='bfloat16' needs {quant.BF16_ISA['avx512bf16']}, which this CPU does "
                         f"not have; use compute_type='int8', 'float32' or 'auto'")
    return compute_type


def kernel_names() -> Dict[str, str]:
    """compute type -> the kernel body this CPU runs it with (``cyformer info``)."""
    from .._engine import linear

    panel = f"panel kernel ({linear.panel_body()})" if linear.panel_kernel_available() else "skinny kernel"
    return {"float32": f"{panel}, BLAS sgemm for many rows",
            "int8": _quant_kernel(quant.int8_path(), quant.INT8_ISA, "int8", "vnni512"),
            "bfloat16": _quant_kernel(quant.bf16_path(), quant.BF16_ISA, "bf16", "avx512bf16")}


def _quant_kernel(path: str, isa: Dict[str, str], kind: str, below: str) -> str:
    # "amx (...) from 16 rows, <below> for fewer", or the body and, where AMX is not used, why
    if path == "amx":
        return f"amx ({isa['amx']}) from {quant.AMX_MIN_ROWS} rows, {below} ({isa[below]}) for fewer"
    text = f"{path} ({isa[path]})"
    if path == below:   # an AVX-512 CPU: say why the tiles are not in use
        text += f"; AMX: {quant.amx_status(kind)}"
    return text


class StoredWeight:
    """A weight matrix [N, K] in the form a compute type's kernel reads: ``dtype`` "int8"
    (``data`` int8 [N, K], ``scale`` float32 [N], ``comp`` int32 [N]) or "bfloat16" (``data``
    uint16 [N, K]). ``rows(sl)`` is the same for output rows ``sl`` (per-row formats slice freely).

    A matrix a ``Linear`` multiplies by is ``pack``ed for the int8 body in use: on a CPU whose
    body reads packed weights (``quant.int8_packs()``: the outer-product VNNI512 body) the form
    keeps only ``packed`` (``quant.pack_int8``, the same bytes in blocks of 16 rows), and
    ``data`` unpacks a copy on demand (checkpoints, tests). A table only looked up stays
    row-major (memory-mapped from an int8 checkpoint)."""

    __slots__ = ("dtype", "_data", "scale", "comp", "packed", "shape")

    def __init__(self, dtype: str, data: Optional[np.ndarray], scale: Optional[np.ndarray] = None,
                 comp: Optional[np.ndarray] = None, *, packed: Optional[np.ndarray] = None,
                 shape: Optional[tuple] = None):
        self.dtype, self._data, self.scale, self.comp, self.packed = dtype, data, scale, comp, packed
        self.shape = tuple(data.shape) if data is not None else tuple(shape)

    @classmethod
    def int8(cls, data: np.ndarray, scale: np.ndarray) -> "StoredWeight":
        """int8 rows [N, K] with their scales (row-major: what a lookup or a file holds)."""
        return cls("int8", data, scale, quant.int8_compensation(data))

    def pack(self) -> "StoredWeight":
        """For a GEMM: int8 in the layout the int8 body in use reads (``quant.int8_packs``),
        converted here once and in place, so every reader of this form (a tied embedding
        lookup too) reads the one packed copy; the row-major array is let go."""
        if self.dtype == "int8" and self.packed is None and quant.int8_packs():
            data, (n, k) = self._data, self.shape
            if file_mapped(data):   # an int8 checkpoint's pages, handed back a block at a time
                blk = quant.INT8_PACK_ROWS
                step = max(blk, (1 << 20) // max(1, k) // blk * blk)
                self.packed = quant.empty_packed_int8(n, k)
                for r in range(0, n, step):
                    quant.pack_int8(np.ascontiguousarray(data[r:r + step]), out=self.packed, row0=r)
                    release_pages(data[r:r + step])
            else:
                self.packed = quant.pack_int8(np.ascontiguousarray(data))
            self._data = None
        return self

    @classmethod
    def quantize(cls, w: np.ndarray, dtype: str) -> "StoredWeight":
        """From a float32 [N, K] matrix."""
        if dtype == "int8":
            return cls.int8(*quant.quantize_rows(np.ascontiguousarray(w, np.float32)))
        if dtype == "bfloat16":
            return cls("bfloat16", quant.to_bfloat16(w))
        raise ValueError(f"no stored form for {dtype!r}")

    @classmethod
    def shared(cls, store: Dict[str, "StoredWeight"], name: str, matrix: np.ndarray,
               compute_type: str) -> "StoredWeight":
        """``name``'s form in ``compute_type`` from ``store`` (the one every layer reading that
        matrix shares), converted from ``matrix`` and put there when ``store`` lacks it."""
        form = store.get(name)
        if form is None or form.dtype != compute_type:
            form = store[name] = cls.quantize(matrix, compute_type)
        return form

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            return quant.unpack_int8(self.packed, *self.shape)
        return self._data

    def rows(self, sl: Optional[slice]) -> "StoredWeight":
        if sl is None:
            return self
        cut = (lambda a: None if a is None else a[sl])
        lo, hi, _ = sl.indices(self.shape[0])
        if self.packed is None:
            return StoredWeight(self.dtype, self._data[sl], cut(self.scale), cut(self.comp))
        blk = quant.INT8_PACK_ROWS
        if lo % blk == 0 and (hi % blk == 0 or hi == self.shape[0]):   # whole blocks: a view
            return StoredWeight("int8", None, cut(self.scale), cut(self.comp),
                                packed=self.packed[lo // blk:(hi + blk - 1) // blk], shape=(hi - lo, self.shape[1]))
        return StoredWeight.int8(quant.unpack_int8(self.packed, *self.shape, lo, hi), cut(self.scale))

    def dequantize(self) -> np.ndarray:
        """The float32 matrix this stands for."""
        if self.dtype == "int8":
            return self.data.astype(np.float32) * self.scale[:, None]
        return quant.from_bfloat16(self.data)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self._data, self.packed, self.scale, self.comp) if a is not None)

    def linear_forward(self, x: np.ndarray, bias: Optional[np.ndarray], out: np.ndarray, nt: int,
                       accumulate: bool = False) -> None:
        """out[M, N] (+)= x[M, K] W^T (+ bias) in this form's kernel."""
        if self.dtype == "bfloat16":
            quant.bf16_linear_forward(x, self._data, bias, out, accumulate=accumulate, n_threads=nt)
        elif self.packed is not None and quant.int8_packs():
            quant.int8_packed_linear_forward(x, self.packed, self.scale, self.comp, bias, out,
                                             accumulate=accumulate, n_threads=nt)
        else:   # row-major int8 (a packed form here only when a test forces another body)
            quant.int8_linear_forward(x, self.data, self.scale, self.comp, bias, out,
                                      accumulate=accumulate, n_threads=nt)


class Linear(Layer):
    """``weight_name`` [out, in] and ``bias_name`` [out] (None: no bias).

    ``rows(lo, hi)`` is the same tensors restricted to output rows lo:hi (the Q, or the K/V,
    part of a fused in-projection); it declares nothing and binds slices.
    """

    def __init__(self, weight_name: str, bias_name: Optional[str], out_features: int, in_features: int,
                 *, init: str = "xavier", declare_weight: bool = True, declare_bias: bool = True,
                 rows: Optional[slice] = None):
        self.weight_name = weight_name
        self.bias_name = bias_name
        self.out_features = out_features
        self.in_features = in_features
        self.init = init
        self.declare_weight = declare_weight   # False: the matrix is another layer's (tied weights)
        self.declare_bias = declare_bias
        self._rows = rows
        self.weight: Optional[np.ndarray] = None
        self.bias: Optional[np.ndarray] = None
        self.stored: Optional[StoredWeight] = None   # the int8 / bf16 form; None: float32
        self._full: Optional[np.ndarray] = None       # the whole matrix (a rows() slice's parent)

    def own_weights(self) -> Iterable[WeightSpec]:
        if self.declare_weight:
            yield WeightSpec(self.weight_name, (self.out_features, self.in_features), self.init)
        if self.bias_name is not None and self.declare_bias:
            yield WeightSpec(self.bias_name, (self.out_features,), "zeros")

    def rows(self, lo: int, hi: int) -> "Linear":
        return Linear(self.weight_name, self.bias_name, hi - lo, self.in_features,
                      declare_weight=False, declare_bias=False, rows=slice(lo, hi))

    def _slice(self, a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        return a if a is None or self._rows is None else a[self._rows]

    def bind(self, views: Views) -> None:
        self._full = views[self.weight_name]
        self.weight = self._slice(self._full)
        self.bias = self._slice(views[self.bias_name]) if self.bias_name is not None else None
        self.stored = None   # the model re-derives the compute type's form (set_compute_type)

    @property
    def compute_type(self) -> str:
        return "float32" if self.stored is None else self.stored.dtype

    def set_compute_type(self, compute_type: str, store: Dict[str, StoredWeight]) -> None:
        """Use ``compute_type`` ("float32", "int8", "bfloat16"). ``store`` maps weight names to
        their stored form, shared by the layers that read one matrix (a fused in-projection and
        its row slices, a tied output projection): each matrix is converted once."""
        if compute_type == "float32":
            self.stored = None
            return
        form = StoredWeight.shared(store, self.weight_name, self._full, compute_type)
        self.stored = form.pack().rows(self._rows)

    # -- inference / training forward: the same call; training saves x (the caller's array) --
    def forward(self, x: np.ndarray, out: np.ndarray, nt: int, *, bias: bool = True,
                accumulate: bool = False) -> None:
        """out[M, out] (+)= x[M, in] W^T (+ b unless ``bias=False``: a LayerNorm adds it)."""
        b = self.bias if bias else None
        s = self.stored
        if s is None:
            linear_forward(x, self.weight, b, out, accumulate=accumulate, n_threads=nt)
        else:
            s.linear_forward(x, b, out, nt, accumulate)

    def backward(self, x: np.ndarray, dout: np.ndarray, dx: Optional[np.ndarray], grads: Views, nt: int,
                 *, accumulate_dx: bool = False) -> None:
        """dx (overwritten, or added to) from dout [M, out]; dW and db accumulated into ``grads``."""
        if self.stored is not None:
            raise RuntimeError(f"{self.weight_name}: the model computes in {self.stored.dtype}, which is for "
                               f"inference; training needs compute_type='float32' (model.set_compute_type)")
        dw = self._slice(grads[self.weight_name])
        db = self._slice(grads[self.bias_name]) if self.bias_name is not None else None
        linear_backward(x, self.weight, dout, dx, dw, db, accumulate_dx=accumulate_dx, n_threads=nt)
