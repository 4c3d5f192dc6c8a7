"""The paper's layers and stacks: ``EncoderLayer``, ``DecoderLayer``, ``Encoder``, ``Decoder``,
the residual ``SublayerConnection`` around each sublayer, and ``DecoderState``, the decoder's
incremental cache.

A sublayer connection is ``x = LN(x + Dropout(Sublayer(x)))`` (post-LN, the paper) or
``x = x + Dropout(Sublayer(LN(x)))`` (pre-LN). Inference folds the sublayer's last bias into
the post-LN LayerNorm (one pass less over the activations); training does the same whenever
that dropout is off, and adds the bias in the GEMM when it is on (the bias is inside the
dropped tensor). Teacher-forced decoding (``forward``) and one-step decoding (``step``) run
the same sublayers; only the self/cross-attention pass differs (over the batch, or over
the cache).
"""
from __future__ import annotations

from dataclasses import dataclass
import threading
from typing import Iterable, List, Optional

import numpy as np

from ..config import TransformerConfig
from .attention import AttentionRecord, MultiHeadAttention
from .base import Layer, TrainContext
from .ffn import FeedForward, FeedForwardRecord
from .norm import LayerNorm, LayerNormRecord


@dataclass
class SublayerRecord:
    norm: Optional[LayerNormRecord]   # pre-LN: the input's LN; post-LN: the LN of the sum
    site: int                         # residual-dropout site


class SublayerConnection:
    """Residual connection and LayerNorm around one sublayer (holds no weights of its own)."""

    def __init__(self, norm: LayerNorm, norm_first: bool, dropout: float, key: str):
        self.norm = norm
        self.norm_first = norm_first
        self.dropout = dropout
        self._k_normed, self._k_out, self._k_next = f"{key}.normed", f"{key}.out", f"{key}.next"

    # -- inference: y = input(x); sublayer(y) -> target(x); close(x, o, bias) ------------------
    def input(self, x: np.ndarray, ws, nt: int) -> np.ndarray:
        """The sublayer's input: LN(x) for pre-LN, x itself for post-LN."""
        if not self.norm_first:
            return x
        y = ws.get("normed", *x.shape)
        self.norm.forward(x, None, y, nt)
        return y

    def target(self, x: np.ndarray, ws) -> np.ndarray:
        """Where the sublayer writes: into x itself (pre-LN, accumulating) or a buffer."""
        return x if self.norm_first else ws.get("sub", *x.shape)

    def close(self, x: np.ndarray, o: np.ndarray, bias: np.ndarray, nt: int) -> None:
        """post-LN: x = LN(x + o + bias) (the sublayer ran without its last bias)."""
        if not self.norm_first:
            self.norm.forward(x, o, x, nt, bias=bias)

    # -- training ----------------------------------------------------------------------------
    def input_train(self, x: np.ndarray, tc: TrainContext):
        if not self.norm_first:
            return x, None
        y = tc.buf(self._k_normed, *x.shape)
        return y, self.norm.forward_train(x, None, y, tc)

    def fold(self, tc: TrainContext) -> bool:
        """Whether the LayerNorm adds the sublayer's last bias (post-LN, dropout off)."""
        return not self.norm_first and not tc.active(self.dropout)

    def target_train(self, x: np.ndarray, tc: TrainContext) -> np.ndarray:
        return tc.buf(self._k_out, *x.shape)

    def close_train(self, x: np.ndarray, o: np.ndarray, bias: np.ndarray, fold: bool,
                    norm_in: Optional[LayerNormRecord], tc: TrainContext):
        """(the new x, the record); o is the sublayer output (with its bias unless ``fold``)."""
        site = tc.site()
        tc.drop(o, self.dropout, site)
        if self.norm_first:
            o += x   # o becomes the new residual stream
            return o, SublayerRecord(norm_in, site)
        out = tc.buf(self._k_next, *x.shape)
        # o += x (+ bias): o keeps the sum, the LayerNorm's input; out = LN(o)
        rec = self.norm.forward_train(o, x, out, tc, bias=bias if fold else None)
        return out, SublayerRecord(rec, site)

    def backward_open(self, rec: SublayerRecord, dx: np.ndarray, tc: TrainContext) -> np.ndarray:
        """Gradient of the sublayer's output, from dx (the new x's gradient)."""
        if not self.norm_first:
            self.norm.backward(rec.norm, dx, dx, tc.grads, tc.nt)
        do = tc.buf("d_sub_out", *dx.shape)
        do[...] = dx
        tc.drop(do, self.dropout, rec.site)
        return do

    def backward_close(self, rec: SublayerRecord, dx: np.ndarray, dy: np.ndarray, tc: TrainContext) -> None:
        """dx becomes the old x's gradient; dy is the sublayer input's gradient."""
        if self.norm_first:
            self.norm.backward(rec.norm, dy, dx, tc.grads, tc.nt, accumulate=True)
        else:
            dx += dy


