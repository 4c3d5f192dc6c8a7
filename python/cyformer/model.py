"""The encoder-decoder Transformer: one flat parameter buffer, named views, engine kernels.

The Python layer decides what to compute; ``cyformer._engine`` computes it. Tokens of
a batch are packed (no padding rows) into row-major ``[tokens, features]`` matrices,
so every projection is one GEMM over the whole batch and attention masks are lengths.
"""
from __future__ import annotations

import math
import numbers
import re
import os
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import threads
from ._engine.attention import attention_forward
from ._engine.embedding import embedding_forward, sinusoidal_table
from ._engine.ffn import activation_code, bias_act_forward
from ._engine.linear import linear_forward
from ._engine.norm import layer_norm_forward
from .config import TransformerConfig
from .io import (CheckpointError, atomic_write_bytes, load_flat_float32, load_safetensors,
                 safetensors_header, verify_checkpoint)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

TokenBatch = Union[Sequence[Sequence[int]], np.ndarray]


# -- parameter layout ------------------------------------------------------------------
def _attention_params(prefix: str, d: int) -> List[Tuple[str, Tuple[int, ...]]]:
    # in_proj_weight stacks W_Q, W_K, W_V ([3d, d], PyTorch's nn.MultiheadAttention layout).
    return [(f"{prefix}.in_proj_weight", (3 * d, d)), (f"{prefix}.in_proj_bias", (3 * d,)),
            (f"{prefix}.out_proj.weight", (d, d)), (f"{prefix}.out_proj.bias", (d,))]


