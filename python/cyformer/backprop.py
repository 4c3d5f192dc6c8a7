"""Training passes over a ``Transformer`` or an ``Encoder``: loss, then gradients (no autograd, no tape).

The layers hold the passes (``cyformer.layers``: each layer's ``forward_train`` saves what
its ``backward`` needs in a typed record, and ``backward`` **accumulates** into the gradient
buffer, as in llm.c); this module only owns that buffer and the loss. ``grads`` mirrors
``Transformer.params`` (same layout, same names); tied weights (shared embeddings, output
projection = target embedding) are one view, so their gradients sum by themselves; the
caller zeroes ``grads`` once per step.

Attention weights are recomputed in the backward pass rather than stored, and dropout
masks are regenerated from their seeds (``cyformer._engine.dropout``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from . import threads
from ._engine.loss import cross_entropy
from .layers import TrainContext, mix_seed, named_views
from .model import Batch, Workspace

__all__ = ["ForwardBackward", "mix_seed"]


class ForwardBackward:
    """Training passes over one model: ``forward`` (loss) then ``backward`` (gradients).

    The model is a ``Transformer`` (``forward(src, tgt_in, labels)``: teacher-forced
    translation) or an ``Encoder`` with a head (``forward_labels(batch, labels)``: one label
    per sequence or per token). ``grads`` is allocated once; activations live in a
    workspace that grows to the largest batch seen and is reused. Both forwards return
    ``(loss_sum, nll_sum, n_labels)`` over the labels that are not ``ignore_index``;
    ``backward()`` adds the gradient of ``loss_sum * grad_scale`` to ``grads``.
    """

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.grads = np.zeros_like(model.params, dtype=np.float32)
        self._g = named_views(self.grads, model.layout)
        self._ws = Workspace()
        self._saved: Optional[tuple] = None
        # after a forward with grad_scale=0: its logits (a workspace buffer, valid until the next call)
        self.last_logits: Optional[np.ndarray] = None
        # guided attention (weight, width) on the last decoder layer's cross-attention, or None;
        # its penalty is added to the loss sum and reported alone in last_guided_loss
        self.guide: Optional[Tuple[float, float]] = None
        self.last_guided_loss = 0.0

    def grad(self, name: str) -> np.ndarray:
        """Gradient view of parameter ``name``."""
        return self._g[name]

    def gradients(self) -> Dict[str, np.ndarray]:
        return dict(self._g)

    def zero_grad(self) -> None:
        self.grads[...] = 0.0

    def forward(self, src: Batch, tgt_in: Batch, labels: np.ndarray, *, label_smoothing: float = 0.0,
                training: bool = True, seed: int = 0, grad_scale: Optional[float] = None,
                ignore_index: int = -100) -> Tuple[float, float, int]:
        """Loss of a packed batch; saves activations for ``backward`` (unless ``grad_scale=0``).

        ``labels`` [Nt] int32, aligned with ``tgt_in``'s packed tokens. ``training`` turns
        dropout on (masks seeded by ``seed``). ``grad_scale`` (default 1 / tokens: the
        gradient of the mean loss) scales the logits' gradient computed here in place.
        Returns (sum of smoothed losses, sum of NLLs, number of label tokens).
        """
        if src.size != tgt_in.size:
            raise ValueError(f"src has {src.size} sequences but tgt_in has {tgt_in.size}")
        return self._run(lambda tc: self.model.forward_train(src, tgt_in, tc), labels, len(tgt_in.ids),
                         "one entry per target token", label_smoothing, training, seed, grad_scale,
                         ignore_index)

    def forward_labels(self, batch: Batch, labels: np.ndarray, token_types: Optional[np.ndarray] = None, *,
                       label_smoothing: float = 0.0, training: bool = True, seed: int = 0,
                       grad_scale: Optional[float] = None, ignore_index: int = -100) -> Tuple[float, float, int]:
        """``forward`` for an ``Encoder`` with a head: ``labels`` [B] (sequence head) or [N],
        aligned with the batch's packed tokens (token head); ``token_types`` packed [N] or None."""
        head = getattr(self.config, "head", None)
        if head is None:
            raise ValueError("forward_labels needs an Encoder with a head (config.head)")
        n = batch.size if head == "sequence_classification" else len(batch.ids)
        what = "one label per sequence" if head == "sequence_classification" else "one label per token"
        return self._run(lambda tc: self.model.forward_train(batch, token_types, tc), labels, n, what,
                         label_smoothing, training, seed, grad_scale, ignore_index)

    def _run(self, forward_train, labels, n_rows: int, what: str, label_smoothing: float, training: bool,
             seed: int, grad_scale: Optional[float], ignore_index: int) -> Tuple[float, float, int]:
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        if labels.shape != (n_rows,):
            raise ValueError(f"labels must have {what} ({n_rows}), got shape {labels.shape}")
        nt = threads.get_num_threads()
        tc = TrainContext(self._ws, self._g, nt, seed, training, self.config.attention_dropout)
        n_labels = int((labels != ignore_index).sum())
        want_grad = grad_scale != 0.0
        if grad_scale is None:
            grad_scale = 1.0 / max(n_labels, 1)
        tc.guide, tc.loss_scale = self.guide, float(grad_scale)
        with threads.blas_single_threaded():
            logits, record = forward_train(tc)
            # logits become the gradient of grad_scale * loss, in place
            losses, nlls = cross_entropy(logits, labels, label_smoothing, ignore_index, want_grad,
                                         float(grad_scale), nt)
        self._saved = (tc, record, logits) if want_grad else None
        self.last_logits = None if want_grad else logits
        self.last_guided_loss = tc.extra_loss
        return float(losses.sum(dtype=np.float64)) + tc.extra_loss, float(nlls.sum(dtype=np.float64)), n_labels

    def backward(self) -> None:
        """Accumulate the gradient of the last ``forward``'s scaled loss into ``grads``."""
        if self._saved is None:
            raise RuntimeError("backward() needs a forward() with gradients first (and runs once per forward)")
        tc, record, dlogits = self._saved
        self._saved = None
        with threads.blas_single_threaded():
            self.model.backward(record, dlogits, tc)
