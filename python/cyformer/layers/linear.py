"""``Linear``: y = x W^T + b over packed rows, W [out, in] as nn.Linear stores it.

The one place that knows how a weight matrix is stored: a later int8 format (weights +
per-row scales) is a new ``dtype`` here and its kernel, not an edit of every call site.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from .._engine.linear import linear_backward, linear_forward
from .base import Layer, Views, WeightSpec


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
        self.weight = self._slice(views[self.weight_name])
        self.bias = self._slice(views[self.bias_name]) if self.bias_name is not None else None

    # -- inference / training forward: the same call; training saves x (the caller's array) --
    def forward(self, x: np.ndarray, out: np.ndarray, nt: int, *, bias: bool = True,
                accumulate: bool = False) -> None:
        """out[M, out] (+)= x[M, in] W^T (+ b unless ``bias=False``: a LayerNorm adds it)."""
        linear_forward(x, self.weight, self.bias if bias else None, out, accumulate=accumulate, n_threads=nt)

    def backward(self, x: np.ndarray, dout: np.ndarray, dx: Optional[np.ndarray], grads: Views, nt: int,
                 *, accumulate_dx: bool = False) -> None:
        """dx (overwritten, or added to) from dout [M, out]; dW and db accumulated into ``grads``."""
        dw = self._slice(grads[self.weight_name])
        db = self._slice(grads[self.bias_name]) if self.bias_name is not None else None
        linear_backward(x, self.weight, dout, dx, dw, db, accumulate_dx=accumulate_dx, n_threads=nt)