def _sublayer_in_grad(tc: TrainContext, dx: np.ndarray) -> np.ndarray:
    return tc.buf("d_sub_in", *dx.shape)


# -- encoder -----------------------------------------------------------------------------------
@dataclass
class EncoderLayerRecord:
    attn: AttentionRecord
    res1: SublayerRecord
    ffn: FeedForwardRecord
    res2: SublayerRecord


class EncoderLayer(Layer):
    """Self-attention then feed-forward, each in a sublayer connection (nn.TransformerEncoderLayer)."""

    def __init__(self, prefix: str, c: TransformerConfig):
        d = c.d_model
        # a local window (speech frames) where the config has one: only encoders' do
        self.self_attn = MultiHeadAttention(f"{prefix}.self_attn", d, c.n_heads,
                                            window=getattr(c, "attention_window", None))
        self.norm1 = LayerNorm(f"{prefix}.norm1", d, c.layer_norm_eps)
        self.ffn = FeedForward(prefix, d, c.d_ff, c.activation, c.activation_dropout)
        self.norm2 = LayerNorm(f"{prefix}.norm2", d, c.layer_norm_eps)
        self.norm_first = nf = c.norm_first
        self.sub1 = SublayerConnection(self.norm1, nf, c.dropout, f"{prefix}.sub1")
        self.sub2 = SublayerConnection(self.norm2, nf, c.dropout, f"{prefix}.sub2")

    def children(self) -> Iterable[Layer]:
        return (self.self_attn, self.norm1, self.ffn, self.norm2)

    def forward(self, x: np.ndarray, batch, ws, nt: int, probs: Optional[np.ndarray] = None) -> None:
        """x [N, d] in place; ``probs`` [B, n_heads, T, T] receives the self-attention weights."""
        nf = self.norm_first
        o = self.sub1.target(x, ws)
        self.self_attn.forward(self.sub1.input(x, ws, nt), batch, o, ws, nt, bias=nf, accumulate=nf, probs=probs)
        self.sub1.close(x, o, self.self_attn.out_bias, nt)
        o = self.sub2.target(x, ws)
        self.ffn.forward(self.sub2.input(x, ws, nt), o, ws, nt, bias=nf, accumulate=nf)
        self.sub2.close(x, o, self.ffn.out_bias, nt)

    def forward_train(self, x: np.ndarray, batch, tc: TrainContext):
        """(the new x, the record)."""
        y, n1 = self.sub1.input_train(x, tc)
        fold, o = self.sub1.fold(tc), self.sub1.target_train(x, tc)
        attn = self.self_attn.forward_train(y, batch, o, tc, bias=not fold)
        x, res1 = self.sub1.close_train(x, o, self.self_attn.out_bias, fold, n1, tc)
        y, n2 = self.sub2.input_train(x, tc)
        fold, o = self.sub2.fold(tc), self.sub2.target_train(x, tc)
        ffn = self.ffn.forward_train(y, o, tc, bias=not fold)
        x, res2 = self.sub2.close_train(x, o, self.ffn.out_bias, fold, n2, tc)
        return x, EncoderLayerRecord(attn, res1, ffn, res2)

    def backward(self, rec: EncoderLayerRecord, dx: np.ndarray, tc: TrainContext) -> None:
        """dx: the output's gradient on entry, the input's on exit."""
        dy = _sublayer_in_grad(tc, dx)
        do = self.sub2.backward_open(rec.res2, dx, tc)
        self.ffn.backward(rec.ffn, do, dy, tc)
        self.sub2.backward_close(rec.res2, dx, dy, tc)
        do = self.sub1.backward_open(rec.res1, dx, tc)
        self.self_attn.backward(rec.attn, do, dy, tc)
        self.sub1.backward_close(rec.res1, dx, dy, tc)


@dataclass
class StackRecord:
    layers: list
    final: Optional[LayerNormRecord]


