"""``FeatureProjection``: continuous input vectors (speech frames, image patches, graph nodes)
into the model: x = features W^T + b + positions, [N, F] -> [N, d_model].

The counterpart of ``Embeddings`` for inputs that are not token ids: the learned input
projection of ViT's patch embedding and of speech Transformers' front ends. Positions are
learned (``{prefix}.positions.weight`` [max_len, d]), sinusoidal, or none (a graph's nodes
are a set without order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .._engine.embedding import sinusoidal_table
from .base import Layer, TrainContext, Views, WeightSpec
from .linear import Linear

POSITIONALS = ("learned", "sinusoidal", "none")


@dataclass
class FeatureProjectionRecord:
    features: np.ndarray   # the input [N, F] (the caller's array, kept for dW)
    batch: object          # its FeatureBatch (positions, lengths)
    site: int              # dropout site


class FeatureProjection(Layer):
    """``{prefix}.weight`` [d, F], ``{prefix}.bias`` [d], and ``{prefix}.positions.weight``
    [max_len, d] when ``positional="learned"``."""

    def __init__(self, prefix: str, n_features: int, d_model: int, *, max_len: int,
                 positional: str = "learned", sinusoidal_layout: str = "interleaved", dropout: float = 0.0):
        if positional not in POSITIONALS:
            raise ValueError(f"positional must be one of {POSITIONALS}, got {positional!r}")
        self.prefix = prefix
        self.n_features, self.d_model, self.max_len = n_features, d_model, max_len
        self.proj = Linear(f"{prefix}.weight", f"{prefix}.bias", d_model, n_features)
        self.position_name = f"{prefix}.positions.weight" if positional == "learned" else None
        self._sinusoidal = (sinusoidal_table(max_len, d_model, sinusoidal_layout)
                            if positional == "sinusoidal" else None)
        self.positions: Optional[np.ndarray] = self._sinusoidal
        self.dropout = dropout

    def own_weights(self) -> Iterable[WeightSpec]:
        yield from self.proj.own_weights()   # the projection first, then the position table
        if self.position_name is not None:
            yield WeightSpec(self.position_name, (self.max_len, self.d_model), "position")

    def bind(self, views: Views) -> None:
        self.proj.bind(views)
        self.positions = views[self.position_name] if self.position_name is not None else self._sinusoidal

    def forward(self, features: np.ndarray, positions: np.ndarray, out: np.ndarray, nt: int) -> None:
        """out [N, d] = features [N, F] W^T + b (+ the table's row for each vector's position)."""
        self.proj.forward(features, out, nt)
        if self.positions is not None:
            out += self.positions[positions]

    def forward_train(self, features: np.ndarray, batch, out: np.ndarray, tc: TrainContext) -> FeatureProjectionRecord:
        self.forward(features, batch.positions, out, tc.nt)
        site = tc.site()
        tc.drop(out, self.dropout, site)
        return FeatureProjectionRecord(features, batch, site)

    def backward(self, rec: FeatureProjectionRecord, dout: np.ndarray, tc: TrainContext) -> None:
        """dW, db and the learned positions' gradient accumulated (dout has dropout applied in place)."""
        tc.drop(dout, self.dropout, rec.site)
        self.proj.backward(rec.features, dout, None, tc.grads, tc.nt)
        if self.position_name is not None:
            dpos = tc.grads[self.position_name]
            batch = rec.batch
            for start, n in zip(batch.start.tolist(), batch.length.tolist()):
                dpos[:n] += dout[start:start + n]   # positions run 0..n-1 in every sequence
