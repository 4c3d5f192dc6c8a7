"""What every layer shares: weight declarations, the training context, the record base.

A layer *declares* its tensors (``weights()``: name, shape, dtype, initialiser, and room
for a per-row scale); ``cyformer.model`` lays the declarations out back to back in one
flat buffer and hands every layer its views once (``bind``). Nothing outside a layer
reads its views.

Passes, by convention (shapes ``[N, d]``, tokens of a batch packed without padding):

* ``forward(...)``        inference (no saved state, workspace buffers shared by layers);
* ``forward_train(...)``  the same computation, saving what ``backward`` needs in a typed
                           record (a dataclass named ``<Layer>Record``), workspace buffers
                           keyed per layer so records stay valid until ``backward``;
* ``backward(record, ...)`` gradients: inputs' gradients written, parameter gradients
                           **accumulated** into ``grads`` (name -> view of the gradient buffer);
* ``step(...)``            one decoding step over a cache, where the layer has one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from .._engine.dropout import dropout as dropout_kernel

Views = Mapping[str, np.ndarray]

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 64-bit seed from integers (SplitMix64 steps), so dropout sites get unrelated streams."""
    z = 0x243F6A8885A308D3
    for p in parts:
        z = (z + (int(p) & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z


@dataclass(frozen=True)
class WeightSpec:
    """One tensor a layer declares.

    ``init``: 'xavier' (uniform, Glorot), 'zeros', 'ones', 'embedding' (N(0, d_model^-1/2)),
    'position' (N(0, 0.02)). ``dtype`` is the stored type; the flat buffer holds float32
    today. ``scale`` names a per-row scale tensor for quantised formats (int8 + scales):
    an int8 ``Linear`` declares it and the I/O dtype table maps it, nothing else changes.
    """
    name: str
    shape: Tuple[int, ...]
    init: str = "zeros"
    dtype: str = "float32"
    scale: Optional[str] = None

    @property
    def size(self) -> int:
        n = 1
        for extent in self.shape:
            n *= extent
        return n


class Layer:
    """Base of every layer: ``weights()`` declares, ``bind(views)`` takes the views once."""

    def children(self) -> Iterable["Layer"]:
        return ()

    def own_weights(self) -> Iterable[WeightSpec]:
        return ()

    def weights(self) -> Iterator[WeightSpec]:
        """Every tensor this layer and its children declare, in buffer order."""
        yield from self.own_weights()
        for child in self.children():
            yield from child.weights()

    def bind(self, views: Views) -> None:
        """Take the views of the tensors this layer reads (again when the buffer is replaced)."""
        for child in self.children():
            child.bind(views)

    def walk(self) -> Iterator["Layer"]:
        """This layer and every layer under it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()


def derive_layout(specs: Iterable[WeightSpec]) -> List[WeightSpec]:
    """The flat buffer's layout: the declarations back to back, each name once."""
    out: List[WeightSpec] = []
    seen = set()
    for s in specs:
        if s.name in seen:
            raise ValueError(f"weight {s.name!r} is declared twice")
        if s.dtype != "float32" or s.scale is not None:
            raise NotImplementedError(f"{s.name}: the parameter buffer holds float32 weights only "
                                      f"(got {s.dtype}{' with scales' if s.scale else ''})")
        seen.add(s.name)
        out.append(s)
    return out


def named_views(flat: np.ndarray, layout) -> dict:
    """Name -> view of ``flat`` for each (name, shape) of ``layout``, back to back."""
    views = {}
    offset = 0
    for name, shape in layout:
        n = 1
        for extent in shape:
            n *= extent
        views[name] = flat[offset:offset + n].reshape(shape)
        offset += n
    return views


class TrainContext:
    """State of one training forward/backward: threads, workspace, dropout seeds and sites.

    Dropout sites are numbered in forward order (``site()``); a layer keeps its site number
    in its record, and the backward pass regenerates the same mask from it.
    """

    __slots__ = ("ws", "grads", "nt", "seed", "training", "p_attn", "_sites", "guide", "loss_scale",
                 "extra_loss")

    def __init__(self, ws, grads: Views, nt: int, seed: int, training: bool, attention_dropout: float):
        self.ws = ws
        # guided attention: (weight, width) of the penalty on the guided cross-attention, or None;
        # loss_scale is what the objective's gradient is scaled by (1 / label tokens); extra_loss
        # sums penalties computed during the forward pass (unscaled)
        self.guide: Optional[Tuple[float, float]] = None
        self.loss_scale = 1.0
        self.extra_loss = 0.0
        self.grads = grads   # name -> view of the gradient buffer (backward accumulates into it)
        self.nt = nt
        self.seed = int(seed)
        self.training = training
        self.p_attn = attention_dropout if training else 0.0
        self._sites = 0

    def buf(self, name: str, *shape: int) -> np.ndarray:
        return self.ws.get(name, *shape)

    def site(self) -> int:
        self._sites += 1
        return self._sites

    def active(self, p: float) -> bool:
        return self.training and p > 0.0

    def site_seed(self, site: int) -> int:
        return mix_seed(self.seed, site)

    def drop(self, x: np.ndarray, p: float, site: int) -> None:
        """Inverted dropout at ``site`` (forward, and identically on the gradient backward)."""
        if self.training and p > 0.0:
            dropout_kernel(x, p, mix_seed(self.seed, site), 0, self.nt)
