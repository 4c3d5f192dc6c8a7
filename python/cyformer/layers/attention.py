"""``MultiHeadAttention``: self (optionally causal) and cross attention over packed sequences.

Weights as PyTorch's ``nn.MultiheadAttention``: ``in_proj_weight`` [3d, d] stacks W_Q, W_K,
W_V (one GEMM for all three in self-attention; cross-attention projects the queries with
the first d rows and the encoder memory with the other 2d), ``out_proj`` [d, d].

Masks are lengths: sequence b's queries are rows ``start[b]:start[b]+length[b]`` of the
packed batch, its keys the same rows (self) or its source's rows (cross); causal and a local
window (``|i - j| <= window``, speech frames) are the kernel's loop bounds. Only structure
that bounds cannot say (a graph's edges) comes as a boolean mask, ``batch.mask`` [B, T, T],
read by self-attention. The passes, side by side:

* ``forward`` / ``forward_train`` / ``backward``: self-attention over a batch;
* ``memory_kv`` / ``forward_cross`` / ``forward_cross_train`` / ``backward_cross``:
  cross-attention, the memory's keys and values projected once per source batch;
* ``step`` / ``step_cross``: one decoding position per row over the incremental cache
  (``DecoderState``): head-major keys/values, so one (row, head)'s keys are contiguous and
  the kernel sees ``rows * n_heads`` one-head sequences.

Every pass ends with the output projection into ``out``: ``bias=False`` leaves its bias to
a following LayerNorm (``out_bias``), ``accumulate=True`` adds into ``out`` (pre-LN residual).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .._engine.attention import attention_backward, attention_forward
from .base import Layer, TrainContext
from .linear import Linear


@dataclass
class AttentionRecord:
    y: np.ndarray                    # input [N, d] (queries' source)
    proj: np.ndarray                 # self: Q|K|V [N, 3d]; cross: Q [N, d]
    ctx: np.ndarray                  # context before the output projection [N, d]
    batch: object                    # query-side Batch
    site: int                        # attention-dropout site
    memory: Optional[np.ndarray] = None   # cross: encoder memory [Ns, d]
    kv: Optional[np.ndarray] = None       # cross: its keys|values [Ns, 2d]
    src: object = None                    # cross: source Batch
    guide: Optional[tuple] = None         # cross, guided: (dq [Nt, d], dk [Ns, d]) of the penalty
    lse: Optional[np.ndarray] = None      # each query row's log-sum-exp per head [n_heads, N]


class MultiHeadAttention(Layer):
    def __init__(self, prefix: str, d_model: int, n_heads: int, *, causal: bool = False,
                 window: Optional[int] = None):
        d = d_model
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
            raise ValueError(f"window must be None or an int >= 0, got {window!r}")
        self.prefix = prefix
        self.d_model = d
        self.n_heads = n_heads
        self.d_k = d // n_heads
        self.causal = causal
        self.window = -1 if window is None else window   # the kernel's "no window"
        self.guided = False   # cross-attention: the layer a guided-attention penalty reads
        self.in_proj = Linear(f"{prefix}.in_proj_weight", f"{prefix}.in_proj_bias", 3 * d, d)
        self.q_proj = self.in_proj.rows(0, d)
        self.kv_proj = self.in_proj.rows(d, 3 * d)
        self.out_proj = Linear(f"{prefix}.out_proj.weight", f"{prefix}.out_proj.bias", d, d)
        self._k_qkv, self._k_q, self._k_ctx = f"{prefix}.qkv", f"{prefix}.q", f"{prefix}.ctx"
        self._k_lse = f"{prefix}.lse"
        self._k_kv = f"{prefix}.memory_kv"

    def children(self) -> Iterable[Layer]:
        # q_proj / kv_proj declare nothing (row slices of in_proj) but bind, and take the
        # compute type, like the others
        return (self.in_proj, self.q_proj, self.kv_proj, self.out_proj)

    @property
    def out_bias(self) -> np.ndarray:
        return self.out_proj.bias

    # -- self-attention ------------------------------------------------------------------------
    def forward(self, y: np.ndarray, batch, out: np.ndarray, ws, nt: int, *, bias: bool = True,
                accumulate: bool = False, probs: Optional[np.ndarray] = None) -> None:
        """Inference: out (+)= MHA(y, y, y) W_O^T (+ b_O); y [N, d]. ``probs`` [B, n_heads, T, T]
        receives the attention weights (zero where masked or past a length)."""
        n, d = y.shape
        qkv = ws.get("qkv", n, 3 * d)
        self.in_proj.forward(y, qkv, nt)
        ctx = ws.get("ctx", n, d)
        attention_forward(qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:], ctx, batch.start, batch.length,
                          batch.start, batch.length, self.n_heads, causal=self.causal, window=self.window,
                          mask=_mask(batch), probs=probs, n_threads=nt)
        self.out_proj.forward(ctx, out, nt, bias=bias, accumulate=accumulate)

    def forward_train(self, y: np.ndarray, batch, out: np.ndarray, tc: TrainContext, *,
                      bias: bool = True) -> AttentionRecord:
        n, d = y.shape
        qkv = tc.buf(self._k_qkv, n, 3 * d)
        self.in_proj.forward(y, qkv, tc.nt)
        ctx = tc.buf(self._k_ctx, n, d)
        lse = tc.buf(self._k_lse, self.n_heads, n)
        site = tc.site()
        attention_forward(qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:], ctx, batch.start, batch.length,
                          batch.start, batch.length, self.n_heads, causal=self.causal, window=self.window,
                          mask=_mask(batch), dropout=tc.p_attn, seed=tc.site_seed(site), n_threads=tc.nt,
                          lse=lse)
        self.out_proj.forward(ctx, out, tc.nt, bias=bias)
        return AttentionRecord(y, qkv, ctx, batch, site, lse=lse)

    def backward(self, rec: AttentionRecord, dout: np.ndarray, dy: np.ndarray, tc: TrainContext) -> None:
        """dy (overwritten): gradient of the input y, from the output's gradient dout."""
        g, nt = tc.grads, tc.nt
        n, d = dout.shape
        dctx = tc.buf("dctx", n, d)
        self.out_proj.backward(rec.ctx, dout, dctx, g, nt)
        qkv, batch = rec.proj, rec.batch
        dqkv = tc.buf("dqkv", n, 3 * d)
        attention_backward(qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:], dctx,
                           dqkv[:, :d], dqkv[:, d:2 * d], dqkv[:, 2 * d:], batch.start, batch.length,
                           batch.start, batch.length, self.n_heads, causal=self.causal, window=self.window,
                           mask=_mask(batch), dropout=tc.p_attn, seed=tc.site_seed(rec.site), n_threads=nt,
                           out=rec.ctx, lse=rec.lse)
        self.in_proj.backward(rec.y, dqkv, dy, g, nt)

    def step(self, y: np.ndarray, keys: np.ndarray, values: np.ndarray, t: int, lanes, out: np.ndarray,
             ws, nt: int, *, bias: bool = True, accumulate: bool = False) -> None:
        """One decoding position per row: y [R, d]; its key/value written at position t of
        the cache (keys/values [R, n_heads, capacity, d_k]); attends over positions 0..t."""
        rows, d = y.shape
        h, d_k = self.n_heads, self.d_k
        qkv = ws.get("step_qkv", rows, 3 * d)
        self.in_proj.forward(y, qkv, nt)
        keys[:rows, :, t] = qkv[:, d:2 * d].reshape(rows, h, d_k)
        values[:rows, :, t] = qkv[:, 2 * d:].reshape(rows, h, d_k)
        q = ws.get("step_q", rows, d)
        np.copyto(q, qkv[:, :d])
        ctx = ws.get("step_ctx", rows, d)
        n_seq = lanes.n_seq
        attention_forward(q.reshape(n_seq, d_k), keys.reshape(-1, d_k), values.reshape(-1, d_k),
                          ctx.reshape(n_seq, d_k), lanes.seq, lanes.one, lanes.self_start, lanes.self_len, 1,
                          n_threads=nt)
        self.out_proj.forward(ctx, out, nt, bias=bias, accumulate=accumulate)

    # -- cross-attention -----------------------------------------------------------------------
    def memory_kv(self, memory: np.ndarray, out: np.ndarray, nt: int) -> np.ndarray:
        """Keys and values of the encoder memory: out [Ns, 2d] = memory W_KV^T + b_KV."""
        self.kv_proj.forward(memory, out, nt)
        return out

    def memory_cache(self, memory: np.ndarray, src, nt: int):
        """(keys, values) of the memory for decoding: each [Ns * n_heads, d_k], source b's
        block [n_heads, len_b, d_k] from row ``start_b * n_heads`` (one head's rows contiguous)."""
        d = self.d_model
        kv = self.memory_kv(memory, np.empty((memory.shape[0], 2 * d), dtype=np.float32), nt)
        return _heads_major(kv[:, :d], src, self.n_heads), _heads_major(kv[:, d:], src, self.n_heads)

    def forward_cross(self, y: np.ndarray, batch, kv: np.ndarray, src, out: np.ndarray, ws, nt: int, *,
                      bias: bool = True, accumulate: bool = False) -> None:
        """Inference: queries y [Nt, d] of ``batch`` attend over ``kv`` [Ns, 2d] of ``src``."""
        n, d = y.shape
        q = ws.get("q", n, d)
        self.q_proj.forward(y, q, nt)
        ctx = ws.get("ctx", n, d)
        attention_forward(q, kv[:, :d], kv[:, d:], ctx, batch.start, batch.length, src.start, src.length,
                          self.n_heads, n_threads=nt)
        self.out_proj.forward(ctx, out, nt, bias=bias, accumulate=accumulate)

    def forward_cross_train(self, y: np.ndarray, batch, memory: np.ndarray, src, out: np.ndarray,
                            tc: TrainContext, *, bias: bool = True) -> AttentionRecord:
        n, d = y.shape
        kv = self.memory_kv(memory, tc.buf(self._k_kv, memory.shape[0], 2 * d), tc.nt)
        q = tc.buf(self._k_q, n, d)
        self.q_proj.forward(y, q, tc.nt)
        ctx = tc.buf(self._k_ctx, n, d)
        lse = tc.buf(self._k_lse, self.n_heads, n)
        site = tc.site()
        attention_forward(q, kv[:, :d], kv[:, d:], ctx, batch.start, batch.length, src.start, src.length,
                          self.n_heads, dropout=tc.p_attn, seed=tc.site_seed(site), n_threads=tc.nt, lse=lse)
        self.out_proj.forward(ctx, out, tc.nt, bias=bias)
        guide = None
        if self.guided and tc.guide is not None and tc.guide[0] > 0:
            loss, dq, dk = guided_attention(q, kv[:, :d], batch, src, self.n_heads, *tc.guide)
            tc.extra_loss += loss
            guide = (dq * tc.loss_scale, dk * tc.loss_scale)
        return AttentionRecord(y, q, ctx, batch, site, memory=memory, kv=kv, src=src, guide=guide, lse=lse)

    def backward_cross(self, rec: AttentionRecord, dout: np.ndarray, dy: np.ndarray, dmemory: np.ndarray,
                       tc: TrainContext) -> None:
        """dy (overwritten) and dmemory [Ns, d] (added to) from the output's gradient dout."""
        g, nt = tc.grads, tc.nt
        n, d = dout.shape
        dctx = tc.buf("dctx", n, d)
        self.out_proj.backward(rec.ctx, dout, dctx, g, nt)
        dq = tc.buf("dq", n, d)
        kv, src, batch = rec.kv, rec.src, rec.batch
        dkv = tc.buf("dmemory_kv", kv.shape[0], 2 * d)
        attention_backward(rec.proj, kv[:, :d], kv[:, d:], dctx, dq, dkv[:, :d], dkv[:, d:],
                           batch.start, batch.length, src.start, src.length, self.n_heads,
                           dropout=tc.p_attn, seed=tc.site_seed(rec.site), n_threads=nt, out=rec.ctx, lse=rec.lse)
        if rec.guide is not None:
            dq += rec.guide[0]
            dkv[:, :d] += rec.guide[1]
        self.q_proj.backward(rec.y, dq, dy, g, nt)
        self.kv_proj.backward(rec.memory, dkv, dmemory, g, nt, accumulate_dx=True)

    def step_cross(self, y: np.ndarray, keys: np.ndarray, values: np.ndarray, lanes, out: np.ndarray,
                   ws, nt: int, *, probs: Optional[np.ndarray] = None, bias: bool = True,
                   accumulate: bool = False) -> None:
        """One decoding position per row over the memory cache of ``memory_cache``;
        ``probs`` ([R, n_heads, S_max]) receives the attention weights."""
        rows, d = y.shape
        d_k = self.d_k
        q = ws.get("step_q", rows, d)
        self.q_proj.forward(y, q, nt)
        ctx = ws.get("step_ctx", rows, d)
        n_seq = lanes.n_seq
        if probs is not None:
            probs = probs.reshape(n_seq, 1, 1, -1)
        attention_forward(q.reshape(n_seq, d_k), keys, values, ctx.reshape(n_seq, d_k), lanes.seq, lanes.one,
                          lanes.cross_start, lanes.cross_len, 1, probs=probs, n_threads=nt)
        self.out_proj.forward(ctx, out, nt, bias=bias, accumulate=accumulate)