class _Stack(Layer):
    def __init__(self, layers: list, norm: Optional[LayerNorm], key: str):
        self.layers = layers
        self.norm = norm
        self._k_final = f"{key}.final"

    def children(self) -> Iterable[Layer]:
        return (*self.layers, self.norm) if self.norm is not None else tuple(self.layers)

    def _final(self, x: np.ndarray, nt: int) -> None:
        if self.norm is not None:
            self.norm.forward(x, None, x, nt)

    def _final_train(self, x: np.ndarray, tc: TrainContext):
        if self.norm is None:
            return x, None
        out = tc.buf(self._k_final, *x.shape)
        return out, self.norm.forward_train(x, None, out, tc)

    def _final_backward(self, rec: Optional[LayerNormRecord], dx: np.ndarray, tc: TrainContext) -> None:
        if rec is not None:
            self.norm.backward(rec, dx, dx, tc.grads, tc.nt)


class Encoder(_Stack):
    """``encoder.layers.{i}`` and the optional final ``encoder.norm``, over embedded tokens."""

    def __init__(self, c: TransformerConfig):
        super().__init__([EncoderLayer(f"encoder.layers.{i}", c) for i in range(c.n_encoder_layers)],
                         LayerNorm("encoder.norm", c.d_model, c.layer_norm_eps) if c.final_norm else None,
                         "encoder")

    def forward(self, x: np.ndarray, src, ws, nt: int, probs: Optional[dict] = None) -> np.ndarray:
        """x [Ns, d] (embedded source) -> memory, in place. ``probs`` {layer index: array
        [B, n_heads, T, T]} receives those layers' self-attention weights."""
        for i, layer in enumerate(self.layers):
            layer.forward(x, src, ws, nt, None if probs is None else probs.get(i))
        self._final(x, nt)
        return x

    def forward_train(self, x: np.ndarray, src, tc: TrainContext):
        recs = []
        for layer in self.layers:
            x, r = layer.forward_train(x, src, tc)
            recs.append(r)
        x, final = self._final_train(x, tc)
        return x, StackRecord(recs, final)

    def backward(self, rec: StackRecord, dx: np.ndarray, tc: TrainContext) -> None:
        """dx: the memory's gradient on entry, the embedded source's on exit."""
        self._final_backward(rec.final, dx, tc)
        for layer, r in zip(reversed(self.layers), reversed(rec.layers)):
            layer.backward(r, dx, tc)


# -- decoder -----------------------------------------------------------------------------------
@dataclass
class DecoderLayerRecord:
    self_attn: AttentionRecord
    res1: SublayerRecord
    cross_attn: AttentionRecord
    res2: SublayerRecord
    ffn: FeedForwardRecord
    res3: SublayerRecord


