"""``Embeddings``: token vectors (times a scale, sqrt(d_model) in the paper) plus positions,
sinusoidal (a fixed table) or learned (``{side}.embed_positions.weight``).

In a compute type other than float32 the token table is read in its stored form
(``StoredWeight``: int8 rows with one float32 scale each, or bf16 rows), the one object a tied
output projection reads too; only the looked-up rows are dequantized, into the float32
activations. Position tables stay float32 (max_len rows: small beside the vocabulary)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import numpy as np

from .._engine.embedding import (embedding_backward, embedding_forward, embedding_forward_bf16,
                                 embedding_forward_int8, sinusoidal_table)
from .base import Layer, TrainContext, Views, WeightSpec
from .linear import StoredWeight


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
        self.stored: Optional[StoredWeight] = None   # the token table's int8 / bf16 form; None: float32

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
        self.stored = None   # the model re-derives the compute type's form (set_compute_type)

    @property
    def compute_type(self) -> str:
        return "float32" if self.stored is None else self.stored.dtype

    def set_compute_type(self, compute_type: str, store: Dict[str, StoredWeight]) -> None:
        """Look tokens up in ``compute_type``'s form of the table: the one in ``store`` (shared
        with a tied output projection's ``Linear``), converted here if ``store`` lacks it."""
        if compute_type == "float32":
            self.stored = None
            return
        self.stored = StoredWeight.shared(store, self.token_name, self.tokens, compute_type)

    def forward(self, ids: np.ndarray, positions: np.ndarray, out: np.ndarray, nt: int) -> None:
        """out[i] = tokens[ids[i]] * scale + positions[positions[i]]; also one decoding step's rows."""
        s = self.stored
        if s is None:
            embedding_forward(ids, positions, self.tokens, self.positions, self.scale, out, nt)
        elif s.dtype == "int8":   # the row's scale and ``scale`` folded into one float; packed:
            # the int8 GEMM's layout (a tied output projection's)
            packed = s.packed is not None
            embedding_forward_int8(ids, positions, s.packed if packed else s.data, s.scale, self.positions,
                                   self.scale, out, nt, packed=packed)
        else:
            embedding_forward_bf16(ids, positions, s.data, self.positions, self.scale, out, nt)

    def forward_train(self, batch, out: np.ndarray, tc: TrainContext) -> EmbeddingsRecord:
        self.forward(batch.ids, batch.positions, out, tc.nt)
        site = tc.site()
        tc.drop(out, self.dropout, site)
        return EmbeddingsRecord(batch, site)

    def backward(self, rec: EmbeddingsRecord, dout: np.ndarray, tc: TrainContext) -> None:
        """Scatter-add dout (dropout applied in place) into the tables' gradients; the pad row
        gets no gradient from lookups, as nn.Embedding(padding_idx=pad)."""
        if self.stored is not None:
            raise RuntimeError(f"{self.token_name}: the model computes in {self.stored.dtype}, which is for "
                               f"inference; training needs compute_type='float32' (model.set_compute_type)")
        tc.drop(dout, self.dropout, rec.site)
        g = tc.grads
        dpos = g[self.position_name] if self.position_name is not None else None
        embedding_backward(rec.batch.ids, rec.batch.positions, dout, self.scale, g[self.token_name], dpos,
                           self.pad_id, tc.nt)
