"""``Embeddings``: token vectors (times a scale, sqrt(d_model) in the paper) plus positions,
sinusoidal (a fixed table) or learned (``{side}.embed_positions.weight``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .._engine.embedding import embedding_backward, embedding_forward, sinusoidal_table
from .base import Layer, TrainContext, Views, WeightSpec


@dataclass
class EmbeddingsRecord:
    batch: object   # the Batch embedded (ids, positions)
    site: int       # dropout site


class Embeddings(Layer):
    """``token_name`` [vocab, d] (declared here unless ``declare_tokens=False``: a table shared
    with another Embeddings), ``position_name`` [max_len, d] for learned positions."""

    def __init__(self, token_name: str, vocab_size: int, d_model: int, *, max_len: int, positional: str,
                 sinusoidal_layout: str = "interleaved", scale: float = 1.0, dropout: float = 0.0,
                 pad_id: int = -1, position_name: Optional[str] = None, declare_tokens: bool = True):
        self.token_name = token_name
        self.position_name = position_name if positional == "learned" else None
        self.vocab_size, self.d_model, self.max_len = vocab_size, d_model, max_len
        self.declare_tokens = declare_tokens
        self.scale = scale
        self.dropout = dropout
        self.pad_id = pad_id
        self._sinusoidal = (sinusoidal_table(max_len, d_model, sinusoidal_layout)
                            if positional == "sinusoidal" else None)
        self.tokens: Optional[np.ndarray] = None
        self.positions: Optional[np.ndarray] = self._sinusoidal

    # the model lays token tables before position tables (the checkpoint order), so the two
    # declarations are separate
    def token_weights(self) -> Iterable[WeightSpec]:
        if self.declare_tokens:
            yield WeightSpec(self.token_name, (self.vocab_size, self.d_model), "embedding")

    def position_weights(self) -> Iterable[WeightSpec]:
        if self.position_name is not None:
            yield WeightSpec(self.position_name, (self.max_len, self.d_model), "position")

    def own_weights(self) -> Iterable[WeightSpec]:
        yield from self.token_weights()
        yield from self.position_weights()

    def bind(self, views: Views) -> None:
        self.tokens = views[self.token_name]
        self.positions = views[self.position_name] if self.position_name is not None else self._sinusoidal

    def forward(self, ids: np.ndarray, positions: np.ndarray, out: np.ndarray, nt: int) -> None:
        """out[i] = tokens[ids[i]] * scale + positions[positions[i]]; also one decoding step's rows."""
        embedding_forward(ids, positions, self.tokens, self.positions, self.scale, out, nt)

    def forward_train(self, batch, out: np.ndarray, tc: TrainContext) -> EmbeddingsRecord:
        embedding_forward(batch.ids, batch.positions, self.tokens, self.positions, self.scale, out, tc.nt)
        site = tc.site()
        tc.drop(out, self.dropout, site)
        return EmbeddingsRecord(batch, site)

    def backward(self, rec: EmbeddingsRecord, dout: np.ndarray, tc: TrainContext) -> None:
        """Scatter-add dout (dropout applied in place) into the tables' gradients; the pad row
        gets no gradient from lookups, as nn.Embedding(padding_idx=pad)."""
        tc.drop(dout, self.dropout, rec.site)
        g = tc.grads
        dpos = g[self.position_name] if self.position_name is not None else None
        embedding_backward(rec.batch.ids, rec.batch.positions, dout, self.scale, g[self.token_name], dpos,
                           self.pad_id, tc.nt)