class DecoderLayer(Layer):
    """Causal self-attention, cross-attention over the memory, feed-forward (nn.TransformerDecoderLayer)."""

    def __init__(self, prefix: str, c: TransformerConfig):
        d, eps = c.d_model, c.layer_norm_eps
        # causal unless the config says otherwise (the non-autoregressive decoder sees every position)
        self.self_attn = MultiHeadAttention(f"{prefix}.self_attn", d, c.n_heads,
                                            causal=getattr(c, "decoder_causal", True))
        self.norm1 = LayerNorm(f"{prefix}.norm1", d, eps)
        self.cross_attn = MultiHeadAttention(f"{prefix}.multihead_attn", d, c.n_heads)
        self.norm2 = LayerNorm(f"{prefix}.norm2", d, eps)
        self.ffn = FeedForward(prefix, d, c.d_ff, c.activation, c.activation_dropout)
        self.norm3 = LayerNorm(f"{prefix}.norm3", d, eps)
        self.norm_first = nf = c.norm_first
        self.sub1 = SublayerConnection(self.norm1, nf, c.dropout, f"{prefix}.sub1")
        self.sub2 = SublayerConnection(self.norm2, nf, c.dropout, f"{prefix}.sub2")
        self.sub3 = SublayerConnection(self.norm3, nf, c.dropout, f"{prefix}.sub3")

    def children(self) -> Iterable[Layer]:
        return (self.self_attn, self.norm1, self.cross_attn, self.norm2, self.ffn, self.norm3)

    def _feed_forward(self, x: np.ndarray, ws, nt: int) -> None:
        nf = self.norm_first
        o = self.sub3.target(x, ws)
        self.ffn.forward(self.sub3.input(x, ws, nt), o, ws, nt, bias=nf, accumulate=nf)
        self.sub3.close(x, o, self.ffn.out_bias, nt)

    def forward(self, x: np.ndarray, tgt, memory: np.ndarray, src, ws, nt: int) -> None:
        """Teacher forcing: x [Nt, d] in place; memory [Ns, d] of the sources ``src``."""
        nf = self.norm_first
        o = self.sub1.target(x, ws)
        self.self_attn.forward(self.sub1.input(x, ws, nt), tgt, o, ws, nt, bias=nf, accumulate=nf)
        self.sub1.close(x, o, self.self_attn.out_bias, nt)
        y = self.sub2.input(x, ws, nt)
        o = self.sub2.target(x, ws)
        kv = self.cross_attn.memory_kv(memory, ws.get("memory_kv", memory.shape[0], 2 * x.shape[1]), nt)
        self.cross_attn.forward_cross(y, tgt, kv, src, o, ws, nt, bias=nf, accumulate=nf)
        self.sub2.close(x, o, self.cross_attn.out_bias, nt)
        self._feed_forward(x, ws, nt)

    def step(self, x: np.ndarray, t: int, keys: np.ndarray, values: np.ndarray, memory_keys: np.ndarray,
             memory_values: np.ndarray, lanes, probs: Optional[np.ndarray], ws, nt: int) -> None:
        """One decoding position per row: x [R, d] in place; the self-attention cache gets position t."""
        nf = self.norm_first
        o = self.sub1.target(x, ws)
        self.self_attn.step(self.sub1.input(x, ws, nt), keys, values, t, lanes, o, ws, nt,
                            bias=nf, accumulate=nf)
        self.sub1.close(x, o, self.self_attn.out_bias, nt)
        o = self.sub2.target(x, ws)
        self.cross_attn.step_cross(self.sub2.input(x, ws, nt), memory_keys, memory_values, lanes, o, ws, nt,
                                   probs=probs, bias=nf, accumulate=nf)
        self.sub2.close(x, o, self.cross_attn.out_bias, nt)
        self._feed_forward(x, ws, nt)

    def forward_train(self, x: np.ndarray, tgt, memory: np.ndarray, src, tc: TrainContext):
        y, n1 = self.sub1.input_train(x, tc)
        fold, o = self.sub1.fold(tc), self.sub1.target_train(x, tc)
        a1 = self.self_attn.forward_train(y, tgt, o, tc, bias=not fold)
        x, res1 = self.sub1.close_train(x, o, self.self_attn.out_bias, fold, n1, tc)
        y, n2 = self.sub2.input_train(x, tc)
        fold, o = self.sub2.fold(tc), self.sub2.target_train(x, tc)
        a2 = self.cross_attn.forward_cross_train(y, tgt, memory, src, o, tc, bias=not fold)
        x, res2 = self.sub2.close_train(x, o, self.cross_attn.out_bias, fold, n2, tc)
        y, n3 = self.sub3.input_train(x, tc)
        fold, o = self.sub3.fold(tc), self.sub3.target_train(x, tc)
        f = self.ffn.forward_train(y, o, tc, bias=not fold)
        x, res3 = self.sub3.close_train(x, o, self.ffn.out_bias, fold, n3, tc)
        return x, DecoderLayerRecord(a1, res1, a2, res2, f, res3)

    def backward(self, rec: DecoderLayerRecord, dx: np.ndarray, dmemory: np.ndarray, tc: TrainContext) -> None:
        """dx: the output's gradient on entry, the input's on exit; the memory's added to dmemory."""
        dy = _sublayer_in_grad(tc, dx)
        do = self.sub3.backward_open(rec.res3, dx, tc)
        self.ffn.backward(rec.ffn, do, dy, tc)
        self.sub3.backward_close(rec.res3, dx, dy, tc)
        do = self.sub2.backward_open(rec.res2, dx, tc)
        self.cross_attn.backward_cross(rec.cross_attn, do, dy, dmemory, tc)
        self.sub2.backward_close(rec.res2, dx, dy, tc)
        do = self.sub1.backward_open(rec.res1, dx, tc)
        self.self_attn.backward(rec.self_attn, do, dy, tc)
        self.sub1.backward_close(rec.res1, dx, dy, tc)


