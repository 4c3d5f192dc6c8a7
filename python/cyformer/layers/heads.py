"""Heads over an encoder's hidden states: BERT's tanh ``Pooler`` (ReLU in DistilBERT's head,
GELU in ELECTRA's), the sequence head (one label per sequence, on a pooled vector) and the
token head (one label per position).

Hidden states arrive packed, ``[N, d]`` for the N tokens of a ``Batch``; sequence b is rows
``start[b]:start[b]+length[b]``. Names follow Hugging Face's ``BertFor*`` without the
``bert.`` prefix (``pooler.dense.*``, ``classifier.*``), so a converter maps them one to one.

Dropout is BERT's: on the pooled vector (after the tanh pooler) before the classifier, and
on every hidden state before the token classifier; it acts only in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .._engine.ffn import act_backward, bias_act_forward_save
from .base import Layer, TrainContext
from .linear import Linear

POOLINGS = ("cls", "mean", "max")
POOLER_ACTIVATIONS = ("tanh", "relu", "gelu")


def pool(h: np.ndarray, batch, how: str) -> np.ndarray:
    """One vector per sequence [B, d] from packed states h [N, d]: its first (CLS) row, or
    the mean / max over its rows."""
    if how == "cls":
        return h[batch.start]
    if how == "mean":
        return np.add.reduceat(h, batch.start, axis=0) / batch.length[:, None].astype(np.float32)
    if how == "max":
        return np.maximum.reduceat(h, batch.start, axis=0)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")


def pool_backward(h: np.ndarray, batch, how: str, dpooled: np.ndarray, dh: np.ndarray) -> None:
    """Add the gradient of ``pool(h)`` (dpooled [B, d]) into dh [N, d]."""
    if how == "cls":
        dh[batch.start] += dpooled
    elif how == "mean":
        rows = np.repeat(np.arange(batch.size), batch.length)
        dh += dpooled[rows] / batch.length[rows, None].astype(np.float32)
    else:   # max: the gradient goes to the first row holding each feature's maximum (as torch.max)
        cols = np.arange(h.shape[1])
        for b, (s, n) in enumerate(zip(batch.start.tolist(), batch.length.tolist())):
            dh[s + h[s:s + n].argmax(axis=0), cols] += dpooled[b]


class Pooler(Layer):
    """BERT's pooler: act(dense(x)) on one vector per sequence, ``pooler.dense`` [d, d]; ``act``
    is tanh (BERT, RoBERTa), relu (DistilBERT's pre-classifier) or gelu (ELECTRA's head)."""

    def __init__(self, d_model: int, prefix: str = "pooler.dense", activation: str = "tanh"):
        if activation not in POOLER_ACTIVATIONS:
            raise ValueError(f"pooler activation must be one of {POOLER_ACTIVATIONS}, got {activation!r}")
        self.dense = Linear(f"{prefix}.weight", f"{prefix}.bias", d_model, d_model)
        self.activation = activation

    def children(self) -> Iterable[Layer]:
        return (self.dense,)

    def forward_train(self, x: np.ndarray, nt: int):
        """(act(x W^T + b), the activation's input) for x [B, d] (new arrays)."""
        pre = np.empty_like(x)
        self.dense.forward(np.ascontiguousarray(x), pre, nt, bias=False)
        if self.activation == "tanh":   # not in the engine's activation table
            pre += self.dense.bias
            return np.tanh(pre), pre
        out = np.empty_like(pre)
        bias_act_forward_save(pre, self.dense.bias, self.activation, out, nt)
        return out, pre

    def forward(self, x: np.ndarray, nt: int) -> np.ndarray:
        return self.forward_train(x, nt)[0]

    def backward(self, x: np.ndarray, pre: np.ndarray, y: np.ndarray, dy: np.ndarray, grads, nt: int) -> np.ndarray:
        """dx from dy, given the input x, the activation's input ``pre`` and output y; the
        dense layer's gradients accumulated."""
        dpre = np.ascontiguousarray(dy, dtype=np.float32)
        if self.activation == "tanh":
            dpre *= 1.0 - y * y
        else:
            act_backward(dpre, pre, self.activation, nt)
        dx = np.empty_like(x)
        self.dense.backward(np.ascontiguousarray(x), dpre, dx, grads, nt)
        return dx


@dataclass
class SequenceHeadRecord:
    h: np.ndarray            # hidden states [N, d]
    batch: object
    pooled: np.ndarray       # pool(h) [B, d]
    pooler_pre: Optional[np.ndarray]   # the pooler activation's input [B, d]
    pooler_out: Optional[np.ndarray]   # the pooler's output [B, d] (before dropout)
    z: np.ndarray            # the classifier's input [B, d] (after dropout)
    site: int


class SequenceClassificationHead(Layer):
    """logits [B, n_labels] = classifier(dropout(pooler(pool(h)))); ``pooler`` may be None
    (no pooler: the classifier reads the pooled vector itself). The pooler is the
    encoder's (it also serves ``embed(pooling="pooler")``), so the head does not declare it."""

    def __init__(self, d_model: int, n_labels: int, *, pooling: str = "cls", pooler: Optional[Pooler] = None,
                 dropout: float = 0.0):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.pooler = pooler
        self.dropout = dropout
        self.classifier = Linear("classifier.weight", "classifier.bias", n_labels, d_model)
        self.n_labels = n_labels

    def children(self) -> Iterable[Layer]:
        return (self.classifier,)

    def bind(self, views) -> None:
        self.classifier.bind(views)

    def _features(self, h: np.ndarray, batch, nt: int):
        pooled = np.ascontiguousarray(pool(h, batch, self.pooling), dtype=np.float32)
        if self.pooler is None:
            return pooled, None, None
        return (pooled, *self.pooler.forward_train(pooled, nt))

    def forward(self, h: np.ndarray, batch, nt: int) -> np.ndarray:
        pooled, pooler_out, _ = self._features(h, batch, nt)
        z = pooled if pooler_out is None else pooler_out
        logits = np.empty((batch.size, self.n_labels), dtype=np.float32)
        self.classifier.forward(z, logits, nt)
        return logits

    def forward_train(self, h: np.ndarray, batch, tc: TrainContext):
        pooled, pooler_out, pooler_pre = self._features(h, batch, tc.nt)
        z = (pooled if pooler_out is None else pooler_out).copy()
        site = tc.site()
        tc.drop(z, self.dropout, site)
        logits = tc.buf("head.logits", batch.size, self.n_labels)
        self.classifier.forward(z, logits, tc.nt)
        return logits, SequenceHeadRecord(h, batch, pooled, pooler_pre, pooler_out, z, site)

    def backward(self, rec: SequenceHeadRecord, dlogits: np.ndarray, dh: np.ndarray, tc: TrainContext) -> None:
        """dh [N, d] (overwritten) from dlogits [B, n_labels]."""
        dz = np.empty_like(rec.z)
        self.classifier.backward(rec.z, dlogits, dz, tc.grads, tc.nt)
        tc.drop(dz, self.dropout, rec.site)
        if self.pooler is not None:
            dz = self.pooler.backward(rec.pooled, rec.pooler_pre, rec.pooler_out, dz, tc.grads, tc.nt)
        dh[...] = 0.0
        pool_backward(rec.h, rec.batch, self.pooling, dz, dh)


@dataclass
class TokenHeadRecord:
    z: np.ndarray   # the classifier's input [N, d] (hidden states after dropout)
    site: int


class TokenClassificationHead(Layer):
    """logits [N, n_labels] = classifier(dropout(h)) at every position."""

    def __init__(self, d_model: int, n_labels: int, *, dropout: float = 0.0):
        self.dropout = dropout
        self.classifier = Linear("classifier.weight", "classifier.bias", n_labels, d_model)
        self.n_labels = n_labels

    def children(self) -> Iterable[Layer]:
        return (self.classifier,)

    def forward(self, h: np.ndarray, batch, nt: int) -> np.ndarray:
        logits = np.empty((h.shape[0], self.n_labels), dtype=np.float32)
        self.classifier.forward(h, logits, nt)
        return logits

    def forward_train(self, h: np.ndarray, batch, tc: TrainContext):
        site = tc.site()
        z = h
        if tc.active(self.dropout):
            z = tc.buf("head.z", *h.shape)
            z[...] = h
            tc.drop(z, self.dropout, site)
        logits = tc.buf("head.logits", h.shape[0], self.n_labels)
        self.classifier.forward(z, logits, tc.nt)
        return logits, TokenHeadRecord(z, site)

    def backward(self, rec: TokenHeadRecord, dlogits: np.ndarray, dh: np.ndarray, tc: TrainContext) -> None:
        """dh [N, d] (overwritten) from dlogits [N, n_labels]."""
        self.classifier.backward(rec.z, dlogits, dh, tc.grads, tc.nt)
        tc.drop(dh, self.dropout, rec.site)


HEADS = ("sequence_classification", "token_classification")