def guided_attention(q: np.ndarray, k: np.ndarray, tgt, src, n_heads: int, weight: float, width: float):
    """Guided attention (Tachibana et al. 2017): a penalty on attention far from the diagonal.

    For target t of T and source n of S the weight of A[h, t, n] = softmax(q_t k_n / sqrt(d_k))
    is W = 1 - exp(-(n/S - t/T)^2 / (2 width^2)); the penalty is ``weight`` times the sum over
    target tokens of sum_n A W, averaged over heads (so it adds to a loss summed over tokens).
    Returns (penalty, dq [Nt, d], dk [Ns, d]), its gradients with respect to the queries and keys.
    """
    d = q.shape[1]
    d_k = d // n_heads
    scale = 1.0 / np.sqrt(d_k)
    dq = np.zeros(q.shape, dtype=np.float32)
    dk = np.zeros(k.shape, dtype=np.float32)
    total = 0.0
    for b in range(tgt.size):
        t0, nt_ = int(tgt.start[b]), int(tgt.length[b])
        s0, ns = int(src.start[b]), int(src.length[b])
        qh = q[t0:t0 + nt_].reshape(nt_, n_heads, d_k).transpose(1, 0, 2).astype(np.float64)
        kh = k[s0:s0 + ns].reshape(ns, n_heads, d_k).transpose(1, 0, 2).astype(np.float64)
        scores = scale * qh @ kh.transpose(0, 2, 1)                       # [H, T, S]
        scores -= scores.max(axis=2, keepdims=True)
        a = np.exp(scores)
        a /= a.sum(axis=2, keepdims=True)
        gap = (np.arange(ns) / ns)[None, :] - (np.arange(nt_) / nt_)[:, None]
        w = 1.0 - np.exp(-gap ** 2 / (2.0 * width ** 2))                  # [T, S]
        total += weight * float((a * w).sum()) / n_heads
        da = (weight / n_heads) * w[None]
        ds = a * (da - (a * da).sum(axis=2, keepdims=True))
        dq[t0:t0 + nt_] = (scale * ds @ kh).transpose(1, 0, 2).reshape(nt_, d)
        dk[s0:s0 + ns] = (scale * ds.transpose(0, 2, 1) @ qh).transpose(1, 0, 2).reshape(ns, d)
    return total, dq, dk


def _mask(batch) -> Optional[np.ndarray]:
    """The self-attention mask a batch carries (a Batch of token ids or of feature vectors)."""
    return getattr(batch, "mask", None)


def _heads_major(part: np.ndarray, src, n_heads: int) -> np.ndarray:
    """[N_src, d] keys or values of packed sources -> [N_src * n_heads, d_k], each source's
    block [n_heads, len, d_k] (one head's rows contiguous)."""
    n, d = part.shape
    d_k = d // n_heads
    out = np.empty((n * n_heads, d_k), dtype=np.float32)
    for start, length in zip(src.start.tolist(), src.length.tolist()):
        block = out[start * n_heads:(start + length) * n_heads].reshape(n_heads, length, d_k)
        block[:] = part[start:start + length].reshape(length, n_heads, d_k).transpose(1, 0, 2)
    return out