class Decoder(_Stack):
    """``decoder.layers.{i}`` and the optional final ``decoder.norm``, over embedded targets."""

    def __init__(self, c: TransformerConfig):
        super().__init__([DecoderLayer(f"decoder.layers.{i}", c) for i in range(c.n_decoder_layers)],
                         LayerNorm("decoder.norm", c.d_model, c.layer_norm_eps) if c.final_norm else None,
                         "decoder")
        if self.layers:   # the cross-attention that generate(return_attention=True) shows, and a guide shapes
            self.layers[-1].cross_attn.guided = True

    def forward(self, x: np.ndarray, tgt, memory: np.ndarray, src, ws, nt: int) -> np.ndarray:
        """Teacher forcing (causal): x [Nt, d] (embedded decoder input) -> hidden states, in place."""
        for layer in self.layers:
            layer.forward(x, tgt, memory, src, ws, nt)
        self._final(x, nt)
        return x

    def memory_cache(self, memory: np.ndarray, src, nt: int):
        """Per layer, (keys, values) of the memory in the decoding cache's layout."""
        return [layer.cross_attn.memory_cache(memory, src, nt) for layer in self.layers]

    def step(self, x: np.ndarray, state: "DecoderState", attention: Optional[np.ndarray], ws, nt: int) -> None:
        """One position (``state.length``) per row: x [R, d] in place. ``attention`` receives
        the last layer's cross-attention weights."""
        t = state.length
        lanes = state.lanes(t)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer.step(x, t, state.keys[i], state.values[i], state.cross_keys[i], state.cross_values[i],
                       lanes, attention if i == last else None, ws, nt)
        self._final(x, nt)

    def forward_train(self, x: np.ndarray, tgt, memory: np.ndarray, src, tc: TrainContext):
        recs = []
        for layer in self.layers:
            x, r = layer.forward_train(x, tgt, memory, src, tc)
            recs.append(r)
        x, final = self._final_train(x, tc)
        return x, StackRecord(recs, final)

    def backward(self, rec: StackRecord, dx: np.ndarray, dmemory: np.ndarray, tc: TrainContext) -> None:
        """dx: the hidden states' gradient on entry, the embedded input's on exit; dmemory added to."""
        self._final_backward(rec.final, dx, tc)
        for layer, r in zip(reversed(self.layers), reversed(rec.layers)):
            layer.backward(r, dx, dmemory, tc)


# -- the decoder's incremental cache -------------------------------------------------------------
class StepLanes:
    """The attention kernel's view of one step: ``rows * n_heads`` one-head sequences
    (sequence ``r * n_heads + h`` is row r's head h), one query each."""

    __slots__ = ("n_seq", "seq", "one", "self_start", "self_len", "cross_start", "cross_len")


