"""Explicit forward and backward passes of the whole model for training (no autograd, no tape).

Every piece comes as a pair, as in llm.c: ``X_forward`` saves exactly what ``X_backward``
needs, and ``X_backward`` **accumulates** parameter gradients into ``grads``, a flat
float32 buffer that mirrors ``Transformer.params`` (same layout, same names). Tied weights
(shared embeddings, output projection = target embedding) are one view, so their
gradients sum by themselves; the caller zeroes ``grads`` once per step.

Shapes: tokens are packed without padding, ``[N, d]`` row-major (N = all tokens of the
batch), as in ``cyformer.model``. Ns / Nt are the source / target token counts.

What is saved per layer (post-LN, the paper's ``x = LN(x + Dropout(Sublayer(x)))``):
the sublayer input, its Q/K/V (or Q) projections and attention context, the FFN's
pre-activation and activation, and each LayerNorm's input (the residual sum) with its
mean and 1/std. Attention weights are recomputed in the backward pass rather than stored,
and dropout masks are regenerated from their seeds (``cyformer._engine.dropout``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from . import threads
from ._engine.attention import attention_backward, attention_forward
from ._engine.dropout import dropout as dropout_kernel
from ._engine.embedding import embedding_backward, embedding_forward
from ._engine.ffn import act_backward, bias_act_forward_save
from ._engine.linear import linear_backward, linear_forward
from ._engine.loss import cross_entropy
from ._engine.norm import layer_norm_backward, layer_norm_forward
from .model import Batch, Transformer, Workspace, named_views

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


class ForwardBackward:
    """Training passes over one ``Transformer``: ``forward`` (loss) then ``backward`` (gradients).

    ``grads`` is allocated once; activations live in a workspace that grows to the largest
    batch seen and is reused. ``forward(src, tgt_in, labels, ...)`` returns
    ``(loss_sum, nll_sum, n_tokens)`` over the label tokens; ``backward()`` adds the
    gradient of ``loss_sum * grad_scale`` to ``grads`` (``grad_scale`` given to forward).
    """

    def __init__(self, model: Transformer):
        self.model = model
        self.config = model.config
        self.grads = np.zeros_like(model.params, dtype=np.float32)
        self._g = named_views(self.grads, model.layout)
        self._ws = Workspace()
        self._saved: Optional[dict] = None

    def grad(self, name: str) -> np.ndarray:
        """Gradient view of parameter ``name``."""
        return self._g[name]

    def gradients(self) -> Dict[str, np.ndarray]:
        return dict(self._g)

    def zero_grad(self) -> None:
        self.grads[...] = 0.0

    # -- small helpers ------------------------------------------------------------------
    def _buf(self, name: str, *shape: int) -> np.ndarray:
        return self._ws.get(name, *shape)

    def _drop(self, x: np.ndarray, p: float, site: int) -> None:
        """Inverted dropout at ``site`` (forward, and identically on the gradient backward)."""
        if self.training and p > 0.0:
            dropout_kernel(x, p, mix_seed(self._seed, site), 0, self._nt)

    def _site(self) -> int:
        # Sites are numbered in forward order; backward replays the same numbers.
        self._site_counter += 1
        return self._site_counter

    # -- embeddings ---------------------------------------------------------------------------
    def _embed_forward(self, batch: Batch, side: str, out: np.ndarray) -> dict:
        m, c = self.model, self.config
        table = m._src_embedding() if side == "encoder" else m._tgt_embedding()
        pos = m._views[f"{side}.embed_positions.weight"] if c.positional == "learned" else m._pos_table
        embedding_forward(batch.ids, batch.positions, table, pos, m._embed_scale, out, self._nt)
        site = self._site()
        self._drop(out, c.dropout, site)
        return {"batch": batch, "site": site}

    def _embed_backward(self, saved: dict, side: str, dx: np.ndarray) -> None:
        c, m = self.config, self.model
        self._drop(dx, c.dropout, saved["site"])
        name = "encoder.embed_tokens.weight" if (side == "encoder" or c.share_embeddings) \
            else "decoder.embed_tokens.weight"
        dpos = self._g[f"{side}.embed_positions.weight"] if c.positional == "learned" else None
        batch = saved["batch"]
        # the pad row gets no gradient from lookups, as nn.Embedding(padding_idx=pad)
        embedding_backward(batch.ids, batch.positions, dx, m._embed_scale, self._g[name], dpos,
                           c.pad_id, self._nt)

    # -- sublayers: input y [N, d] -> output o [N, d] (bias included) ---------------------------
    def _self_attention_forward(self, key: str, prefix: str, y: np.ndarray, batch: Batch,
                                causal: bool, o: np.ndarray) -> dict:
        v, c, nt = self.model._views, self.config, self._nt
        n, d = y.shape
        qkv = self._buf(f"{key}.qkv", n, 3 * d)
        linear_forward(y, v[f"{prefix}.in_proj_weight"], v[f"{prefix}.in_proj_bias"], qkv, n_threads=nt)
        ctx = self._buf(f"{key}.ctx", n, d)
        site = self._site()
        attention_forward(qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:], ctx, batch.start, batch.length,
                          batch.start, batch.length, c.n_heads, causal=causal,
                          dropout=self._p_attn, seed=mix_seed(self._seed, site), n_threads=nt)
        linear_forward(ctx, v[f"{prefix}.out_proj.weight"], v[f"{prefix}.out_proj.bias"], o, n_threads=nt)
        return {"y": y, "qkv": qkv, "ctx": ctx, "batch": batch, "causal": causal, "site": site}

    def _self_attention_backward(self, key: str, prefix: str, s: dict, do: np.ndarray,
                                 dy: np.ndarray) -> None:
        """dy = gradient of the sublayer input (overwritten)."""
        v, g, c, nt = self.model._views, self._g, self.config, self._nt
        n, d = do.shape
        dctx = self._buf("dctx", n, d)
        linear_backward(s["ctx"], v[f"{prefix}.out_proj.weight"], do, dctx, g[f"{prefix}.out_proj.weight"],
                        g[f"{prefix}.out_proj.bias"], n_threads=nt)
        qkv, batch = s["qkv"], s["batch"]
        dqkv = self._buf("dqkv", n, 3 * d)
        attention_backward(qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:], dctx,
                           dqkv[:, :d], dqkv[:, d:2 * d], dqkv[:, 2 * d:], batch.start, batch.length,
                           batch.start, batch.length, c.n_heads, causal=s["causal"],
                           dropout=self._p_attn, seed=mix_seed(self._seed, s["site"]), n_threads=nt)
        linear_backward(s["y"], v[f"{prefix}.in_proj_weight"], dqkv, dy, g[f"{prefix}.in_proj_weight"],
                        g[f"{prefix}.in_proj_bias"], n_threads=nt)

    def _cross_attention_forward(self, key: str, prefix: str, y: np.ndarray, tgt: Batch,
                                 memory_kv: np.ndarray, src: Batch, o: np.ndarray) -> dict:
        v, c, nt = self.model._views, self.config, self._nt
        n, d = y.shape
        q = self._buf(f"{key}.q", n, d)
        linear_forward(y, v[f"{prefix}.in_proj_weight"][:d], v[f"{prefix}.in_proj_bias"][:d], q, n_threads=nt)
        ctx = self._buf(f"{key}.ctx", n, d)
        site = self._site()
        attention_forward(q, memory_kv[:, :d], memory_kv[:, d:], ctx, tgt.start, tgt.length,
                          src.start, src.length, c.n_heads, dropout=self._p_attn,
                          seed=mix_seed(self._seed, site), n_threads=nt)
        linear_forward(ctx, v[f"{prefix}.out_proj.weight"], v[f"{prefix}.out_proj.bias"], o, n_threads=nt)
        return {"y": y, "q": q, "ctx": ctx, "kv": memory_kv, "site": site}

    def _cross_attention_backward(self, key: str, prefix: str, s: dict, do: np.ndarray, dy: np.ndarray,
                                  dmemory_kv: np.ndarray, tgt: Batch, src: Batch) -> None:
        """dy (overwritten) and dmemory_kv [Ns, 2d] (overwritten) from the output's gradient."""
        v, g, c, nt = self.model._views, self._g, self.config, self._nt
        n, d = do.shape
        dctx = self._buf("dctx", n, d)
        linear_backward(s["ctx"], v[f"{prefix}.out_proj.weight"], do, dctx, g[f"{prefix}.out_proj.weight"],
                        g[f"{prefix}.out_proj.bias"], n_threads=nt)
        dq = self._buf("dq", n, d)
        kv = s["kv"]
        attention_backward(s["q"], kv[:, :d], kv[:, d:], dctx, dq, dmemory_kv[:, :d], dmemory_kv[:, d:],
                           tgt.start, tgt.length, src.start, src.length, c.n_heads,
                           dropout=self._p_attn, seed=mix_seed(self._seed, s["site"]), n_threads=nt)
        linear_backward(s["y"], v[f"{prefix}.in_proj_weight"][:d], dq, dy, g[f"{prefix}.in_proj_weight"][:d],
                        g[f"{prefix}.in_proj_bias"][:d], n_threads=nt)

    def _ffn_forward(self, key: str, prefix: str, y: np.ndarray, o: np.ndarray) -> dict:
        v, c, nt = self.model._views, self.config, self._nt
        n = y.shape[0]
        pre = self._buf(f"{key}.pre", n, c.d_ff)
        h = self._buf(f"{key}.h", n, c.d_ff)
        linear_forward(y, v[f"{prefix}.linear1.weight"], None, pre, n_threads=nt)
        bias_act_forward_save(pre, v[f"{prefix}.linear1.bias"], self.model._act, h, nt)
        site = self._site()
        self._drop(h, c.activation_dropout, site)
        linear_forward(h, v[f"{prefix}.linear2.weight"], v[f"{prefix}.linear2.bias"], o, n_threads=nt)
        return {"y": y, "pre": pre, "h": h, "site": site}

    def _ffn_backward(self, key: str, prefix: str, s: dict, do: np.ndarray, dy: np.ndarray) -> None:
        v, g, c, nt = self.model._views, self._g, self.config, self._nt
        n = do.shape[0]
        dh = self._buf("dh", n, c.d_ff)
        linear_backward(s["h"], v[f"{prefix}.linear2.weight"], do, dh, g[f"{prefix}.linear2.weight"],
                        g[f"{prefix}.linear2.bias"], n_threads=nt)
        self._drop(dh, c.activation_dropout, s["site"])
        act_backward(dh, s["pre"], self.model._act, nt)
        linear_backward(s["y"], v[f"{prefix}.linear1.weight"], dh, dy, g[f"{prefix}.linear1.weight"],
                        g[f"{prefix}.linear1.bias"], n_threads=nt)

    # -- residual connection around a sublayer -----------------------------------------------------
    def _residual_forward(self, key: str, norm: str, x: np.ndarray, sublayer) -> Tuple[np.ndarray, dict]:
        """post-LN: LN(x + Dropout(f(x))); pre-LN: x + Dropout(f(LN(x))). Returns the new x.

        ``sublayer(y, o)`` writes f(y) into ``o`` and returns what its backward needs.
        """
        v, c, nt = self.model._views, self.config, self._nt
        n, d = x.shape
        mean = self._buf(f"{key}.mean", n)
        rstd = self._buf(f"{key}.rstd", n)
        o = self._buf(f"{key}.out", n, d)
        if c.norm_first:
            y = self._buf(f"{key}.normed", n, d)
            layer_norm_forward(x, None, v[f"{norm}.weight"], v[f"{norm}.bias"], y, c.layer_norm_eps,
                               mean, rstd, n_threads=nt)
            inner = sublayer(y, o)
            site = self._site()
            self._drop(o, c.dropout, site)
            o += x  # o becomes the new residual stream
            return o, {"x": x, "mean": mean, "rstd": rstd, "inner": inner, "site": site}
        inner = sublayer(x, o)
        site = self._site()
        self._drop(o, c.dropout, site)
        out = self._buf(f"{key}.next", n, d)
        # o += x (o keeps the sum, the LayerNorm input), out = LN(o)
        layer_norm_forward(o, x, v[f"{norm}.weight"], v[f"{norm}.bias"], out, c.layer_norm_eps,
                           mean, rstd, n_threads=nt)
        return out, {"sum": o, "mean": mean, "rstd": rstd, "inner": inner, "site": site}

    def _residual_backward(self, norm: str, s: dict, dx: np.ndarray, sublayer_backward) -> None:
        """dx: gradient of the new x on entry, of the old x on exit (in place).

        ``sublayer_backward(inner, do, dy)`` writes the sublayer input's gradient into dy.
        """
        v, g, c, nt = self.model._views, self._g, self.config, self._nt
        n, d = dx.shape
        do = self._buf("d_sub_out", n, d)
        dy = self._buf("d_sub_in", n, d)
        if c.norm_first:
            do[...] = dx
            self._drop(do, c.dropout, s["site"])
            sublayer_backward(s["inner"], do, dy)
            # dx (residual path) += LN backward of dy
            layer_norm_backward(s["x"], s["mean"], s["rstd"], v[f"{norm}.weight"], dy, dx,
                                g[f"{norm}.weight"], g[f"{norm}.bias"], accumulate=True, n_threads=nt)
            return
        layer_norm_backward(s["sum"], s["mean"], s["rstd"], v[f"{norm}.weight"], dx, dx,
                            g[f"{norm}.weight"], g[f"{norm}.bias"], n_threads=nt)
        do[...] = dx
        self._drop(do, c.dropout, s["site"])
        sublayer_backward(s["inner"], do, dy)
        dx += dy

    def _final_norm_forward(self, side: str, x: np.ndarray) -> Tuple[np.ndarray, Optional[dict]]:
        c, v = self.config, self.model._views
        if not c.final_norm:
            return x, None
        n, d = x.shape
        mean, rstd = self._buf(f"{side}.final.mean", n), self._buf(f"{side}.final.rstd", n)
        out = self._buf(f"{side}.final.out", n, d)
        layer_norm_forward(x, None, v[f"{side}.norm.weight"], v[f"{side}.norm.bias"], out, c.layer_norm_eps,
                           mean, rstd, n_threads=self._nt)
        return out, {"x": x, "mean": mean, "rstd": rstd}

    def _final_norm_backward(self, side: str, s: Optional[dict], dx: np.ndarray) -> None:
        if s is None:
            return
        v, g = self.model._views, self._g
        layer_norm_backward(s["x"], s["mean"], s["rstd"], v[f"{side}.norm.weight"], dx, dx,
                            g[f"{side}.norm.weight"], g[f"{side}.norm.bias"], n_threads=self._nt)

    # -- the stacks ----------------------------------------------------------------------------------
    def _encoder_forward(self, src: Batch) -> Tuple[np.ndarray, dict]:
        c = self.config
        x = self._buf("enc.embed", len(src.ids), c.d_model)
        saved = {"embed": self._embed_forward(src, "encoder", x), "layers": []}
        for i in range(c.n_encoder_layers):
            p, key = f"encoder.layers.{i}", f"enc{i}"
            x, s_attn = self._residual_forward(
                f"{key}.attn", f"{p}.norm1", x,
                lambda y, o, p=p, key=key: self._self_attention_forward(key, f"{p}.self_attn", y, src, False, o))
            x, s_ffn = self._residual_forward(
                f"{key}.ffn", f"{p}.norm2", x, lambda y, o, p=p, key=key: self._ffn_forward(key, p, y, o))
            saved["layers"].append((s_attn, s_ffn))
        x, saved["final"] = self._final_norm_forward("encoder", x)
        return x, saved

    def _encoder_backward(self, saved: dict, dmemory: np.ndarray) -> None:
        c = self.config
        dx = dmemory
        self._final_norm_backward("encoder", saved["final"], dx)
        for i in reversed(range(c.n_encoder_layers)):
            p, key = f"encoder.layers.{i}", f"enc{i}"
            s_attn, s_ffn = saved["layers"][i]
            self._residual_backward(f"{p}.norm2", s_ffn, dx,
                                    lambda s, do, dy, p=p, key=key: self._ffn_backward(key, p, s, do, dy))
            self._residual_backward(
                f"{p}.norm1", s_attn, dx,
                lambda s, do, dy, p=p, key=key: self._self_attention_backward(key, f"{p}.self_attn", s, do, dy))
        self._embed_backward(saved["embed"], "encoder", dx)

    def _decoder_forward(self, tgt: Batch, memory: np.ndarray, src: Batch) -> Tuple[np.ndarray, dict]:
        c, v, nt = self.config, self.model._views, self._nt
        d = c.d_model
        x = self._buf("dec.embed", len(tgt.ids), d)
        saved = {"embed": self._embed_forward(tgt, "decoder", x), "layers": []}
        for i in range(c.n_decoder_layers):
            p, key = f"decoder.layers.{i}", f"dec{i}"
            x, s_self = self._residual_forward(
                f"{key}.self", f"{p}.norm1", x,
                lambda y, o, p=p, key=key: self._self_attention_forward(f"{key}.self", f"{p}.self_attn", y, tgt,
                                                                        True, o))
            # cross-attention keys/values of the memory: [Ns, 2d], once per layer
            kv = self._buf(f"{key}.memory_kv", memory.shape[0], 2 * d)
            linear_forward(memory, v[f"{p}.multihead_attn.in_proj_weight"][d:],
                           v[f"{p}.multihead_attn.in_proj_bias"][d:], kv, n_threads=nt)
            x, s_cross = self._residual_forward(
                f"{key}.cross", f"{p}.norm2", x,
                lambda y, o, p=p, key=key, kv=kv: self._cross_attention_forward(
                    f"{key}.cross", f"{p}.multihead_attn", y, tgt, kv, src, o))
            x, s_ffn = self._residual_forward(
                f"{key}.ffn", f"{p}.norm3", x, lambda y, o, p=p, key=key: self._ffn_forward(key, p, y, o))
            saved["layers"].append((s_self, s_cross, s_ffn))
        x, saved["final"] = self._final_norm_forward("decoder", x)
        return x, saved

    def _decoder_backward(self, saved: dict, dx: np.ndarray, memory: np.ndarray, dmemory: np.ndarray,
                          tgt: Batch, src: Batch) -> None:
        """dx: gradient of the decoder output; adds the memory's gradient into dmemory."""
        c, v, g, nt = self.config, self.model._views, self._g, self._nt
        d = c.d_model
        dkv = self._buf("dmemory_kv", memory.shape[0], 2 * d)
        self._final_norm_backward("decoder", saved["final"], dx)
        for i in reversed(range(c.n_decoder_layers)):
            p, key = f"decoder.layers.{i}", f"dec{i}"
            s_self, s_cross, s_ffn = saved["layers"][i]
            self._residual_backward(f"{p}.norm3", s_ffn, dx,
                                    lambda s, do, dy, p=p, key=key: self._ffn_backward(key, p, s, do, dy))
            self._residual_backward(
                f"{p}.norm2", s_cross, dx,
                lambda s, do, dy, p=p: self._cross_attention_backward(
                    "", f"{p}.multihead_attn", s, do, dy, dkv, tgt, src))
            prefix = f"{p}.multihead_attn"
            linear_backward(memory, v[f"{prefix}.in_proj_weight"][d:], dkv, dmemory,
                            g[f"{prefix}.in_proj_weight"][d:], g[f"{prefix}.in_proj_bias"][d:],
                            accumulate_dx=True, n_threads=nt)
            self._residual_backward(
                f"{p}.norm1", s_self, dx,
                lambda s, do, dy, p=p, key=key: self._self_attention_backward(
                    f"{key}.self", f"{p}.self_attn", s, do, dy))
        self._embed_backward(saved["embed"], "decoder", dx)

    # -- the whole model -----------------------------------------------------------------------------
    def forward(self, src: Batch, tgt_in: Batch, labels: np.ndarray, *, label_smoothing: float = 0.0,
                training: bool = True, seed: int = 0, grad_scale: Optional[float] = None,
                ignore_index: int = -100) -> Tuple[float, float, int]:
        """Loss of a packed batch; saves activations for ``backward`` (unless ``grad_scale=0``).

        ``labels`` [Nt] int32, aligned with ``tgt_in``'s packed tokens. ``training`` turns
        dropout on (masks seeded by ``seed``). ``grad_scale`` (default 1 / tokens: the
        gradient of the mean loss) scales the logits' gradient computed here in place.
        Returns (sum of smoothed losses, sum of NLLs, number of label tokens).
        """
        c, m = self.config, self.model
        if src.size != tgt_in.size:
            raise ValueError(f"src has {src.size} sequences but tgt_in has {tgt_in.size}")
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        if labels.shape != tgt_in.ids.shape:
            raise ValueError(f"labels must have one entry per target token ({len(tgt_in.ids)}), "
                             f"got shape {labels.shape}")
        self.training = training
        self._seed = int(seed)
        self._site_counter = 0
        self._nt = threads.get_num_threads()
        self._p_attn = c.attention_dropout if training else 0.0
        n_tokens = int((labels != ignore_index).sum())
        want_grad = grad_scale != 0.0
        if grad_scale is None:
            grad_scale = 1.0 / max(n_tokens, 1)
        with threads.blas_single_threaded():
            memory, s_enc = self._encoder_forward(src)
            hidden, s_dec = self._decoder_forward(tgt_in, memory, src)
            logits = self._buf("logits", len(tgt_in.ids), c.tgt_vocab_size)
            out_w = m._output_weight()
            linear_forward(hidden, out_w, m._views.get("output_projection.bias"), logits, n_threads=self._nt)
            # logits become the gradient of grad_scale * loss, in place
            losses, nlls = cross_entropy(logits, labels, label_smoothing, ignore_index, want_grad,
                                         float(grad_scale), self._nt)
        self._saved = {"src": src, "tgt": tgt_in, "memory": memory, "enc": s_enc, "dec": s_dec,
                       "hidden": hidden, "dlogits": logits} if want_grad else None
        return float(losses.sum(dtype=np.float64)), float(nlls.sum(dtype=np.float64)), n_tokens

    def backward(self) -> None:
        """Accumulate the gradient of the last ``forward``'s scaled loss into ``grads``."""
        if self._saved is None:
            raise RuntimeError("backward() needs a forward() with gradients first (and runs once per forward)")
        s, c, m, g = self._saved, self.config, self.model, self._g
        self._saved = None
        nt = self._nt
        with threads.blas_single_threaded():
            hidden = s["hidden"]
            dx = self._buf("dhidden", *hidden.shape)
            out_name = "output_projection.weight" if "output_projection.weight" in g else (
                "encoder.embed_tokens.weight" if c.share_embeddings else "decoder.embed_tokens.weight")
            linear_backward(hidden, m._output_weight(), s["dlogits"], dx, g[out_name],
                            g.get("output_projection.bias"), n_threads=nt)
            memory = s["memory"]
            dmemory = self._buf("dmemory", *memory.shape)
            dmemory[...] = 0.0
            self._decoder_backward(s["dec"], dx, memory, dmemory, s["tgt"], s["src"])
            self._encoder_backward(s["enc"], dmemory)