def _norm_params(prefix: str, d: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{prefix}.weight", (d,)), (f"{prefix}.bias", (d,))]


def _ffn_params(prefix: str, d: int, d_ff: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{prefix}.linear1.weight", (d_ff, d)), (f"{prefix}.linear1.bias", (d_ff,)),
            (f"{prefix}.linear2.weight", (d, d_ff)), (f"{prefix}.linear2.bias", (d,))]


def parameter_layout(config: TransformerConfig) -> List[Tuple[str, Tuple[int, ...]]]:
    """Every parameter's name and shape, in buffer order (names follow ``nn.Transformer``)."""
    c = config
    d = c.d_model
    layout: List[Tuple[str, Tuple[int, ...]]] = [("encoder.embed_tokens.weight", (c.src_vocab_size, d))]
    if not c.share_embeddings:
        layout.append(("decoder.embed_tokens.weight", (c.tgt_vocab_size, d)))
    if c.positional == "learned":
        layout += [("encoder.embed_positions.weight", (c.max_len, d)),
                   ("decoder.embed_positions.weight", (c.max_len, d))]
    for i in range(c.n_encoder_layers):
        p = f"encoder.layers.{i}"
        layout += _attention_params(f"{p}.self_attn", d) + _norm_params(f"{p}.norm1", d)
        layout += _ffn_params(p, d, c.d_ff) + _norm_params(f"{p}.norm2", d)
    if c.final_norm:
        layout += _norm_params("encoder.norm", d)
    for i in range(c.n_decoder_layers):
        p = f"decoder.layers.{i}"
        layout += _attention_params(f"{p}.self_attn", d) + _norm_params(f"{p}.norm1", d)
        layout += _attention_params(f"{p}.multihead_attn", d) + _norm_params(f"{p}.norm2", d)
        layout += _ffn_params(p, d, c.d_ff) + _norm_params(f"{p}.norm3", d)
    if c.final_norm:
        layout += _norm_params("decoder.norm", d)
    if not c.tie_output:
        layout.append(("output_projection.weight", (c.tgt_vocab_size, d)))
    if c.output_bias:
        layout.append(("output_projection.bias", (c.tgt_vocab_size,)))
    return layout


def named_views(flat: np.ndarray, layout) -> Dict[str, np.ndarray]:
    """Name -> view of ``flat`` for each (name, shape) of ``layout``, back to back."""
    views: Dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in layout:
        n = int(np.prod(shape))
        views[name] = flat[offset:offset + n].reshape(shape)
        offset += n
    return views


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def require_model_folder(directory) -> None:
    """Raise a FileNotFoundError that says what is expected when ``directory`` is not a folder.

    cyformer reads local folders only: a Hugging Face Hub id or a lone ``.safetensors`` file
    gets an explanation of how to make a folder instead of a bare "not a directory".
    """
    path = os.fspath(directory)
    if os.path.isdir(path):
        return
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            raise FileNotFoundError(
                f"{path} is a weights file; cyformer expects the model folder that holds it with its "
                f"config.json (and tokenizer files): pass {os.path.dirname(path) or '.'} if they are there, "
                f"or build a folder with cyformer.convert (from_torch) and save_pretrained")
        raise FileNotFoundError(f"{path} is a file, not a model folder (config.json + model.safetensors)")
    if _HUB_ID.match(path):
        raise FileNotFoundError(
            f"{path} is not a local folder; it looks like a Hugging Face Hub id, and cyformer never "
            f"downloads: fetch the folder elsewhere (e.g. `huggingface-cli download {path} --local-dir DIR`) "
            f"and pass DIR, or convert a model with cyformer.convert")
    raise FileNotFoundError(f"model folder {path} does not exist")


# -- input validation --------------------------------------------------------------------
class Batch:
    """Token ids of a batch packed without padding: sequence b is ``ids[start[b]:start[b]+length[b]]``."""

    __slots__ = ("ids", "start", "length", "positions")

    def __init__(self, ids: np.ndarray, length: np.ndarray):
        self.ids = ids
        self.length = length
        self.start = np.zeros(len(length), dtype=np.int32)
        np.cumsum(length[:-1], out=self.start[1:])
        # position of every packed token inside its own sequence
        self.positions = (np.arange(len(ids), dtype=np.int32)
                          - np.repeat(self.start, length)).astype(np.int32)

    @property
    def size(self) -> int:
        return len(self.length)

    @property
    def max_length(self) -> int:
        return int(self.length.max())

    def unpack(self, packed: np.ndarray, copy: bool = True) -> np.ndarray:
        """[tokens, F] -> [B, T_max, F], zeros in the padding.

        Without padding this is a reshape; ``copy=False`` then returns a view of ``packed``
        (for arrays the caller owns, such as fresh logits).
        """
        if int(self.length.min()) == self.max_length:
            shaped = packed.reshape(self.size, self.max_length, packed.shape[1])
            return shaped.copy() if copy else shaped
        out = np.zeros((self.size, self.max_length, packed.shape[1]), dtype=packed.dtype)
        rows = np.repeat(np.arange(self.size), self.length)
        out[rows, self.positions] = packed
        return out


def _is_text(x) -> bool:
    return isinstance(x, (str, bytes))


def _as_token_container(seqs, name: str):
    """Lists and tuples as they are, a flat list of ints as a batch of one, array-likes as arrays."""
    if _is_text(seqs) or (isinstance(seqs, (list, tuple)) and seqs and _is_text(seqs[0])):
        raise TypeError(f"{name} must be token ids, not text; to translate text use cyformer.Translator "
                        f"(Translator.from_pretrained(model_dir).translate(texts)), or encode it with the "
                        f"model's tokenizer first")
    if isinstance(seqs, (list, tuple)):
        scalar = [isinstance(t, (numbers.Number, np.generic)) for t in seqs]
        if seqs and all(scalar):
            return [list(seqs)]   # one sentence, as np.array([5, 17, 2]) is (dtype checked below)
        if any(scalar):
            raise ValueError(f"{name} mixes token ids and sequences: pass one sentence as a flat list of "
                             f"ids, or a batch as a list of id lists")
        return seqs
    if isinstance(seqs, np.ndarray):
        return seqs
    if hasattr(seqs, "__array__") or hasattr(seqs, "__array_interface__"):   # torch tensors, ...
        if hasattr(seqs, "detach"):
            seqs = seqs.detach().cpu()
        return np.asarray(seqs)
    if hasattr(seqs, "__iter__") and not isinstance(seqs, (dict, set, frozenset)):   # range, generators
        return _as_token_container(list(seqs), name)
    return seqs


def make_batch(seqs: TokenBatch, lengths=None, *, vocab_size: int, max_len: int,
               name: str = "src") -> Batch:
    """Validate a batch: lists of id lists, or a padded [B, T] int array plus lengths.

    One rule for every container: a flat sequence of ids (``[5, 17, 2]``,
    ``np.array([5, 17, 2])``, a 1-d torch tensor) is one sentence; a sequence of sequences
    is a batch. Any array-like of integers (torch tensors included) is taken as ids; text
    gets a TypeError pointing to ``Translator``.
    """
    seqs = _as_token_container(seqs, name)
    if isinstance(seqs, np.ndarray) or (lengths is not None and not isinstance(seqs, (list, tuple))):
        arr = np.asarray(seqs)
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
        if arr.ndim == 1 and lengths is None:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f"{name} must be [batch, length], got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        if lengths is None:
            length = np.full(arr.shape[0], arr.shape[1], dtype=np.int64)
        else:
            length = np.asarray(lengths)
            if length.dtype == np.bool_ or not np.issubdtype(length.dtype, np.integer):
                raise TypeError(f"{name} lengths must be integers, got dtype {length.dtype}")
            if length.shape != (arr.shape[0],):
                raise ValueError(f"{name} lengths must have shape ({arr.shape[0]},), got {length.shape}")
            if (length > arr.shape[1]).any():
                raise ValueError(f"a {name} length exceeds the padded width {arr.shape[1]}")
        mask = np.arange(arr.shape[1])[None, :] < length[:, None]
        ids = arr[mask]
    else:
        if not isinstance(seqs, (list, tuple)):
            raise TypeError(f"{name} must be a list of token-id lists or an int array, "
                            f"not {type(seqs).__name__}")
        if len(seqs) == 0:
            raise ValueError(f"{name} is an empty batch")
        parts = []
        for b, s in enumerate(seqs):
            a = np.asarray(s)
            if a.ndim != 1:
                raise ValueError(f"{name}[{b}] must be a flat list of token ids, got shape {a.shape}")
            if a.size and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer)):
                raise TypeError(f"{name}[{b}] must hold integer token ids, got dtype {a.dtype}")
            parts.append(a.astype(np.int64, copy=False))
        length = np.array([len(p) for p in parts], dtype=np.int64)
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    empty = np.flatnonzero(length <= 0)
    if empty.size:
        raise ValueError(f"{name}[{empty[0]}] is empty (length {length[empty[0]]}); every sequence "
                         f"needs at least one token")
    long = np.flatnonzero(length > max_len)
    if long.size:
        raise ValueError(f"{name}[{long[0]}] has {length[long[0]]} tokens, more than max_len={max_len}")
    if ids.size:
        lo, hi = ids.min(), ids.max()
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    return Batch(ids.astype(np.int32), length.astype(np.int32))