class DecoderState:
    """Per-row decoder caches for incremental decoding, head-major so that the keys and
    values one (row, head) attends over are contiguous.

    ``keys[l]`` / ``values[l]``: [rows, n_heads, capacity, d_k] self-attention cache of
    layer l. ``cross_keys[l]`` / ``cross_values[l]``: [N_src * n_heads, d_k] keys/values of
    the encoder memory, computed once per source batch and shared by every row (beam) of a
    source; source b's block starts at row ``start_b * n_heads``, head h of it ``h * len_b``
    rows further. The attention kernel reads them as ``rows * n_heads`` one-head sequences
    (sequence ``r * n_heads + h`` is row r's head h), whose starts and lengths are
    ``self_start``, ``cross_start`` and ``cross_len``.
    """

    def __init__(self, config: TransformerConfig, memory_cache, src, rows_src: np.ndarray, max_steps: int,
                 pool: Optional["CachePool"] = None):
        self.config = config
        self._pool = pool
        h, d = config.n_heads, config.d_model
        self.cross_keys = [k for k, _ in memory_cache]
        self.cross_values = [v for _, v in memory_cache]
        self.src_lengths = src.length
        self.rows_src = rows_src.astype(np.int32)
        self.src_start = src.start[self.rows_src]
        self.src_len = src.length[self.rows_src]
        self.rows = len(rows_src)
        self.length = 0
        self.capacity = 0
        n = max(self.rows, 1) * h
        self.ones = np.ones(n, dtype=np.int32)
        self.arange = np.arange(n, dtype=np.int32)
        self._self_len = np.empty(n, dtype=np.int32)
        self.keys: List[np.ndarray] = []
        self.values: List[np.ndarray] = []
        self._d_k = d // h
        self.reserve(max(1, min(max_steps, config.max_len)))
        self._lanes()

    def _lanes(self) -> None:
        h = self.config.n_heads
        self.cross_start = (self.src_start[:, None] * h
                            + np.arange(h, dtype=np.int32)[None, :] * self.src_len[:, None]).ravel()
        self.cross_len = np.repeat(self.src_len, h).astype(np.int32)

    @property
    def self_start(self) -> np.ndarray:
        return self._self_start

    def lanes(self, t: int) -> StepLanes:
        """The kernel's sequences for a step at position t (attending over positions 0..t)."""
        n_seq = self.rows * self.config.n_heads
        lanes = StepLanes()
        lanes.n_seq = n_seq
        lanes.seq = self.arange[:n_seq]
        lanes.one = self.ones[:n_seq]
        lanes.self_start = self._self_start[:n_seq]
        lanes.self_len = self._self_len[:n_seq]
        lanes.self_len.fill(t + 1)
        lanes.cross_start = self.cross_start
        lanes.cross_len = self.cross_len
        return lanes

    def reserve(self, steps: int) -> None:
        """Make room for ``steps`` positions (grows by doubling, keeping what is cached)."""
        if steps <= self.capacity:
            return
        capacity = min(max(steps, 2 * self.capacity), self.config.max_len)
        rows = max(self.rows, 1)
        for cache in (self.keys, self.values):
            for i in range(self.config.n_decoder_layers):
                shape = (rows, self.config.n_heads, capacity, self._d_k)
                grown = self._pool.take(shape) if self._pool is not None else np.empty(shape, np.float32)
                if i < len(cache):
                    grown[:, :, :self.length] = cache[i][:rows, :, :self.length]
                    cache[i] = grown
                else:
                    cache.append(grown)
        self.capacity = capacity
        self._self_start = self.arange * capacity

    def release(self) -> None:
        """Hand the caches back to the pool they came from (the state is unusable after)."""
        if self._pool is not None:
            self._pool.give(self.keys + self.values)
        self.keys, self.values, self._pool = [], [], None

    def select(self, index) -> None:
        """Keep rows ``index`` (in that order): beam reordering and dropping finished rows."""
        index = np.asarray(index, dtype=np.intp)
        if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= self.rows)):
            raise ValueError("row index out of range")
        if len(index) > self.keys[0].shape[0]:
            raise ValueError(f"select keeps at most the {self.keys[0].shape[0]} rows the caches were "
                             f"made for, got {len(index)} indices")
        n = len(index)
        t = self.length
        # Only rows whose content changes are copied: in beam search most beams usually keep
        # their own history, and the copy is O(current length) per moved row.
        moved = np.flatnonzero(index != np.arange(n))
        if len(moved):
            source = index[moved]
            for cache in (self.keys, self.values):
                for arr in cache:
                    arr[moved, :, :t] = arr[source, :, :t]   # the right side is gathered first
        self.rows_src = self.rows_src[index]
        self.src_start = self.src_start[index]
        self.src_len = self.src_len[index]
        self.rows = n
        self._lanes()


class CachePool:
    """Self-attention cache buffers kept from one decoding call for the next (one per model).

    A buffer is handed out whole to one DecoderState (``take``) and comes back when that call
    is done (``give``), so no two calls share one. Why: the caches are tens to hundreds of MB
    (rows x heads x steps x d_k x layers), and fresh pages cost a page fault and a zeroing
    each, a visible share of a batched beam search on a virtual machine. The pool keeps
    the buffers of the last finished call only (``clear`` drops them)."""

    def __init__(self, keep: int):
        self.keep = keep          # buffers kept: the caches of one call (2 per decoder layer)
        self._free: List[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple) -> np.ndarray:
        n = int(np.prod(shape))
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.size >= n]
            buf = self._free.pop(min(fits, key=lambda i: self._free[i].size)) if fits else None
        if buf is None:
            buf = np.empty(n, dtype=np.float32)
        return buf[:n].reshape(shape)

    def give(self, arrays: List[np.ndarray]) -> None:
        flat = [a.base if a.base is not None else a.reshape(-1) for a in arrays]
        with self._lock:
            self._free = sorted(self._free + flat, key=lambda b: b.size, reverse=True)[:self.keep]

    def clear(self) -> None:
        with self._lock:
            self._free = []

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for b in self._free)
