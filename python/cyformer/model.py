"""The encoder-decoder Transformer: one flat parameter buffer, named views, a composition of
``cyformer.layers``.

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
import warnings
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import threads
from ._engine import quant
from ._engine.quant import quantize_rows, to_bfloat16
from .config import TransformerConfig
from .convert.registry import loader_for, register_loader
from .io import (CheckpointError, atomic_write_bytes, file_mapped, huge_pages, load_flat_float32, load_safetensors,
                 read_safetensors_header, release_pages, safetensors_header, safetensors_metadata,
                 verify_checkpoint)
from .layers.projection import FeatureProjection
from .layers import (CachePool, Decoder, DecoderState, Embeddings, EmbeddingsRecord, Encoder, Layer, Linear, StackRecord,
                     TrainContext, WeightSpec, derive_layout, named_views)
from .layers.linear import StoredWeight, resolve_compute_type

# safetensors dtype codes of the stored compute types; an int8 matrix NAME has its per-row
# scales in NAME + SCALE_SUFFIX (float32 [rows])
STORED_CODES = {"int8": "I8", "bfloat16": "BF16"}
SCALE_SUFFIX = "_scale"

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

TokenBatch = Union[Sequence[Sequence[int]], np.ndarray]


# rows of float32 read (or converted) per block when a matrix is copied from a file or quantized:
# one block of float32 pages is resident at a time
_BLOCK_BYTES = 1 << 20


def _blocks(parts, k: int, align: int = 1):
    # (first row in the matrix, block of rows) over row blocks [(first row, array)]; blocks
    # of a multiple of ``align`` rows
    step = max(align, _BLOCK_BYTES // max(1, 4 * k) // align * align)
    for r0, a in parts:
        for lo in range(0, len(a), step):
            yield r0 + lo, a[lo:lo + step]


def _parts_shape(value) -> Tuple[int, ...]:
    # the shape of an array, or of the matrix that row blocks [(first row, array)] make up
    if not isinstance(value, list):
        return tuple(np.shape(value))
    rows = max((r0 + len(a) for r0, a in value), default=0)
    tail = {tuple(np.shape(a)[1:]) for _, a in value}
    covered = sum(len(a) for _, a in value)
    if len(tail) != 1 or covered != rows:
        return (-1,)   # blocks that do not tile a matrix: reported as mis-shaped
    return (rows, *tail.pop())


def copy_blocks(view: np.ndarray, parts, *, release: bool) -> None:
    """``view`` (a matrix, or any tensor as one part) filled from row blocks [(first row, array)],
    a block of rows at a time; ``release``: the arrays are private file maps whose pages are
    handed back as they are read (so copying a file costs one block, not the file, of RSS)."""
    if view.ndim < 2:   # a bias or a norm: small, in one piece per part
        for r0, a in parts:
            view[r0:r0 + len(a)] = a
            if release:
                release_pages(a)
        return
    k = int(np.prod(view.shape[1:]))
    for r, blk in _blocks(parts, k):
        view[r:r + len(blk)] = blk
        if release:
            release_pages(blk)


def quantize_blocks(shape, parts, compute_type: str, *, release: bool) -> StoredWeight:
    """The ``compute_type`` form (``StoredWeight``) of the float32 matrix [N, K] that row blocks
    [(first row, array)] make up, converted a block of rows at a time (the formats are per row,
    so this is the whole matrix's conversion, bit for bit); ``release``: each block's pages are
    handed back once converted (a private file map rereads the file, an anonymous buffer zeros)."""
    n, k = shape
    blk16 = quant.INT8_PACK_ROWS
    if compute_type == "int8" and quant.int8_packs() and all(r0 % blk16 == 0 for r0, _ in parts) \
            and all(len(a) % blk16 == 0 for _, a in parts[:-1]):
        # straight into the int8 GEMM's packed layout, a block of rows at a time (no row-major
        # copy of the whole matrix on the way)
        packed, scale, comp = quant.empty_packed_int8(n, k), np.empty(n, np.float32), np.empty(n, np.int32)
        for r, blk in _blocks(parts, k, blk16):
            q, scale[r:r + len(blk)] = quantize_rows(np.ascontiguousarray(blk, np.float32))
            comp[r:r + len(blk)] = quant.int8_compensation(q)
            quant.pack_int8(q, out=packed, row0=r)
            if release:
                release_pages(blk)
        return StoredWeight("int8", None, scale, comp, packed=packed, shape=(n, k))
    if compute_type == "int8":
        data, scale = np.empty((n, k), np.int8), np.empty(n, np.float32)
    elif compute_type == "bfloat16":
        data, scale = np.empty((n, k), np.uint16), None
    else:
        raise ValueError(f"no stored form for {compute_type!r}")
    for r, blk in _blocks(parts, k):
        rows = np.ascontiguousarray(blk, np.float32)
        if scale is not None:
            data[r:r + len(blk)], scale[r:r + len(blk)] = quantize_rows(rows)
        else:
            data[r:r + len(blk)] = to_bfloat16(rows)
        if release:
            release_pages(blk)
    # int8: in the layout the int8 body reads (packed: one copy, this array then freed)
    return StoredWeight.int8(data, scale) if scale is not None else StoredWeight(compute_type, data)


# -- composition and parameter layout ------------------------------------------------------
def _compose(config: TransformerConfig):
    """The layers of a config: (src_embed, tgt_embed, encoder, decoder, generator)."""
    c = config
    d = c.d_model
    scale = math.sqrt(d) if c.scale_embedding else 1.0
    common = dict(max_len=c.max_len, positional=c.positional, sinusoidal_layout=c.sinusoidal_layout,
                  scale=scale, dropout=c.dropout, pad_id=c.pad_id)
    if c.n_src_features:   # vector sets (speech frames, ...): a learned projection plus positions
        src_embed = FeatureProjection("encoder.input_proj", c.n_src_features, d, max_len=c.max_len,
                                      positional=c.positional, sinusoidal_layout=c.sinusoidal_layout,
                                      dropout=c.dropout)
    else:
        src_embed = Embeddings("encoder.embed_tokens.weight", c.src_vocab_size, d,
                               position_name="encoder.embed_positions.weight", **common)
    tgt_tokens = "encoder.embed_tokens.weight" if c.share_embeddings else "decoder.embed_tokens.weight"
    tgt_embed = Embeddings(tgt_tokens, c.tgt_vocab_size, d, position_name="decoder.embed_positions.weight",
                           declare_tokens=not c.share_embeddings, **common)
    generator = Linear(tgt_tokens if c.tie_output else "output_projection.weight",
                       "output_projection.bias" if c.output_bias else None, c.tgt_vocab_size, d,
                       init="embedding", declare_weight=not c.tie_output)
    return src_embed, tgt_embed, Encoder(c), Decoder(c), generator


def _weight_specs(src_embed, tgt_embed, encoder, decoder, generator) -> List[WeightSpec]:
    # Buffer order (checkpoints written before the layer library load by the flat path):
    # token tables, position tables, encoder layers, decoder layers, output projection.
    if isinstance(src_embed, FeatureProjection):
        return derive_layout([*src_embed.weights(), *tgt_embed.token_weights(), *tgt_embed.position_weights(),
                              *encoder.weights(), *decoder.weights(), *generator.weights()])
    return derive_layout([*src_embed.token_weights(), *tgt_embed.token_weights(),
                          *src_embed.position_weights(), *tgt_embed.position_weights(),
                          *encoder.weights(), *decoder.weights(), *generator.weights()])


def parameter_layout(config: TransformerConfig) -> List[Tuple[str, Tuple[int, ...]]]:
    """Every parameter's name and shape, in buffer order (names follow ``nn.Transformer``)."""
    return [(s.name, s.shape) for s in _weight_specs(*_compose(config))]


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
    """Token ids of a batch packed without padding: sequence b is ``ids[start[b]:start[b]+length[b]]``.

    ``mask``: optional uint8 [B, T, T], which positions of sequence b each of its positions may
    attend to in self-attention (graph structure; ``features.adjacency_mask`` builds it).
    """

    __slots__ = ("ids", "start", "length", "positions", "mask")

    def __init__(self, ids: np.ndarray, length: np.ndarray, mask: Optional[np.ndarray] = None):
        self.ids = ids
        self.length = length
        self.mask = mask
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


def _padded_lengths(lengths, batch: int, width: int, name: str) -> np.ndarray:
    """The lengths of a padded [batch, width, ...] array: all ``width`` when None, else checked."""
    if lengths is None:
        return np.full(batch, width, dtype=np.int64)
    length = np.asarray(lengths)
    if length.dtype == np.bool_ or not np.issubdtype(length.dtype, np.integer):
        raise TypeError(f"{name} lengths must be integers, got dtype {length.dtype}")
    if length.shape != (batch,):
        raise ValueError(f"{name} lengths must have shape ({batch},), got {length.shape}")
    if (length > width).any():
        raise ValueError(f"a {name} length exceeds the padded width {width}")
    return length


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
        length = _padded_lengths(lengths, arr.shape[0], arr.shape[1], name)
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


class FeatureBatch(Batch):
    """Float feature vectors packed without padding: ``features`` [N, F] float32, sequence b is
    rows ``start[b]:start[b]+length[b]``; ``mask`` as ``Batch``. ``ids`` is a zero placeholder
    [N] so code that counts rows (``len(batch.ids)``) works; nothing looks tokens up in it."""

    __slots__ = ("features",)

    def __init__(self, features: np.ndarray, length: np.ndarray, mask: Optional[np.ndarray] = None):
        super().__init__(np.zeros(len(features), dtype=np.int32), length, mask)
        self.features = features


def _as_float_rows(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):   # torch tensors
        a = a.detach().cpu()
    a = np.asarray(a)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a


def make_feature_batch(features, lengths=None, *, n_features: int, max_len: int, mask=None,
                       name: str = "features") -> FeatureBatch:
    """Validate a batch of vector sets: a list of [T_i, F] arrays, or a padded [B, T, F] array
    with ``lengths`` (all T when omitted; a single [T, F] matrix is a batch of one).
    ``mask``: optional [B, >=T, >=T] booleans (nonzero: may attend), e.g. graph adjacency."""
    if isinstance(features, (list, tuple)):
        if not features:
            raise ValueError(f"{name} is an empty batch")
        if lengths is not None:
            raise ValueError(f"lengths are read from the arrays of a list of {name}; pass lengths with "
                             f"a padded [B, T, F] array")
        rows = [_as_float_rows(f, f"{name}[{b}]") for b, f in enumerate(features)]
        for b, r in enumerate(rows):
            if r.ndim != 2:
                raise ValueError(f"{name}[{b}] must be [length, n_features], got shape {r.shape}")
        length = np.array([len(r) for r in rows], dtype=np.int64)
        packed = np.concatenate(rows).astype(np.float32, copy=False) if rows else None
        widths = {r.shape[1] for r in rows}
    else:
        arr = _as_float_rows(features, name)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"{name} must be [batch, length, n_features] (or a list of [length, "
                             f"n_features] arrays), got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        length = _padded_lengths(lengths, arr.shape[0], arr.shape[1], name)
        keep = np.arange(arr.shape[1])[None, :] < length[:, None]
        packed = arr[keep].astype(np.float32, copy=False)
        widths = {arr.shape[2]}
    if widths != {n_features}:
        raise ValueError(f"{name} has {sorted(widths)} features per vector, the model takes {n_features}")
    empty = np.flatnonzero(length <= 0)
    if empty.size:
        raise ValueError(f"{name}[{empty[0]}] is empty; every set needs at least one vector")
    long = np.flatnonzero(length > max_len)
    if long.size:
        raise ValueError(f"{name}[{long[0]}] has {length[long[0]]} vectors, more than max_len={max_len}")
    if not np.isfinite(packed).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim != 3 or m.shape[0] != len(length) or m.shape[1] < length.max() or m.shape[2] < length.max():
            raise ValueError(f"mask must be [batch={len(length)}, >= {length.max()}, >= {length.max()}], "
                             f"got shape {m.shape}")
        # a vector whose row is all zero attends to nothing: its attention output is zero
        mask = np.ascontiguousarray(m != 0, dtype=np.uint8)
    return FeatureBatch(np.ascontiguousarray(packed), length.astype(np.int32), mask)


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
@dataclass
class TransformerRecord:
    """What ``Transformer.backward`` needs from ``forward_train``."""
    src: Batch
    tgt: Batch
    src_embed: EmbeddingsRecord
    encoder: StackRecord
    memory: np.ndarray
    tgt_embed: EmbeddingsRecord
    decoder: StackRecord
    hidden: np.ndarray


class ParameterOwner:
    """What a model over one flat float32 buffer shares (``Transformer``, ``Encoder``): named
    views, initialisation from the layers' declarations, loading named tensors with a report
    of what does not match, and a per-thread workspace.

    Needs ``weight_specs``, ``layout`` ([(name, shape)]), ``_views``, ``params``, ``_local``
    and ``config.d_model``.
    """

    _config_label = "model config"
    _compute_type = "float32"

    def _layers(self):
        """The top-level layers, bound to the buffer's views whenever ``params`` is assigned
        (None entries are absent optional layers)."""
        raise NotImplementedError

    def _total(self) -> int:
        return sum(s.size for s in self.weight_specs)

    @property
    def params(self) -> np.ndarray:
        """The flat float32 parameter buffer; assigning a new one rebinds every layer's views.
        (Matrices held only in int8 / bf16 are re-derived into it first, see set_compute_type.)"""
        self._materialize_float()
        self._file_clean = False
        return self._params

    @params.setter
    def params(self, flat: np.ndarray) -> None:
        total = self._total()
        if not isinstance(flat, np.ndarray) or flat.dtype != np.float32 or flat.ndim != 1 or flat.size != total:
            raise ValueError(f"params must be float32 [{total}], got {getattr(flat, 'dtype', type(flat))} "
                             f"{getattr(flat, 'shape', '')}")
        self._bind_buffer(flat)
        self._weights_changed()

    def _bind_buffer(self, flat: np.ndarray) -> None:
        # `flat` becomes the buffer: its views, bound to every layer (which drop their stored forms)
        self._params = flat
        self._views = named_views(flat, self.layout)
        for layer in self._layers():
            if layer is not None:
                layer.bind(self._views)
        self._bound()

    def _bound(self) -> None:
        """After the views are (re)bound: derived references a model keeps (none by default)."""
    # weight name -> its form in the compute type (shared by the layers reading it)
    _stored: Dict[str, StoredWeight] = {}
    # names whose float32 views do not hold their values: those are in ``_float_source`` (a
    # folder's tensors, read when asked for) or only in ``_stored`` (a checkpoint saved in int8 /
    # bf16, or matrices whose float32 pages were released); the views are untouched zero pages
    _float_pending: frozenset = frozenset()
    _released: frozenset = frozenset()   # of those, the ones whose float32 values this process dropped
    # name -> (parts, mapped): the exact float32 values of a pending matrix, as row blocks
    # [(first row, array)] of a file (a converter's tensors); ``mapped``: the arrays are private
    # file maps, whose pages may be handed back once read
    _float_source: Dict[str, Tuple[List[Tuple[int, np.ndarray]], bool]] = {}
    # the buffer is a private map of a float32 checkpoint that nothing has written: its matrices
    # can stay in the file as the source of their float32 values (_detach_from_file)
    _file_clean = False
    _keep_float32 = False

    # -- compute type ------------------------------------------------------------------------
    @property
    def compute_type(self) -> str:
        """What the linear layers compute in: "float32", "int8" or "bfloat16"."""
        return self._compute_type

    def _roots(self) -> List[Layer]:
        return [v for v in vars(self).values() if isinstance(v, Layer)]

    def linear_layers(self) -> List[Linear]:
        """Every ``Linear`` of the model (the output projection and heads included)."""
        return [layer for root in self._roots() for layer in root.walk() if isinstance(layer, Linear)]

    def embedding_layers(self) -> List[Embeddings]:
        """Every token-embedding lookup of the model."""
        return [layer for root in self._roots() for layer in root.walk() if isinstance(layer, Embeddings)]

    def set_compute_type(self, compute_type: str, *, keep_float32: bool = False) -> None:
        """Compute every linear layer in ``compute_type`` (CTranslate2's names): "float32";
        "int8" (weights int8 with a float32 scale per output row, activations quantized per row
        at run time, int32 accumulation); "bfloat16" (bf16 weights, float32 accumulation);
        "auto" (int8 where this CPU has an int8 dot-product instruction set, else float32);
        "default" (leave it). The token-embedding tables are held in the same form (int8 rows
        with a scale each, or bf16) and dequantized row by row on lookup. Each matrix is
        converted once: a tied output projection and the lookup read one int8 matrix. A type
        this CPU cannot run natively is a ValueError naming the missing instruction set.

        The float32 copies of the converted matrices are released as each is converted (the
        memory is given back to the system), unless ``keep_float32``. Asked for later
        (``parameters()``, ``set_compute_type("float32")``, training) they come back exactly
        when the model has a file to read them from (a float32 checkpoint memory-mapped and not
        written to, a converted folder such as MarianMT); otherwise they are re-derived from the
        int8 / bf16 form, with a warning, since that is not the original float32
        (keep_float32=True keeps them, so that float32 can be set back exactly)."""
        ct = resolve_compute_type(compute_type, default=self._compute_type)
        self._keep_float32 = keep_float32
        if ct == "float32" or keep_float32:
            self._materialize_float()
        elif self._file_clean:
            self._detach_from_file()
        if ct != self._compute_type or (ct != "float32" and not self._stored):
            self._apply_compute_type(ct, {})
        if ct != "float32" and not keep_float32:
            self._release_float()

    def _detach_from_file(self) -> None:
        # The buffer maps a float32 checkpoint nothing has written, and the model is about to
        # compute from int8 / bf16 forms: of the buffer it then reads only the small tensors
        # (biases, norms, positions), but reading those through the map would fault in the
        # neighbouring matrices' pages with them (the kernel maps file pages in large folios).
        # So the small tensors move to a fresh buffer, and the matrices stay in the file as the
        # source of their exact float32 values (read back block by block if asked for).
        old, stored = self._views, dict(self._stored)
        storable = set(self.storable_matrices())
        flat = np.zeros(self._total(), dtype=np.float32)
        huge_pages(flat, False)   # filled sparsely
        self._bind_buffer(flat)
        names = [n for n, _ in self.layout]
        for i, name in enumerate(names):
            if name in storable:
                continue
            copy_blocks(self._views[name], [(0, old[name])], release=True)
            # and the neighbours' pages that reading it mapped
            for side in (names[i - 1::-1] if i else [], names[i + 1:]):
                near = next((n for n in side if n in storable), None)
                if near is not None:
                    release_pages(old[near])
        for name in storable:   # and any page mapped further away: nothing reads the map from here on
            release_pages(old[name])
        self._float_source = {name: ([(0, old[name])], True) for name in storable}
        self._float_pending = frozenset(storable)
        self._released = frozenset()
        self._file_clean = False
        self._release_pending_views()
        if self._compute_type != "float32":   # the layers read the forms they had
            self._apply_compute_type(self._compute_type, stored)

    def _apply_compute_type(self, ct: str, store: Dict[str, StoredWeight]) -> None:
        # every matrix of `store` (or converted now, releasing its float32 pages as it goes unless
        # _keep_float32) in `ct`, then every Linear and lookup reading its form
        if ct != "float32":
            for name in self.storable_matrices():
                form = store.get(name)
                if form is None or form.dtype != ct:
                    store[name] = self._convert(name, ct)
        for layer in (*self.linear_layers(), *self.embedding_layers()):
            layer.set_compute_type(ct, store)
        self._stored = store if ct != "float32" else {}
        self._compute_type = ct

    def _convert(self, name: str, ct: str) -> StoredWeight:
        # `name`'s form in `ct`, from its float32 values: the source's row blocks when pending
        # (never written into the buffer), else the view; block by block, each block's pages
        # released once quantized, so a conversion holds one block of float32 at a time
        release = not self._keep_float32
        if name in self._float_pending and name not in self._float_source:
            self._materialize_float([name])   # only another stored form: re-derived (warns if lossy)
        if name in self._float_pending:
            parts, mapped = self._float_source[name]
            return quantize_blocks(self._views[name].shape, parts, ct, release=release and mapped)
        form = quantize_blocks(self._views[name].shape, [(0, self._views[name])], ct, release=release)
        if release:
            self._mark_released([name])
        return form

    def _mark_released(self, names) -> None:
        # float32 pages of `names` were handed back: lost unless the model has a source for them
        lost = frozenset(n for n in names if n not in self._float_source)
        self._float_pending = self._float_pending | frozenset(names)
        self._released = self._released | lost

    def _materialize_float(self, names=None) -> None:
        # the float32 values of pending matrices, into their views: from the source (exact,
        # block by block), else re-derived from the stored form; all of them, or those of `names`
        todo = self._float_pending if names is None else self._float_pending & frozenset(names)
        if not todo:
            return
        lossy = todo & self._released
        if lossy:
            warnings.warn(f"{len(lossy)} weight matrices are only held in {self._compute_type}: "
                          f"their float32 values are re-derived from that form, not the original float32 "
                          f"(load with compute_type='float32', or set_compute_type(..., keep_float32=True), "
                          f"to keep those)", stacklevel=3)
        if todo == self._float_pending:
            huge_pages(self._params, True)   # the buffer is filled whole again
        for name in [n for n, _ in self.layout if n in todo]:
            view = self._views[name]
            if name in self._float_source:
                parts, mapped = self._float_source[name]
                copy_blocks(view, parts, release=mapped)
            else:
                view[...] = self._stored[name].dequantize()
        self._float_pending = self._float_pending - todo
        self._released = self._released - todo
        # a source in memory (a file read without mmap) is dropped once copied; a mapped one costs
        # no memory and stays, for the next time the float32 pages are released
        self._float_source = {n: v for n, v in self._float_source.items() if n not in todo or v[1]}

    def _release_float(self) -> None:
        # give the pages of the converted matrices' float32 copies back to the system; their
        # values come back from the file or the stored forms if asked for (_materialize_float)
        names = [n for n in self.storable_matrices() if n in self._stored and n not in self._float_pending]
        for name in names:
            release_pages(self._views[name])
        self._mark_released(names)

    def _weights_changed(self) -> None:
        # the float32 parameters changed (a new buffer, loaded tensors): derive the stored forms again
        self._float_pending = self._released = frozenset()
        self._float_source = {}
        self._file_clean = False
        if self._compute_type != "float32":
            self._apply_compute_type(self._compute_type, {})

    def storable_matrices(self) -> List[str]:
        """The matrices held (and saved) in int8 / bf16 in those compute types: those of the
        linear layers and the token-embedding tables, in buffer order."""
        names = {lin.weight_name for lin in self.linear_layers()}
        names |= {emb.token_name for emb in self.embedding_layers()}
        return [n for n, _ in self.layout if n in names]

    def float_weight_bytes(self) -> int:
        """Bytes of the float32 parameters the model computes with (all of them in float32;
        in int8 / bf16, those outside the stored matrices)."""
        stored = set(self._stored)
        return 4 * sum(s.size for s in self.weight_specs if s.name not in stored)

    def weight_bytes(self) -> int:
        """Bytes of the weights the model computes with: the stored forms (data, scales and the
        int8 kernels' per-row sums) plus the float32 tensors outside them."""
        return self.float_weight_bytes() + sum(f.nbytes for f in self._stored.values())

    def _checkpoint_tensors(self) -> List[Tuple[str, object, np.ndarray]]:
        """(name, safetensors dtype, array) in buffer order: the stored forms of the matrices in
        the compute type (with their scales), everything else float32."""
        if self._compute_type == "float32":
            self._materialize_float()
            return [(n, np.float32, self._views[n]) for n, _ in self.layout]
        code = STORED_CODES[self._compute_type]
        out = []
        for name, _ in self.layout:
            form = self._stored.get(name)
            if form is None:
                out.append((name, np.float32, self._views[name]))
                continue
            out.append((name, code, form.data))
            if form.scale is not None:
                out.append((name + SCALE_SUFFIX, np.float32, form.scale))
        return out

    def _save_weights(self, directory: str, meta: Dict[str, str]) -> None:
        """``model.safetensors`` in ``directory``, atomically: the flat buffer as the data section
        in float32 (one write, and one mapping on load), else ``_checkpoint_tensors`` with
        ``compute_type`` in the metadata; ``meta`` (format, config) and the data's crc32 added."""
        import zlib

        os.makedirs(directory, exist_ok=True)
        meta = dict(meta)
        if self._compute_type == "float32":
            self._materialize_float()
            entries = [(w.name, np.dtype(w.dtype), w.shape) for w in self.weight_specs]
            chunks = [memoryview(np.ascontiguousarray(self._params)).cast("B")]
        else:
            tensors = self._checkpoint_tensors()
            entries = [(n, code, a.shape) for n, code, a in tensors]
            chunks = [memoryview(np.ascontiguousarray(a)).cast("B") for _, _, a in tensors if a.size]
            meta["compute_type"] = self._compute_type
        crc = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
        # crc32 of the data section: from_pretrained(verify=True) and verify_checkpoint check it
        meta["crc32"] = str(crc)
        atomic_write_bytes(os.path.join(directory, WEIGHTS_NAME), [safetensors_header(entries, meta)] + chunks)

    def _load_stored(self, path: str, compute_type: str, mmap: bool = True) -> None:
        """Fill the model from a checkpoint saved in ``compute_type`` (int8 / bfloat16): its
        matrices mapped as stored (no copy when ``mmap``), the other tensors copied into the
        float32 views (a storable matrix the file holds in F32, as checkpoints written before
        the tables were quantized do, is converted from the file). Every tensor's dtype and
        shape, and each int8 matrix's scales, are checked."""
        code = STORED_CODES[compute_type]
        header, _, _ = read_safetensors_header(path)
        tensors = load_safetensors(path, mmap=mmap, widen_bf16=False)
        huge_pages(self._params, False)   # the buffer is filled sparsely
        storable = set(self.storable_matrices())
        problems, store, used, source = [], {}, set(), {}
        for name, shape in self.layout:
            info = header.get(name)
            if info is None:
                problems.append(f"missing: {name}")
                continue
            used.add(name)
            got, dims = info["dtype"], tuple(info["shape"])
            if dims != tuple(shape):
                problems.append(f"mis-shaped: {name}: expected {list(shape)}, got {list(dims)}")
            elif got == "F32" and name in storable:
                source[name] = ([(0, tensors[name])], file_mapped(tensors[name]))
            elif got == "F32":
                copy_blocks(self._views[name], [(0, tensors[name])], release=file_mapped(tensors[name]))
            elif got == code and name in storable:
                scale = None
                if code == "I8":
                    sname = name + SCALE_SUFFIX
                    sinfo = header.get(sname)
                    used.add(sname)
                    if sinfo is None:
                        problems.append(f"missing: {sname} (the per-row scales of int8 {name})")
                        continue
                    if sinfo["dtype"] != "F32" or tuple(sinfo["shape"]) != (shape[0],):
                        problems.append(f"{sname}: expected F32 [{shape[0]}], got {sinfo['dtype']} {sinfo['shape']}")
                        continue
                    scale = np.array(tensors[sname], dtype=np.float32)   # small: an aligned copy
                    if not np.isfinite(scale).all() or (scale < 0).any():
                        problems.append(f"{sname}: scales must be finite and >= 0")
                        continue
                if scale is not None:
                    form = StoredWeight.int8(tensors[name], scale)
                else:
                    form = StoredWeight(compute_type, tensors[name])
                store[name] = form
            else:
                want = f"F32 or {code}" if name in storable else "F32"
                problems.append(f"{name}: dtype {got}, expected {want} in a {compute_type} checkpoint")
        unexpected = sorted(set(tensors) - used)
        if unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        if problems:
            raise CheckpointError(f"{path}: weights do not match the {self._config_label} — " + " | ".join(problems))
        self._float_pending = frozenset(store) | frozenset(source)
        self._float_source = source
        self._release_pending_views()
        self._apply_compute_type(compute_type, store)

    def _load_lazily(self, tensors: Mapping[str, object]) -> None:
        """Fill the model from a folder's tensors, each given as an array or as row blocks
        [(first row, array)] (a converter's fused matrices): the storable matrices are left in
        the file (pending, read block by block when the compute type is set: float32 copies them
        in, int8 / bf16 converts them without a float32 copy); the rest are copied now. The
        pages of arrays that are file maps are handed back once read."""
        problems = self._check_tensors({n: _parts_shape(v) for n, v in tensors.items()}, strict=True)
        if problems:
            raise CheckpointError(f"weights do not match the {self._config_label} — " + " | ".join(problems))
        storable = set(self.storable_matrices())
        source = {}
        huge_pages(self._params, False)   # the buffer is filled sparsely
        for name, _ in self.layout:
            parts = tensors[name] if isinstance(tensors[name], list) else [(0, tensors[name])]
            for _, a in parts:
                if not np.issubdtype(np.asarray(a).dtype, np.floating):
                    raise CheckpointError(f"{name}: expected floating-point weights, got {np.asarray(a).dtype}")
            mapped = all(file_mapped(a) for _, a in parts)
            if name in storable:
                source[name] = (parts, mapped)
            else:
                copy_blocks(self._views[name], parts, release=mapped)
        self._float_source = source
        self._float_pending = frozenset(source)
        self._release_pending_views()

    def _release_pending_views(self) -> None:
        # the pending views are zeros never read, but writing the small tensors between them
        # may have faulted in whole (transparent huge) pages of the buffer: hand those back
        for name in self._float_pending:
            release_pages(self._views[name])

    def parameters(self) -> Dict[str, np.ndarray]:
        """Name -> view into ``params`` (writes go to the model)."""
        self._materialize_float()
        self._file_clean = False   # writable views handed out: the buffer may no longer be the file's
        return dict(self._views)

    def __getitem__(self, name: str) -> np.ndarray:
        self._materialize_float([name])
        self._file_clean = False
        return self._views[name]

    @property
    def num_parameters(self) -> int:
        return int(self._total())

    def init_parameters(self, seed: Optional[int] = 0) -> None:
        """Each tensor from its declared initialiser, drawn in buffer order."""
        rng = np.random.default_rng(seed)
        d = self.config.d_model
        for spec in self.weight_specs:
            v = self._views[spec.name]
            if spec.init == "embedding":
                v[...] = rng.normal(0.0, d ** -0.5, size=spec.shape)
            elif spec.init == "position":
                v[...] = rng.normal(0.0, 0.02, size=spec.shape)
            elif spec.init == "xavier":
                bound = math.sqrt(6.0 / (spec.shape[0] + spec.shape[1]))
                v[...] = rng.uniform(-bound, bound, size=spec.shape)
            elif spec.init == "ones":
                v[...] = 1.0
            elif spec.init == "zeros":
                v[...] = 0.0
            else:
                raise ValueError(f"{spec.name}: unknown initialiser {spec.init!r}")
        self._weights_changed()   # every value replaced: nothing pending or from a file, forms again

    def state_dict(self) -> Dict[str, np.ndarray]:
        return self.parameters()

    def _check_tensors(self, shapes: Mapping[str, Tuple[int, ...]], strict: bool) -> List[str]:
        """What does not match the layout among named tensors' ``shapes``: mis-shaped names, and
        when ``strict`` missing and unexpected ones."""
        missing = [n for n, _ in self.layout if n not in shapes]
        unexpected = sorted(set(shapes) - set(self._views))
        mismatched = [f"{n}: expected {list(self._views[n].shape)}, got {list(shapes[n])}"
                      for n, _ in self.layout if n in shapes and tuple(shapes[n]) != self._views[n].shape]
        problems = []
        if mismatched:
            problems.append("mis-shaped: " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        return problems

    def load_state_dict(self, tensors: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy named tensors into the buffer, reporting missing, unexpected and mis-shaped names."""
        problems = self._check_tensors({n: np.shape(v) for n, v in tensors.items()}, strict)
        if problems:
            raise CheckpointError(f"weights do not match the {self._config_label} — " + " | ".join(problems))
        self._materialize_float([n for n, _ in self.layout if n not in tensors])   # those stay as they are
        for name, value in tensors.items():
            if name in self._views:
                arr = np.asarray(value)
                if not np.issubdtype(arr.dtype, np.floating):
                    raise CheckpointError(f"{name}: expected floating-point weights, got {arr.dtype}")
                self._views[name][...] = arr
        self._weights_changed()


    def _workspace(self) -> Workspace:
        ws = getattr(self._local, "workspace", None)
        if ws is None:
            ws = self._local.workspace = Workspace()
        return ws


class Transformer(ParameterOwner):
    """Encoder-decoder Transformer over one contiguous float32 parameter buffer.

    ``Transformer(config, seed=0)`` initialises as PyTorch's ``nn.Transformer`` does
    (Xavier-uniform matrices, zero attention biases, unit LayerNorm) with embeddings
    drawn from N(0, d_model^-1/2). ``params`` is the flat buffer; ``parameters()`` maps
    names to views into it.

    A composition of ``cyformer.layers`` (the Annotated Transformer's ``EncoderDecoder``):
    ``src_embed`` / ``tgt_embed`` (``Embeddings``), ``encoder`` / ``decoder`` (stacks of
    ``EncoderLayer`` / ``DecoderLayer``) and ``generator`` (the output ``Linear``). The
    layers declare the weights; ``layout`` is derived from the declarations.
    """

    def __init__(self, config: TransformerConfig, seed: Optional[int] = 0, *,
                 params: Optional[np.ndarray] = None):
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, not {type(config).__name__}")
        config.validate()
        self.config = config
        self.src_embed, self.tgt_embed, self.encoder, self.decoder, self.generator = _compose(config)
        self.weight_specs = _weight_specs(self.src_embed, self.tgt_embed, self.encoder, self.decoder,
                                          self.generator)
        self.layout = [(s.name, s.shape) for s in self.weight_specs]
        self._local = threading.local()
        self.params = np.zeros(self._total(), dtype=np.float32) if params is None else params
        if params is None:
            self.init_parameters(seed)

    def _layers(self):
        return (self.src_embed, self.tgt_embed, self.encoder, self.decoder, self.generator)

    @classmethod
    def empty(cls, config: TransformerConfig) -> "Transformer":
        """A model with zeroed parameters, to be filled by a loader or converter."""
        return cls(config, params=np.zeros(sum(int(np.prod(s)) for _, s in parameter_layout(config)),
                                           dtype=np.float32))

    # -- inference passes over packed batches ------------------------------------------------
    def _encode_packed(self, src: Batch, ws: Workspace, nt: int) -> np.ndarray:
        """Encoder stack over packed tokens -> memory [N_src, d] (a workspace buffer)."""
        x = ws.get("memory", len(src.ids), self.config.d_model)
        if isinstance(src, FeatureBatch):
            self.src_embed.forward(src.features, src.positions, x, nt)
        else:
            self.src_embed.forward(src.ids, src.positions, x, nt)
        return self.encoder.forward(x, src, ws, nt)

    def _decode_packed(self, tgt: Batch, memory: np.ndarray, src: Batch, ws: Workspace,
                       nt: int) -> np.ndarray:
        """Decoder stack (teacher forcing, causal) -> hidden states [N_tgt, d]."""
        x = ws.get("dec_x", len(tgt.ids), self.config.d_model)
        self.tgt_embed.forward(tgt.ids, tgt.positions, x, nt)
        return self.decoder.forward(x, tgt, memory, src, ws, nt)

    def _logits_packed(self, hidden: np.ndarray, nt: int) -> np.ndarray:
        out = np.empty((hidden.shape[0], self.config.tgt_vocab_size), dtype=np.float32)
        self.generator.forward(hidden, out, nt)
        return out

    # -- training passes (llm.c style: forward saves, backward accumulates into grads) ----------
    def forward_train(self, src: Batch, tgt: Batch, tc: TrainContext):
        """Teacher-forced logits [N_tgt, V] (a workspace buffer of ``tc``) and the record
        ``backward`` needs. Dropout sites are numbered in this order."""
        d = self.config.d_model
        x = tc.buf("enc.embed", len(src.ids), d)
        if isinstance(src, FeatureBatch):
            r_src = self.src_embed.forward_train(src.features, src, x, tc)
        else:
            r_src = self.src_embed.forward_train(src, x, tc)
        memory, r_enc = self.encoder.forward_train(x, src, tc)
        y = tc.buf("dec.embed", len(tgt.ids), d)
        r_tgt = self.tgt_embed.forward_train(tgt, y, tc)
        hidden, r_dec = self.decoder.forward_train(y, tgt, memory, src, tc)
        logits = tc.buf("logits", len(tgt.ids), self.config.tgt_vocab_size)
        self.generator.forward(hidden, logits, tc.nt)
        return logits, TransformerRecord(src, tgt, r_src, r_enc, memory, r_tgt, r_dec, hidden)

    def backward(self, rec: TransformerRecord, dlogits: np.ndarray, tc: TrainContext) -> None:
        """Accumulate every parameter's gradient into ``tc.grads`` from the logits' gradient."""
        hidden, memory = rec.hidden, rec.memory
        dx = tc.buf("dhidden", *hidden.shape)
        self.generator.backward(hidden, dlogits, dx, tc.grads, tc.nt)
        dmemory = tc.buf("dmemory", *memory.shape)
        dmemory[...] = 0.0
        self.decoder.backward(rec.decoder, dx, dmemory, tc)
        self.tgt_embed.backward(rec.tgt_embed, dx, tc)
        self.encoder.backward(rec.encoder, dmemory, tc)
        self.src_embed.backward(rec.src_embed, dmemory, tc)

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
            cache = self.decoder.memory_cache(memory, batch, nt)
        rows_src = np.repeat(np.arange(batch.size, dtype=np.int32), rows_per_source)
        return DecoderState(self.config, cache, batch, rows_src, max_steps, pool=self._decoding_pool())

    def _decoding_pool(self) -> CachePool:
        """The self-attention cache buffers kept between decoding calls (``DecoderState.release``
        gives a finished call's back; ``release_decoding_memory`` drops them)."""
        pool = self.__dict__.get("_cache_pool")
        if pool is None:
            pool = self.__dict__.setdefault("_cache_pool", CachePool(2 * self.config.n_decoder_layers))
        return pool

    def release_decoding_memory(self) -> int:
        """Drop the decoding caches kept for the next ``generate`` call; returns their bytes."""
        pool = self._decoding_pool()
        held = pool.nbytes
        pool.clear()
        return held

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
        # the thread count of this step: the full team, or one thread when measurement says a
        # busy machine makes that faster (same bits either way; see threads.StepGovernor)
        nt = threads.step_governor().begin(threads.requested_num_threads())
        ws = self._workspace()
        with threads.blas_single_threaded():
            x = ws.get("step_x", rows, c.d_model)
            self.tgt_embed.forward(tokens, np.full(rows, t, dtype=np.int32), x, nt)
            self.decoder.step(x, state, attention, ws, nt)
            logits = ws.get("step_logits", rows, c.tgt_vocab_size)
            self.generator.forward(x, logits, nt)
        state.length = t + 1
        return logits.view()  # the workspace keeps its own view: a caller may reshape this one

    # -- public API --------------------------------------------------------------------------------
    def _src_batch(self, src, lengths) -> Batch:
        c = self.config
        if c.n_src_features:   # a list of [S, F] float arrays, or a padded [B, S, F] array with lengths
            return make_feature_batch(src, lengths, n_features=c.n_src_features, max_len=c.max_len, name="src")
        return make_batch(src, lengths, vocab_size=c.src_vocab_size, max_len=c.max_len, name="src")

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
        """Write ``config.json`` + ``model.safetensors`` to ``directory``, each atomically.

        A model in int8 or bfloat16 writes its linear layers' matrices in that form (``I8``
        with float32 per-row scales ``NAME_scale``, or ``BF16``), the rest float32, and
        ``compute_type`` in the metadata; loading maps them as they are. Other formats
        (``format="marian"``) are float32."""
        if format != "cyformer":
            from .convert import export_checkpoint
            self._materialize_float()
            return export_checkpoint(self, directory, format)
        self._save_weights(directory, {"format": "cyformer", "config": self.config.to_json()})
        self.config.save(os.path.join(directory, CONFIG_NAME))

    @classmethod
    def from_pretrained(cls, directory: str, mmap: bool = True, verify: bool = False,
                        compute_type: str = "default") -> "Transformer":
        """Load a cyformer checkpoint or a folder of a registered format (Hugging Face MarianMT).

        The weights are memory-mapped (copy-on-write) when ``mmap``: nothing is copied, pages
        are read as the model touches them. Sizes, shapes and dtypes are always checked;
        ``verify=True`` also checks the data against the crc32 that ``save_pretrained`` stored
        (this reads the whole file once), catching bit rot and partial overwrites. The loader
        is chosen by ``config.json``'s ``model_type`` (``cyformer.convert.register_loader``).
        ``compute_type`` ("default": as stored; "float32", "int8", "bfloat16", "auto"): see
        ``set_compute_type``; a float32 checkpoint is quantized here, at load.
        """
        from .io import read_json
        resolve_compute_type(compute_type)   # a bad or unsupported type fails before any reading
        cfg_path = os.path.join(directory, CONFIG_NAME)
        require_model_folder(directory)
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
        raw = read_json(cfg_path, expect=dict)   # bounded size and nesting; CheckpointError names the file
        model_type = raw.get("model_type") if isinstance(raw, dict) else None
        model = loader_for(model_type or "cyformer", cfg_path)(directory, raw, mmap=mmap, verify=verify)
        # "default": as the loader made it, a converted folder's float32 matrices read in now
        if compute_type != "default" or getattr(model, "_float_source", None):
            model.set_compute_type(compute_type)
        return model


@register_loader("cyformer")
def _load_cyformer(directory: str, raw, mmap: bool = True, verify: bool = False) -> Transformer:
    """Our own folder: when the file holds exactly our layout, the mapped data section is the
    parameter buffer (no copy); otherwise tensors are copied in by name."""
    config = TransformerConfig.from_dict(raw)
    return load_own_weights(directory, Transformer, config, parameter_layout(config), mmap=mmap, verify=verify)


def load_own_weights(directory: str, model_cls, config, layout, *, mmap: bool, verify: bool):
    """``model_cls(config)`` over the folder's model.safetensors: the mapped data section itself
    when it holds exactly ``layout`` (no copy), else a model whose tensors are copied in by name."""
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
    if verify:
        verify_checkpoint(path)
    stored = safetensors_metadata(path).get("compute_type", "float32")
    if stored != "float32":
        if stored not in STORED_CODES:
            raise CheckpointError(f"{path}: unknown compute_type {stored!r} in the metadata "
                                  f"(written: {', '.join(STORED_CODES)})")
        model = model_cls.empty(config)
        model._load_stored(path, stored, mmap=mmap)
        return model
    flat = load_flat_float32(path, layout, mmap=mmap)
    if flat is not None:  # our own layout: the mapped file is the parameter buffer
        model = model_cls(config, params=flat)
        model._file_clean = isinstance(flat, np.memmap)   # released pages read the file again
        return model
    model = model_cls.empty(config)
    model._load_lazily(load_safetensors(path, mmap=mmap))
    return model