# -- workspace -----------------------------------------------------------------------------
class Workspace:
    """Activation buffers reused across calls of the same or smaller shape (one per thread)."""

    _MAX_VIEWS = 512  # shaped views kept for reuse; beyond that the cache starts over

    def __init__(self) -> None:
        self._buffers: Dict[str, np.ndarray] = {}
        # (name, shape) -> view: a decoding step asks for ~50 buffers, and slicing and
        # reshaping a new view each time cost as much as a small kernel call
        self._shaped: Dict[tuple, np.ndarray] = {}

    def get(self, name: str, *shape: int) -> np.ndarray:
        view = self._shaped.get((name, shape))
        if view is not None:
            return view
        n = 1
        for extent in shape:
            n *= extent
        buf = self._buffers.get(name)
        if buf is None or buf.size < n:
            buf = np.empty(max(n, 1), dtype=np.float32)
            self._buffers[name] = buf
            self._shaped = {k: v for k, v in self._shaped.items() if k[0] != name}
        if len(self._shaped) >= self._MAX_VIEWS:
            self._shaped.clear()
        view = self._shaped[(name, shape)] = buf[:n].reshape(shape)
        return view

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


# -- the model ---------------------------------------------------------------------------------
class Transformer:
    """Encoder-decoder Transformer over one contiguous float32 parameter buffer.

    ``Transformer(config, seed=0)`` initialises as PyTorch's ``nn.Transformer`` does
    (Xavier-uniform matrices, zero attention biases, unit LayerNorm) with embeddings
    drawn from N(0, d_model^-1/2). ``params`` is the flat buffer; ``parameters()`` maps
    names to views into it.
    """

    def __init__(self, config: TransformerConfig, seed: Optional[int] = 0, *,
                 params: Optional[np.ndarray] = None):
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, not {type(config).__name__}")
        config.validate()
        self.config = config
        self.layout = parameter_layout(config)
        total = sum(int(np.prod(s)) for _, s in self.layout)
        if params is None:
            self.params = np.zeros(total, dtype=np.float32)
        else:
            if params.dtype != np.float32 or params.ndim != 1 or params.size != total:
                raise ValueError(f"params must be float32 [{total}], got {params.dtype} {params.shape}")
            self.params = params
        self._rebind_views()
        if params is None:
            self.init_parameters(seed)
        c = config
        self._pos_table = None
        if c.positional == "sinusoidal":
            self._pos_table = sinusoidal_table(c.max_len, c.d_model, c.sinusoidal_layout)
        self._act = activation_code(c.activation)
        self._embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self._local = threading.local()

    def _rebind_views(self) -> None:
        """Name -> view of ``self.params`` (again after the buffer is replaced)."""
        self._views = named_views(self.params, self.layout)

    @classmethod
    def empty(cls, config: TransformerConfig) -> "Transformer":
        """A model with zeroed parameters, to be filled by a loader or converter."""
        total = sum(int(np.prod(s)) for _, s in parameter_layout(config))
        return cls(config, params=np.zeros(total, dtype=np.float32))

    # -- parameters -----------------------------------------------------------------------
    def parameters(self) -> Dict[str, np.ndarray]:
        """Name -> view into ``params`` (writes go to the model)."""
        return dict(self._views)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._views[name]

    @property
    def num_parameters(self) -> int:
        return int(self.params.size)

    def init_parameters(self, seed: Optional[int] = 0) -> None:
        rng = np.random.default_rng(seed)
        d = self.config.d_model
        for name, shape in self.layout:
            v = self._views[name]
            if "embed_tokens" in name or name == "output_projection.weight":
                v[...] = rng.normal(0.0, d ** -0.5, size=shape)
            elif "embed_positions" in name:
                v[...] = rng.normal(0.0, 0.02, size=shape)
            elif "norm" in name.rsplit(".", 2)[-2]:
                v[...] = 1.0 if name.endswith("weight") else 0.0
            elif len(shape) == 2:
                bound = math.sqrt(6.0 / (shape[0] + shape[1]))
                v[...] = rng.uniform(-bound, bound, size=shape)
            else:
                v[...] = 0.0

    def state_dict(self) -> Dict[str, np.ndarray]:
        return self.parameters()

    def load_state_dict(self, tensors: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy named tensors into the buffer, reporting missing, unexpected and mis-shaped names."""
        missing = [n for n, _ in self.layout if n not in tensors]
        unexpected = sorted(set(tensors) - set(self._views))
        mismatched = [f"{n}: expected {list(self._views[n].shape)}, got {list(np.shape(tensors[n]))}"
                      for n, _ in self.layout if n in tensors and np.shape(tensors[n]) != self._views[n].shape]
        problems = []
        if mismatched:
            problems.append("mis-shaped: " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        if problems:
            raise CheckpointError("weights do not match the model config — " + " | ".join(problems))
        for name, value in tensors.items():
            if name in self._views:
                arr = np.asarray(value)
                if not np.issubdtype(arr.dtype, np.floating):
                    raise CheckpointError(f"{name}: expected floating-point weights, got {arr.dtype}")
                self._views[name][...] = arr

    # -- weight names the forward pass reads ------------------------------------------------------
    def _src_embedding(self) -> np.ndarray:
        return self._views["encoder.embed_tokens.weight"]

    def _tgt_embedding(self) -> np.ndarray:
        return self._views["encoder.embed_tokens.weight" if self.config.share_embeddings
                           else "decoder.embed_tokens.weight"]

    def _output_weight(self) -> np.ndarray:
        if "output_projection.weight" in self._views:
            return self._views["output_projection.weight"]
        return self._tgt_embedding()

    def _workspace(self) -> Workspace:
        ws = getattr(self._local, "workspace", None)
        if ws is None:
            ws = self._local.workspace = Workspace()
        return ws

    # -- forward pieces ------------------------------------------------------------------------
    def _embed(self, batch: Batch, side: str, out: np.ndarray, nt: int) -> None:
        table = self._src_embedding() if side == "encoder" else self._tgt_embedding()
        pos = (self._views[f"{side}.embed_positions.weight"] if self.config.positional == "learned"
               else self._pos_table)
        embedding_forward(batch.ids, batch.positions, table, pos, self._embed_scale, out, nt)

    def _self_attention(self, prefix: str, y: np.ndarray, batch: Batch, causal: bool,
                        ws: Workspace, nt: int) -> np.ndarray:
        """Multi-head self-attention of normalised input y [N, d] -> context [N, d] (before W_O)."""
        v = self._views
        n, d = y.shape
        qkv = ws.get("qkv", n, 3 * d)
        linear_forward(y, v[f"{prefix}.in_proj_weight"], v[f"{prefix}.in_proj_bias"], qkv, n_threads=nt)
        ctx = ws.get("ctx", n, d)
        attention_forward(qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:], ctx,
                          batch.start, batch.length, batch.start, batch.length,
                          self.config.n_heads, causal=causal, n_threads=nt)
        return ctx

    def _cross_attention(self, prefix: str, y: np.ndarray, batch: Batch, memory_kv: np.ndarray,
                         src: Batch, ws: Workspace, nt: int) -> np.ndarray:
        v = self._views
        n, d = y.shape
        q = ws.get("q", n, d)
        linear_forward(y, v[f"{prefix}.in_proj_weight"][:d], v[f"{prefix}.in_proj_bias"][:d], q,
                       n_threads=nt)
        ctx = ws.get("ctx", n, d)
        attention_forward(q, memory_kv[:, :d], memory_kv[:, d:], ctx,
                          batch.start, batch.length, src.start, src.length,
                          self.config.n_heads, n_threads=nt)
        return ctx

    def _sublayer_out(self, prefix: str, ctx: np.ndarray, x: np.ndarray, norm: str,
                      ws: Workspace, nt: int) -> None:
        """Residual connection around a sublayer whose last projection is ``prefix``.

        post-LN: x = LN(x + ctx W^T + b); pre-LN: x = x + ctx W^T + b (accumulated by the GEMM).
        """
        v = self._views
        if self.config.norm_first:
            linear_forward(ctx, v[f"{prefix}.weight"], v[f"{prefix}.bias"], x, accumulate=True, n_threads=nt)
        else:
            o = ws.get("sub", *x.shape)
            # The projection's bias is added inside the LayerNorm pass.
            linear_forward(ctx, v[f"{prefix}.weight"], None, o, n_threads=nt)
            layer_norm_forward(x, o, v[f"{norm}.weight"], v[f"{norm}.bias"], x,
                               self.config.layer_norm_eps, n_threads=nt, bias=v[f"{prefix}.bias"])

    def _pre_norm(self, norm: str, x: np.ndarray, ws: Workspace, nt: int) -> np.ndarray:
        """Input of a sublayer: LN(x) for pre-LN, x itself for post-LN."""
        if not self.config.norm_first:
            return x
        v = self._views
        y = ws.get("normed", *x.shape)
        layer_norm_forward(x, None, v[f"{norm}.weight"], v[f"{norm}.bias"], y,
                           self.config.layer_norm_eps, n_threads=nt)
        return y

    def _feed_forward(self, prefix: str, x: np.ndarray, norm_in: str, norm_out: str,
                      ws: Workspace, nt: int) -> None:
        v = self._views
        y = self._pre_norm(norm_in, x, ws, nt)
        h = ws.get("ffn", x.shape[0], self.config.d_ff)
        linear_forward(y, v[f"{prefix}.linear1.weight"], None, h, n_threads=nt)
        bias_act_forward(h, v[f"{prefix}.linear1.bias"], self._act, nt)
        self._sublayer_out(f"{prefix}.linear2", h, x, norm_out, ws, nt)

    def _final_norm(self, side: str, x: np.ndarray, nt: int) -> None:
        if self.config.final_norm:
            v = self._views
            layer_norm_forward(x, None, v[f"{side}.norm.weight"], v[f"{side}.norm.bias"], x,
                               self.config.layer_norm_eps, n_threads=nt)

    def _encode_packed(self, src: Batch, ws: Workspace, nt: int) -> np.ndarray:
        """Encoder stack over packed tokens -> memory [N_src, d] (a workspace buffer)."""
        x = ws.get("memory", len(src.ids), self.config.d_model)
        self._embed(src, "encoder", x, nt)
        for i in range(self.config.n_encoder_layers):
            p = f"encoder.layers.{i}"
            y = self._pre_norm(f"{p}.norm1", x, ws, nt)
            ctx = self._self_attention(f"{p}.self_attn", y, src, False, ws, nt)
            self._sublayer_out(f"{p}.self_attn.out_proj", ctx, x, f"{p}.norm1", ws, nt)
            self._feed_forward(p, x, f"{p}.norm2", f"{p}.norm2", ws, nt)
        self._final_norm("encoder", x, nt)
        return x

    def _memory_kv(self, layer: int, memory: np.ndarray, ws: Optional[Workspace], nt: int) -> np.ndarray:
        """Cross-attention keys and values of the encoder memory: [N_src, 2d].

        With ``ws=None`` the result is a fresh array the caller keeps (a decoding state).
        """
        v = self._views
        d = self.config.d_model
        p = f"decoder.layers.{layer}.multihead_attn"
        if ws is None:
            kv = np.empty((memory.shape[0], 2 * d), dtype=np.float32)
        else:
            kv = ws.get(f"memory_kv{layer}", memory.shape[0], 2 * d)
        linear_forward(memory, v[f"{p}.in_proj_weight"][d:], v[f"{p}.in_proj_bias"][d:], kv, n_threads=nt)
        return kv

    def _decode_packed(self, tgt: Batch, memory: np.ndarray, src: Batch, ws: Workspace,
                       nt: int) -> np.ndarray:
        """Decoder stack (teacher forcing, causal) -> hidden states [N_tgt, d]."""
        x = ws.get("dec_x", len(tgt.ids), self.config.d_model)
        self._embed(tgt, "decoder", x, nt)
        for i in range(self.config.n_decoder_layers):
            p = f"decoder.layers.{i}"
            y = self._pre_norm(f"{p}.norm1", x, ws, nt)
            ctx = self._self_attention(f"{p}.self_attn", y, tgt, True, ws, nt)
            self._sublayer_out(f"{p}.self_attn.out_proj", ctx, x, f"{p}.norm1", ws, nt)
            y = self._pre_norm(f"{p}.norm2", x, ws, nt)
            kv = self._memory_kv(i, memory, ws, nt)
            ctx = self._cross_attention(f"{p}.multihead_attn", y, tgt, kv, src, ws, nt)
            self._sublayer_out(f"{p}.multihead_attn.out_proj", ctx, x, f"{p}.norm2", ws, nt)
            self._feed_forward(p, x, f"{p}.norm3", f"{p}.norm3", ws, nt)
        self._final_norm("decoder", x, nt)
        return x

    def _logits_packed(self, hidden: np.ndarray, nt: int) -> np.ndarray:
        out = np.empty((hidden.shape[0], self.config.tgt_vocab_size), dtype=np.float32)
        linear_forward(hidden, self._output_weight(), self._views.get("output_projection.bias"),
                       out, n_threads=nt)
        return out

    # -- incremental decoding ---------------------------------------------------------------------
    def start_decoding(self, src: TokenBatch, src_lengths=None, rows_per_source: int = 1,
                       max_steps: int = 64) -> "DecoderState":
        """Encode ``src`` once and return a decoding state of ``B * rows_per_source`` rows.

        Row ``r`` decodes source ``r // rows_per_source`` (beams of one source are adjacent,
        the ``[batch * beam]`` layout). The cross-attention keys/values of the memory are
        computed here, once; ``decode_step`` then costs O(current length).
        """
        batch = self._src_batch(src, src_lengths)
        nt = threads.get_num_threads()
        with threads.blas_single_threaded():
            memory = self._encode_packed(batch, self._workspace(), nt)
            memory_kv = [self._memory_kv(i, memory, None, nt) for i in range(self.config.n_decoder_layers)]
        rows_src = np.repeat(np.arange(batch.size, dtype=np.int32), rows_per_source)
        return DecoderState(self.config, memory_kv, batch, rows_src, max_steps)

    def decode_step(self, state: "DecoderState", tokens, attention: Optional[np.ndarray] = None) -> np.ndarray:
        """Feed one token per row at position ``state.length``; return logits [R, tgt_vocab].

        The returned array is a per-thread buffer, overwritten by the next step. With
        ``attention`` ([R, n_heads, S_max] float32), the last decoder layer's
        cross-attention weights of this step are written into it.
        """
        c = self.config
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        rows = state.rows
        if tokens.shape != (rows,):
            raise ValueError(f"decode_step needs one token per row ({rows}), got shape {tokens.shape}")
        if rows and (tokens.min() < 0 or tokens.max() >= c.tgt_vocab_size):
            raise ValueError(f"decoder token outside the vocabulary [0, {c.tgt_vocab_size})")
        t = state.length
        if t >= c.max_len:
            raise ValueError(f"cannot decode past max_len={c.max_len} positions")
        state.reserve(t + 1)
        nt = threads.get_num_threads()
        ws = self._workspace()
        v = self._views
        d = c.d_model
        with threads.blas_single_threaded():
            x = ws.get("step_x", rows, d)
            pos = (v["decoder.embed_positions.weight"] if c.positional == "learned" else self._pos_table)
            embedding_forward(tokens, np.full(rows, t, dtype=np.int32), self._tgt_embedding(), pos,
                              self._embed_scale, x, nt)
            # Attention runs per (row, head): the caches are head-major, so one head's keys are
            # contiguous, and the kernel sees rows * n_heads sequences of one head each.
            h, d_k = c.n_heads, d // c.n_heads
            n_seq = rows * h
            one = state.ones[:n_seq]
            seq = state.arange[:n_seq]
            self_start = state.self_start[:n_seq]
            k_len = np.full(n_seq, t + 1, dtype=np.int32)
            for i in range(c.n_decoder_layers):
                p = f"decoder.layers.{i}"
                y = self._pre_norm(f"{p}.norm1", x, ws, nt)
                qkv = ws.get("step_qkv", rows, 3 * d)
                linear_forward(y, v[f"{p}.self_attn.in_proj_weight"], v[f"{p}.self_attn.in_proj_bias"], qkv,
                               n_threads=nt)
                keys, values = state.keys[i], state.values[i]
                keys[:rows, :, t] = qkv[:, d:2 * d].reshape(rows, h, d_k)
                values[:rows, :, t] = qkv[:, 2 * d:].reshape(rows, h, d_k)
                q = ws.get("step_q", rows, d)
                np.copyto(q, qkv[:, :d])
                ctx = ws.get("step_ctx", rows, d)
                attention_forward(q.reshape(n_seq, d_k), keys.reshape(-1, d_k), values.reshape(-1, d_k),
                                  ctx.reshape(n_seq, d_k), seq, one, self_start, k_len, 1, n_threads=nt)
                self._sublayer_out(f"{p}.self_attn.out_proj", ctx, x, f"{p}.norm1", ws, nt)
                y = self._pre_norm(f"{p}.norm2", x, ws, nt)
                linear_forward(y, v[f"{p}.multihead_attn.in_proj_weight"][:d],
                               v[f"{p}.multihead_attn.in_proj_bias"][:d], q, n_threads=nt)
                probs = None
                if attention is not None and i == c.n_decoder_layers - 1:
                    probs = attention.reshape(n_seq, 1, 1, -1)
                attention_forward(q.reshape(n_seq, d_k), state.cross_keys[i], state.cross_values[i],
                                  ctx.reshape(n_seq, d_k), seq, one, state.cross_start, state.cross_len, 1,
                                  probs=probs, n_threads=nt)
                self._sublayer_out(f"{p}.multihead_attn.out_proj", ctx, x, f"{p}.norm2", ws, nt)
                self._feed_forward(p, x, f"{p}.norm3", f"{p}.norm3", ws, nt)
            self._final_norm("decoder", x, nt)
            logits = ws.get("step_logits", rows, c.tgt_vocab_size)
            linear_forward(x, self._output_weight(), v.get("output_projection.bias"), logits, n_threads=nt)
        state.length = t + 1
        return logits.view()  # the workspace keeps its own view: a caller may reshape this one

    # -- public API --------------------------------------------------------------------------------
    def _src_batch(self, src, lengths) -> Batch:
        return make_batch(src, lengths, vocab_size=self.config.src_vocab_size,
                          max_len=self.config.max_len, name="src")

    def _tgt_batch(self, tgt, lengths) -> Batch:
        return make_batch(tgt, lengths, vocab_size=self.config.tgt_vocab_size,
                          max_len=self.config.max_len, name="tgt_in")

    def encode(self, src: TokenBatch, src_lengths=None) -> np.ndarray:
        """Encoder output ``memory`` [B, S, d_model] (zeros past each source's length)."""
        batch = self._src_batch(src, src_lengths)
        nt = threads.get_num_threads()
        with threads.blas_single_threaded():
            memory = self._encode_packed(batch, self._workspace(), nt)
            return batch.unpack(memory)

    def forward(self, src: TokenBatch, tgt_in: TokenBatch, src_lengths=None,
                tgt_lengths=None) -> np.ndarray:
        """Teacher-forced logits [B, T, tgt_vocab_size] (zeros past each target's length).

        ``tgt_in`` is the decoder input (start token + target shifted right).
        """
        src_b = self._src_batch(src, src_lengths)
        tgt_b = self._tgt_batch(tgt_in, tgt_lengths)
        if src_b.size != tgt_b.size:
            raise ValueError(f"src has {src_b.size} sequences but tgt_in has {tgt_b.size}")
        nt = threads.get_num_threads()
        ws = self._workspace()
        with threads.blas_single_threaded():
            memory = self._encode_packed(src_b, ws, nt)
            hidden = self._decode_packed(tgt_b, memory, src_b, ws, nt)
            return tgt_b.unpack(self._logits_packed(hidden, nt), copy=False)

    __call__ = forward

    def generate(self, src: TokenBatch, src_lengths=None, **options):
        """Decode every source; returns one ``GenerationResult`` per source (see ``cyformer.decoding``).

        Options (CTranslate2's names; Hugging Face's accepted where they mean the same, e.g.
        ``num_beams``, ``max_new_tokens``, ``num_return_sequences``, ``do_sample``/``top_k``/
        ``top_p``/``temperature``, ``bad_words_ids``):

        - ``beam_size=1``: greedy search, or sampling when ``sampling_topk != 1`` or
          ``sampling_topp < 1`` (with ``sampling_temperature``, ``seed``);
        - ``max_length`` counts generated tokens, EOS included (default: 256, or the model's
          ``max_len`` when smaller), ``min_length`` likewise; ``length_penalty``;
          ``num_hypotheses`` (n-best, <= ``beam_size``);
        - ``target_prefix``: per source a list of target ids (or None) decoded first;
        - ``repetition_penalty``, ``no_repeat_ngram_size``, ``suppress_sequences``,
          ``disable_unk`` (with ``unk_id``, default the config's);
        - ``return_alternatives`` (with ``min_alternative_expansion_prob``);
        - ``max_input_length`` (default 1024; 0 or None: sources are not cut);
        - ``return_scores``, ``return_attention``, ``attention_per_head``.

        An unknown option is a TypeError; a bad value a ValueError or TypeError.
        """
        from .decoding import generate
        return generate(self, src, src_lengths, **options)

    def generate_tokens(self, src, src_lengths=None, **options):
        """Decode one source token by token: an iterator of ``GenerationStepResult``
        (``step``, ``token_id``, ``log_prob``, ``is_last``), as CTranslate2's ``generate_tokens``.

        Greedy search or sampling (``beam_size=1``), with ``generate``'s other options;
        ``target_prefix`` may be a flat list of ids. The prefix is not streamed; EOS is, as
        the last token. Stopping early (``break``) leaves the model usable.
        """
        from .decoding import generate_tokens
        return generate_tokens(self, src, src_lengths, **options)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str, format: str = "cyformer") -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory``, each atomically."""
        if format != "cyformer":
            from .convert import export_checkpoint
            return export_checkpoint(self, directory, format)
        import zlib

        os.makedirs(directory, exist_ok=True)
        data = memoryview(np.ascontiguousarray(self.params)).cast("B")
        # crc32 of the data section: from_pretrained(verify=True) and verify_checkpoint check it
        head = safetensors_header([(n, np.float32, s) for n, s in self.layout],
                                  {"format": "cyformer", "config": self.config.to_json(),
                                   "crc32": str(zlib.crc32(data))})
        # The data section is exactly the flat buffer: one write, and one mapping on load.
        atomic_write_bytes(os.path.join(directory, WEIGHTS_NAME), [head, data])
        self.config.save(os.path.join(directory, CONFIG_NAME))

    @classmethod
    def from_pretrained(cls, directory: str, mmap: bool = True, verify: bool = False) -> "Transformer":
        """Load a cyformer checkpoint or a Hugging Face MarianMT folder.

        The weights are memory-mapped (copy-on-write) when ``mmap``: nothing is copied, pages
        are read as the model touches them. Sizes, shapes and dtypes are always checked;
        ``verify=True`` also checks the data against the crc32 that ``save_pretrained`` stored
        (this reads the whole file once), catching bit rot and partial overwrites.
        """
        from .io import read_json
        cfg_path = os.path.join(directory, CONFIG_NAME)
        require_model_folder(directory)
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
        raw = read_json(cfg_path, expect=dict)   # bounded size and nesting; CheckpointError names the file
        model_type = raw.get("model_type") if isinstance(raw, dict) else None
        if model_type == "marian":
            from .convert.marian import load_marian
            return load_marian(directory)
        if model_type not in (None, "cyformer"):
            raise ValueError(f"{cfg_path}: model_type {model_type!r} is not supported "
                             f"(cyformer and marian are)")
        config = TransformerConfig.from_dict(raw)
        path = os.path.join(directory, WEIGHTS_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
        layout = parameter_layout(config)
        if verify:
            verify_checkpoint(path)
        flat = load_flat_float32(path, layout, mmap=mmap)
        if flat is not None:  # our own layout: the mapped file is the parameter buffer
            return cls(config, params=flat)
        model = cls.empty(config)
        model.load_state_dict(load_safetensors(path, mmap=mmap))
        return model



def _heads_major(part: np.ndarray, src: Batch, n_heads: int) -> np.ndarray:
    """[N_src, d] keys or values of packed sources -> [N_src * n_heads, d_k], each source's
    block [n_heads, len, d_k] (one head's rows contiguous)."""
    n, d = part.shape
    d_k = d // n_heads
    out = np.empty((n * n_heads, d_k), dtype=np.float32)
    for start, length in zip(src.start.tolist(), src.length.tolist()):
        block = out[start * n_heads:(start + length) * n_heads].reshape(n_heads, length, d_k)
        block[:] = part[start:start + length].reshape(length, n_heads, d_k).transpose(1, 0, 2)
    return out


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

    def __init__(self, config: TransformerConfig, memory_kv: List[np.ndarray], src: Batch,
                 rows_src: np.ndarray, max_steps: int):
        self.config = config
        h, d = config.n_heads, config.d_model
        d_k = d // h
        self.cross_keys = [_heads_major(kv[:, :d], src, h) for kv in memory_kv]
        self.cross_values = [_heads_major(kv[:, d:], src, h) for kv in memory_kv]
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
        self.keys: List[np.ndarray] = []
        self.values: List[np.ndarray] = []
        self._d_k = d_k
        self.reserve(max(1, min(max_steps, config.max_len)))
        self._lanes()

    def _lanes(self) -> None:
        h = self.config.n_heads
        self.cross_start = (self.src_start[:, None] * h
                            + np.arange(h, dtype=np.int32)[None, :] * self.src_len[:, None]).ravel()
        self.cross_len = np.repeat(self.src_len, h).astype(np.int32)

    @property
    def self_start(self) -> np.ndarray:
        return self.arange * self.capacity

    def reserve(self, steps: int) -> None:
        """Make room for ``steps`` positions (grows by doubling, keeping what is cached)."""
        if steps <= self.capacity:
            return
        capacity = min(max(steps, 2 * self.capacity), self.config.max_len)
        rows = max(self.rows, 1)
        for cache in (self.keys, self.values):
            for i in range(self.config.n_decoder_layers):
                grown = np.empty((rows, self.config.n_heads, capacity, self._d_k), dtype=np.float32)
                if i < len(cache):
                    grown[:, :, :self.length] = cache[i][:rows, :, :self.length]
                    cache[i] = grown
                else:
                    cache.append(grown)
        self.capacity = capacity

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
