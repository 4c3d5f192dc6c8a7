"""``LayerNorm`` over the last axis, with the residual add (and a projection's bias) fused in."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .._engine.norm import layer_norm_backward, layer_norm_forward
from .base import Layer, TrainContext, Views, WeightSpec


@dataclass
class LayerNormRecord:
    x: np.ndarray      # the normalised input (the residual sum when one was added)
    mean: np.ndarray   # [N]
    rstd: np.ndarray   # [N] 1 / std


class LayerNorm(Layer):
    """``{prefix}.weight`` and ``{prefix}.bias`` [d]: out = (x - mean) / std * weight + bias."""

    def __init__(self, prefix: str, d: int, eps: float):
        self.prefix = prefix
        self.d = d
        self.eps = eps
        self._key_mean, self._key_rstd = f"{prefix}.mean", f"{prefix}.rstd"
        self.weight: Optional[np.ndarray] = None
        self.bias: Optional[np.ndarray] = None

    def own_weights(self) -> Iterable[WeightSpec]:
        yield WeightSpec(f"{self.prefix}.weight", (self.d,), "ones")
        yield WeightSpec(f"{self.prefix}.bias", (self.d,), "zeros")

    def bind(self, views: Views) -> None:
        self.weight = views[f"{self.prefix}.weight"]
        self.bias = views[f"{self.prefix}.bias"]

    def forward(self, x: np.ndarray, residual: Optional[np.ndarray], out: np.ndarray, nt: int,
                bias: Optional[np.ndarray] = None) -> None:
        """out = LN(x [+ residual + bias]); with ``residual``, x is updated to the sum first."""
        layer_norm_forward(x, residual, self.weight, self.bias, out, self.eps, n_threads=nt, bias=bias)

    def forward_train(self, x: np.ndarray, residual: Optional[np.ndarray], out: np.ndarray,
                      tc: TrainContext, bias: Optional[np.ndarray] = None) -> LayerNormRecord:
        n = x.shape[0]
        mean, rstd = tc.buf(self._key_mean, n), tc.buf(self._key_rstd, n)
        layer_norm_forward(x, residual, self.weight, self.bias, out, self.eps, mean, rstd,
                           n_threads=tc.nt, bias=bias)
        return LayerNormRecord(x, mean, rstd)

    def backward(self, rec: LayerNormRecord, dout: np.ndarray, dx: np.ndarray, grads: Views, nt: int,
                 *, accumulate: bool = False) -> None:
        """dx (overwritten, or added to; may be dout) from dout; dweight/dbias accumulated."""
        layer_norm_backward(rec.x, rec.mean, rec.rstd, self.weight, dout, dx,
                            grads[f"{self.prefix}.weight"], grads[f"{self.prefix}.bias"],
                            accumulate=accumulate, n_threads=nt)
