"""``Encoder``: an encoder-only Transformer (the BERT family) composed of the layer library.

Token embeddings + learned positions (+ optional token-type embeddings), an optional
LayerNorm after the embeddings, then ``EncoderLayer``s (post-LN with GELU (erf) for BERT).
With ``n_features`` the inputs are sets of float vectors instead (speech frames, image
patches, graph nodes): a learned projection ``F -> d_model`` plus positions
(``FeatureProjection``) replaces the token embeddings; ``attention_window`` bounds
self-attention to ``|i - j| <= w`` and a per-example mask or edge list restricts it to a graph.
The same layers and kernels as ``Transformer``'s encoder; only the composition is new.
An optional head (``layers.heads``) turns the last states into labels: one per sequence
(pooled, through BERT's tanh pooler when the checkpoint has one) or one per position
(``classify``); ``forward_train`` / ``backward`` train it and the encoder (``Trainer``).

``EncoderConfig`` is its own small dataclass rather than ``TransformerConfig``: the
encoder-decoder config carries target-side fields (target vocabulary, BOS/EOS, decoder
layers, output tying) that mean nothing here and are validated against each other, while an
encoder needs token types and an embedding LayerNorm that the translation model never has.
``EncoderLayer`` and the ``Encoder`` stack read attributes only, so this config drives them.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from . import threads
from ._engine.ffn import ACTIVATION_NAMES as ACTIVATIONS
from .config import JsonConfig
from .convert.registry import loader_for, register_loader
from .layers.base import TrainContext, WeightSpec, derive_layout
from .layers.embedding import Embeddings, EmbeddingsRecord
from .layers.heads import (HEADS, POOLER_ACTIVATIONS, POOLINGS as HEAD_POOLINGS, Pooler, SequenceClassificationHead,
                           TokenClassificationHead, pool)
from .layers.linear import resolve_compute_type
from .layers.norm import LayerNorm, LayerNormRecord
from .layers.projection import POSITIONALS, FeatureProjection
from .layers.transformer import Encoder as EncoderStack, StackRecord
from .model import (Batch, FeatureBatch, ParameterOwner, Workspace, load_own_weights, make_batch,
                    make_feature_batch, require_model_folder)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "cyformer-encoder"
# what embed() pools by: the heads' (cls, mean, max), BERT's tanh pooler, and the other modes
# of sentence-transformers' Pooling module
POOLINGS = ("mean", "cls", "max", "pooler", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


class _Segments:
    """Sequence b is rows ``start[b]:start[b] + length[b]`` of packed states (a Batch's view)."""
    __slots__ = ("start", "length")

    def __init__(self, start: np.ndarray, length: np.ndarray):
        self.start, self.length = start, length


def pool_modes(h: np.ndarray, segs, modes, pooler=None, nt: int = 1) -> np.ndarray:
    """Packed token states h [N, d] -> [B, k * d] for k pooling ``modes``, concatenated in order.

    ``segs`` (a Batch or ``_Segments``) must tile ``h`` in order (``start[b + 1] == start[b] +
    length[b]``): the sums are ``reduceat`` segments, which end where the next begins. One
    reduction over the packed rows per mode (no padded copy); the sums run in float32, as
    sentence-transformers' do on float32 states. The result is a new array.
    """
    out = []
    start, length = segs.start, segs.length
    n = length.astype(np.float32)[:, None]
    for mode in modes:
        if mode in HEAD_POOLINGS:
            out.append(pool(h, segs, mode))
        elif mode == "pooler":   # BertModel's pooler_output: tanh(dense(CLS state))
            out.append(pooler.forward(pool(h, segs, "cls"), nt))
        elif mode == "lasttoken":
            out.append(h[start + length - 1])
        elif mode == "weightedmean":
            # token i of a sequence (from 0) weighs i + 1: positions of the packed rows + 1
            w = (np.arange(len(h)) - np.repeat(start, length) + 1).astype(np.float32)
            out.append(np.add.reduceat(h * w[:, None], start, axis=0) / (n * (n + 1) / 2))
        else:   # mean_sqrt_len_tokens
            out.append(np.add.reduceat(h, start, axis=0) / np.sqrt(n))
    return np.array(out[0] if len(out) == 1 else np.concatenate(out, axis=1), dtype=np.float32)


@dataclass
class EncoderConfig(JsonConfig):
    """Hyper-parameters of an encoder-only Transformer; the defaults are BERT-base's.

    ``type_vocab_size`` 0 means no token-type embeddings; ``embedding_norm`` puts a
    LayerNorm after the summed embeddings (BERT); ``norm_first=False`` is post-LN (BERT).
    Dropout acts only in training (``forward_train``): after the embeddings' LayerNorm, on
    every sublayer's output, on the attention weights and inside the FFN.

    Heads (Hugging Face's names where they exist): ``head`` is None (hidden states and
    pooled vectors only), ``"sequence_classification"`` (one label per sequence, on the
    ``pooling`` vector of each sequence, "cls" for BERT) or ``"token_classification"`` (one
    label per position); ``n_labels`` classes named by ``id2label`` (``{0: "LABEL_0", ...}``
    by default; ``label2id`` is its inverse). ``pooler`` adds BERT's tanh pooler
    (``pooler.dense``) on the pooled vector, before the sequence classifier
    (``pooler_activation`` "relu" is DistilBERT's pre-classifier, "gelu" ELECTRA's head);
    ``classifier_dropout`` (None: ``dropout``) is the dropout before the classifier.

    Vector-set inputs: ``n_features`` > 0 makes the model take float vectors [T, n_features]
    per example through a learned projection (``vocab_size`` and token types are then unused:
    set ``type_vocab_size=0``); ``positional`` is "learned", "sinusoidal" or "none" (a
    graph's nodes have no order); ``attention_window`` (None: full attention) keeps each
    position's attention within ``|i - j| <= attention_window`` (speech frames).
    """

    MODEL_TYPE = MODEL_TYPE

    vocab_size: int = 30522
    d_model: int = 768
    n_heads: int = 12
    d_ff: int = 3072
    n_layers: int = 12
    max_len: int = 512
    type_vocab_size: int = 2
    embedding_norm: bool = True
    norm_first: bool = False
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: Optional[float] = None
    activation_dropout: Optional[float] = None
    pad_id: int = 0
    head: Optional[str] = None
    n_labels: int = 2
    id2label: Optional[Dict[int, str]] = None
    pooler: bool = False
    pooler_activation: str = "tanh"
    pooling: str = "cls"
    classifier_dropout: Optional[float] = None
    n_features: int = 0
    positional: str = "learned"
    attention_window: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attention_dropout is None:
            self.attention_dropout = self.dropout
        if self.activation_dropout is None:
            self.activation_dropout = self.dropout
        if self.classifier_dropout is None:
            self.classifier_dropout = self.dropout
        if self.id2label is None and isinstance(self.n_labels, int) and not isinstance(self.n_labels, bool):
            self.id2label = {i: f"LABEL_{i}" for i in range(self.n_labels)}
        elif isinstance(self.id2label, dict):
            # JSON keys are strings ("0"): back to ints, as transformers' PretrainedConfig does
            self.id2label = {_label_index(k): v for k, v in self.id2label.items()}
        self.validate()

    @property
    def label2id(self) -> Dict[str, int]:
        """Label name -> class index (the inverse of ``id2label``)."""
        return {v: k for k, v in self.id2label.items()}

    # what the layer library's EncoderLayer / Encoder stack read
    @property
    def n_encoder_layers(self) -> int:
        return self.n_layers

    @property
    def final_norm(self) -> bool:
        return self.norm_first   # pre-LN stacks end in a LayerNorm; post-LN ones do not

    @property
    def d_k(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        def integer(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"EncoderConfig.{name} must be an int, not {type(v).__name__}")
            if v < minimum:
                raise ValueError(f"EncoderConfig.{name} must be >= {minimum}, got {v}")

        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
            integer(name, 1)
        integer("n_layers", 0)
        integer("type_vocab_size", 0)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("embedding_norm", "norm_first"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"EncoderConfig.{name} must be a bool")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if isinstance(self.layer_norm_eps, bool) or not isinstance(self.layer_norm_eps, (int, float)) \
                or not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        integer("pad_id", 0)
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.head is not None and self.head not in HEADS:
            raise ValueError(f"head must be None or one of {HEADS}, got {self.head!r}")
        integer("n_labels", 1)
        if not isinstance(self.id2label, dict):
            raise TypeError(f"EncoderConfig.id2label must be a dict {{index: name}}, not "
                            f"{type(self.id2label).__name__}")
        if sorted(self.id2label) != list(range(self.n_labels)):
            raise ValueError(f"id2label must name the classes 0..{self.n_labels - 1} (n_labels={self.n_labels}), "
                             f"got keys {sorted(self.id2label)[:10]}")
        names = list(self.id2label.values())
        if not all(isinstance(n, str) for n in names):
            raise TypeError("id2label's names must be strings")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"id2label names a label twice: {', '.join(map(repr, dup))}")
        if not isinstance(self.pooler, bool):
            raise TypeError("EncoderConfig.pooler must be a bool")
        if self.pooler_activation not in POOLER_ACTIVATIONS:
            raise ValueError(f"pooler_activation must be one of {POOLER_ACTIVATIONS}, got {self.pooler_activation!r}")
        if self.pooling not in HEAD_POOLINGS:
            raise ValueError(f"pooling must be one of {HEAD_POOLINGS}, got {self.pooling!r}")
        v = self.classifier_dropout
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {v!r}")
        integer("n_features", 0)
        if self.positional not in POSITIONALS:
            raise ValueError(f"positional must be one of {POSITIONALS}, got {self.positional!r}")
        if self.positional != "learned" and not self.n_features:
            raise ValueError("positional other than 'learned' needs n_features (token inputs use learned positions)")
        if self.n_features and self.type_vocab_size:
            raise ValueError("an encoder of feature vectors (n_features > 0) has no token types: "
                             "set type_vocab_size=0")
        w = self.attention_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise ValueError(f"attention_window must be None or an int >= 0, got {w!r}")
        if not isinstance(self.extra, dict):
            raise TypeError("EncoderConfig.extra must be a dict")

    # -- serialisation (JsonConfig), refusing another kind's config ------------------------
    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EncoderConfig":
        mt = d.get("model_type", MODEL_TYPE) if isinstance(d, dict) else MODEL_TYPE
        if mt != MODEL_TYPE:
            raise ValueError(f"not an encoder config: model_type {mt!r} (expected {MODEL_TYPE!r})")
        return super().from_dict(d)


def _label_index(key) -> int:
    if isinstance(key, bool):
        raise TypeError(f"id2label keys must be class indices, got {key!r}")
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    raise TypeError(f"id2label keys must be class indices (ints, or digit strings in JSON), got {key!r}")


def _compose(c: EncoderConfig):
    """(embeddings, embedding LayerNorm or None, stack, pooler or None, head or None).

    The embeddings' dropout is applied by ``Encoder`` after the token types and the
    LayerNorm (BERT's order), so the ``Embeddings`` layer itself has none."""
    if c.n_features:
        embed = FeatureProjection("input_proj", c.n_features, c.d_model, max_len=c.max_len,
                                  positional=c.positional)
    else:
        embed = Embeddings("embed_tokens.weight", c.vocab_size, c.d_model, max_len=c.max_len,
                           positional="learned", position_name="embed_positions.weight", pad_id=c.pad_id)
    norm = LayerNorm("embed_norm", c.d_model, c.layer_norm_eps) if c.embedding_norm else None
    stack = EncoderStack(c)
    pooler = Pooler(c.d_model, activation=c.pooler_activation) if c.pooler else None
    head = None
    if c.head == "sequence_classification":
        head = SequenceClassificationHead(c.d_model, c.n_labels, pooling=c.pooling, pooler=pooler,
                                          dropout=c.classifier_dropout)
    elif c.head == "token_classification":
        head = TokenClassificationHead(c.d_model, c.n_labels, dropout=c.classifier_dropout)
    return embed, norm, stack, pooler, head


@dataclass
class EncoderRecord:
    """What ``Encoder.backward`` needs from ``forward_train``."""
    batch: Batch
    types: Optional[np.ndarray]      # packed token-type ids [N] (None: type 0)
    embed: EmbeddingsRecord
    embed_norm: Optional[LayerNormRecord]
    site: int                        # the embeddings' dropout site
    stack: StackRecord
    hidden: np.ndarray               # the last layer's states [N, d]
    head: Any                        # the head's record (None without a head)


def _prompt_skip(prompt_length, batch: Batch, modes) -> int:
    if isinstance(prompt_length, bool) or not isinstance(prompt_length, (int, np.integer)) or prompt_length < 0:
        raise ValueError(f"prompt_length must be an int >= 0, got {prompt_length!r}")
    if prompt_length and prompt_length >= int(batch.length.min()):
        raise ValueError(f"prompt_length={prompt_length} leaves no token to pool in a sequence of "
                         f"{int(batch.length.min())}")
    if prompt_length and "weightedmean" in modes:
        # sentence-transformers keeps the weights of the whole sequence (i + 1) there
        raise ValueError("weightedmean pooling with the prompt left out is not supported")
    return int(prompt_length)


class Encoder(ParameterOwner):
    """Encoder-only Transformer: ``forward`` -> hidden states, ``embed`` -> pooled vectors.

    Weights, in buffer order: ``embed_tokens.weight`` [vocab, d], ``embed_positions.weight``
    [max_len, d], ``embed_token_types.weight`` [type_vocab, d] (when ``type_vocab_size``),
    ``embed_norm.{weight,bias}`` (when ``embedding_norm``), then ``encoder.layers.{i}...``,
    ``pooler.dense.{weight,bias}`` [d, d] (when ``pooler``) and ``classifier.{weight,bias}``
    [n_labels, d] (with a ``head``).

    ``classify`` runs the head; ``forward_train`` / ``backward`` are the training passes
    (``cyformer.Trainer`` fits the heads with them).
    """

    _config_label = "encoder config"

    def __init__(self, config: EncoderConfig, seed: Optional[int] = 0, *,
                 params: Optional[np.ndarray] = None):
        self._compose(config)
        self.params = np.zeros(self._total(), dtype=np.float32) if params is None else params
        if params is None:
            self.init_parameters(seed)

    def _compose(self, config: EncoderConfig) -> None:
        """The layers and the buffer layout derived from their declarations (no buffer yet)."""
        if not isinstance(config, EncoderConfig):
            raise TypeError(f"config must be an EncoderConfig, not {type(config).__name__}")
        config.validate()
        self.config = c = config
        self.embeddings, self.embed_norm, self.encoder, self.pooler, self.head = _compose(c)
        if c.n_features:
            specs = list(self.embeddings.weights())
        else:
            specs = list(self.embeddings.token_weights()) + list(self.embeddings.position_weights())
        if c.type_vocab_size:
            specs.append(WeightSpec("embed_token_types.weight", (c.type_vocab_size, c.d_model), "position"))
        if self.embed_norm is not None:
            specs += list(self.embed_norm.weights())
        specs += list(self.encoder.weights())
        for layer in (self.pooler, self.head):
            if layer is not None:
                specs += list(layer.weights())
        self.weight_specs = derive_layout(specs)
        self.layout = [(s.name, s.shape) for s in self.weight_specs]
        self._local = threading.local()

    def _layers(self):
        return (self.embeddings, self.embed_norm, self.encoder, self.pooler, self.head)

    def _bound(self) -> None:
        self._types = self._views.get("embed_token_types.weight")

    @classmethod
    def empty(cls, config: EncoderConfig) -> "Encoder":
        """A model with zeroed parameters, to be filled by a loader."""
        return cls.with_params(config, None)

    @classmethod
    def with_params(cls, config: EncoderConfig, flat: Optional[np.ndarray]) -> "Encoder":
        """A model over ``flat`` (e.g. a memory-mapped file; None: zeros), no initialisation."""
        model = cls.__new__(cls)
        model._compose(config)
        model.params = np.zeros(model._total(), dtype=np.float32) if flat is None else flat
        return model

    # -- inference ---------------------------------------------------------------------------------
    def _batch(self, ids, lengths, mask=None, edges=None) -> Batch:
        """A Batch of token ids, or for a feature encoder a FeatureBatch of the vector sets
        ``ids`` (lists of [T, F] arrays or [B, T, F] with lengths), with the graph ``mask``
        [B, T, T] or ``edges`` (one [E, 2] edge list per example) when given."""
        c = self.config
        if mask is not None and edges is not None:
            raise ValueError("give a mask or edges, not both")
        if not c.n_features:
            if mask is not None or edges is not None:
                raise ValueError("mask / edges are for encoders of feature vectors (n_features > 0)")
            return make_batch(ids, lengths, vocab_size=c.vocab_size, max_len=c.max_len, name="ids")
        if edges is not None:
            from .features import adjacency_mask
            probe = make_feature_batch(ids, lengths, n_features=c.n_features, max_len=c.max_len, name="features")
            mask = adjacency_mask(edges, probe.length.tolist())
            probe.mask = mask
            return probe
        return make_feature_batch(ids, lengths, n_features=c.n_features, max_len=c.max_len, mask=mask,
                                  name="features")

    def _token_types(self, token_type_ids, batch: Batch) -> Optional[np.ndarray]:
        """Packed token-type ids [N] (None: type 0 everywhere, or no type table)."""
        n_types = self.config.type_vocab_size
        if token_type_ids is None:
            return None
        if not n_types:
            raise ValueError("token_type_ids given, but this encoder has no token-type embeddings "
                             "(type_vocab_size=0)")
        if isinstance(token_type_ids, (list, tuple)) and token_type_ids and \
                not isinstance(token_type_ids[0], (int, np.integer)):
            rows = [np.asarray(t) for t in token_type_ids]
            if len(rows) != batch.size:
                raise ValueError(f"token_type_ids has {len(rows)} rows, ids has {batch.size}")
            for b, (r, n) in enumerate(zip(rows, batch.length.tolist())):
                if r.ndim != 1 or len(r) < n:
                    raise ValueError(f"token_type_ids[{b}] must be a flat list of at least {n} ids")
            tt = np.concatenate([r[:n] for r, n in zip(rows, batch.length.tolist())])
        else:
            arr = np.asarray(token_type_ids)
            if arr.ndim == 1:
                arr = arr[None]
            if arr.ndim != 2 or arr.shape[0] != batch.size or arr.shape[1] < batch.max_length:
                raise ValueError(f"token_type_ids must be [batch={batch.size}, >= {batch.max_length}], "
                                 f"got shape {arr.shape}")
            mask = np.arange(arr.shape[1])[None, :] < batch.length[:, None]
            tt = arr[mask]
        if tt.size and (tt.dtype == np.bool_ or not np.issubdtype(tt.dtype, np.integer)):
            raise TypeError(f"token_type_ids must hold integers, got dtype {tt.dtype}")
        if tt.size and (tt.min() < 0 or tt.max() >= n_types):
            bad = tt.min() if tt.min() < 0 else tt.max()
            raise ValueError(f"token_type_ids holds {bad}, outside [0, {n_types})")
        return tt.astype(np.int64)

    def _forward_packed(self, batch: Batch, types: Optional[np.ndarray], ws: Workspace, nt: int,
                        probs: Optional[dict] = None) -> np.ndarray:
        x = ws.get("memory", len(batch.ids), self.config.d_model)
        if isinstance(batch, FeatureBatch):
            self.embeddings.forward(batch.features, batch.positions, x, nt)
        else:
            self.embeddings.forward(batch.ids, batch.positions, x, nt)
        if self._types is not None:
            if types is None:
                x += self._types[0]
            else:
                x += self._types[types]
        if self.embed_norm is not None:
            self.embed_norm.forward(x, None, x, nt)
        return self.encoder.forward(x, batch, ws, nt, probs)

    def forward(self, ids, lengths=None, token_type_ids=None, *, mask=None, edges=None) -> np.ndarray:
        """Hidden states [B, T, d_model] (zeros past each sequence's length).

        ``ids``: lists of id lists, or a padded [B, T] int array with ``lengths``;
        ``token_type_ids``: the same shape as ``ids`` (type 0 when omitted). For a model with
        ``n_features``, ``ids`` are the vector sets: a list of [T, F] float arrays or a padded
        [B, T, F] array with ``lengths``; ``edges`` (an [E, 2] node-pair list per example,
        undirected, self-loops added) or ``mask`` ([B, T, T], nonzero = may attend) restrict
        self-attention to a graph.
        """
        batch = self._batch(ids, lengths, mask, edges)
        types = self._token_types(token_type_ids, batch)
        nt = threads.get_num_threads()
        with threads.blas_single_threaded():
            h = self._forward_packed(batch, types, self._workspace(), nt)
            return batch.unpack(h)

    __call__ = forward

    def attention(self, ids, lengths=None, token_type_ids=None, *, layer: int = -1, mask=None,
                  edges=None) -> np.ndarray:
        """Self-attention weights of one layer (default the last): [B, n_heads, T, T], row i the
        distribution of position i over the positions of its sequence (zero where masked or
        past its length). Inputs as ``forward``."""
        n = self.config.n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
            raise ValueError(f"layer must be an index into the {n} layers, got {layer!r}")
        batch = self._batch(ids, lengths, mask, edges)
        types = self._token_types(token_type_ids, batch)
        t = batch.max_length
        probs = np.zeros((batch.size, self.config.n_heads, t, t), dtype=np.float32)
        nt = threads.get_num_threads()
        with threads.blas_single_threaded():
            self._forward_packed(batch, types, self._workspace(), nt, probs={int(layer) % n: probs})
        return probs

    def embed(self, ids, lengths=None, token_type_ids=None, *, pooling=None,
              normalize: Optional[bool] = None, mask=None, edges=None, prompt_length: int = 0) -> np.ndarray:
        """One vector per sequence [B, d_model] (or [B, k * d_model] for a list of k modes).

        ``pooling``: ``"mean"`` over the tokens, ``"cls"`` (the first token's state), ``"max"``,
        ``"pooler"`` (BERT's ``pooler_output``: the tanh pooler on the CLS state, for models with
        ``config.pooler``), or sentence-transformers' ``"mean_sqrt_len_tokens"`` (sum /
        sqrt(length)), ``"weightedmean"`` (token i weighted i + 1) and ``"lasttoken"``; a list
        concatenates them in order. ``normalize`` scales each vector to unit L2 norm. Both default
        to what the folder said (a sentence-transformers ``1_Pooling`` and ``Normalize``), else
        ``"mean"`` and False. ``prompt_length``: the first tokens of every sequence (a prompt's)
        are left out of the pooling, as sentence-transformers' ``include_prompt=False``.
        """
        pooling, normalize = self.pooling_defaults(pooling, normalize)
        batch = self._batch(ids, lengths, mask, edges)
        skip = _prompt_skip(prompt_length, batch, pooling)
        types = self._token_types(token_type_ids, batch)
        nt = threads.get_num_threads()
        with threads.blas_single_threaded():
            h = self._forward_packed(batch, types, self._workspace(), nt)
            segs = batch
            if skip:   # the rows after each sequence's first ``skip`` tokens, packed again
                h = h[batch.positions >= skip]
                length = batch.length - skip
                segs = _Segments(np.concatenate([[0], np.cumsum(length[:-1])]).astype(batch.start.dtype), length)
            out = pool_modes(h, segs, pooling, self.pooler, nt)
        if normalize:   # F.normalize's eps: a zero vector stays zero
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def pooling_defaults(self, pooling=None, normalize: Optional[bool] = None):
        """(pooling modes tuple, normalize) with None filled from the folder's sentence-transformers
        description (``config.extra["sentence_transformers"]``), else ("mean",) and False; checked."""
        st = self.config.extra.get("sentence_transformers") or {}
        if pooling is None:
            pooling = st.get("pooling") or "mean"
        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling) \
            if isinstance(pooling, (list, tuple)) else None
        if not modes or not all(isinstance(m, str) and m in POOLINGS for m in modes):
            raise ValueError(f"pooling must be one of {POOLINGS} (or a list of them), got {pooling!r}")
        if "pooler" in modes and self.pooler is None:
            raise ValueError("pooling='pooler' needs BERT's tanh pooler, and this model has none "
                             "(config.pooler is False); use 'cls', 'mean' or 'max'")
        if normalize is None:
            normalize = bool(st.get("normalize", False))
        if not isinstance(normalize, (bool, np.bool_)):
            raise TypeError(f"normalize must be a bool, not {type(normalize).__name__}")
        return modes, bool(normalize)

    def _require_head(self) -> None:
        if self.head is None:
            arch = self.config.extra.get("hf_architectures") or []
            source = f" (the checkpoint is a {', '.join(arch)})" if arch else ""
            raise ValueError(f"this encoder has no classification head{source}: config.head is None. "
                             f"Use forward() or embed(), or build a model with "
                             f"EncoderConfig(head='sequence_classification' or 'token_classification', "
                             f"n_labels=...) and train it (cyformer.Trainer)")

    def classify(self, ids, lengths=None, token_type_ids=None, *, mask=None, edges=None) -> np.ndarray:
        """Logits of the head: [B, n_labels] (sequence head) or [B, T, n_labels] (token head,
        zeros past each sequence's length). Class names: ``config.id2label``. Inputs as
        ``forward``."""
        self._require_head()
        batch = self._batch(ids, lengths, mask, edges)
        types = self._token_types(token_type_ids, batch)
        nt = threads.get_num_threads()
        with threads.blas_single_threaded():
            h = self._forward_packed(batch, types, self._workspace(), nt)
            logits = self.head.forward(h, batch, nt)
        if self.config.head == "token_classification":
            return batch.unpack(logits, copy=False)
        return logits

    # -- training passes (llm.c style: forward saves, backward accumulates into grads) ----------
    def forward_train(self, batch: Batch, types: Optional[np.ndarray], tc: TrainContext):
        """(output, record): the head's logits ([B, n_labels] or [N, n_labels], packed) or,
        without a head, the hidden states [N, d]; both are workspace buffers of ``tc``.
        ``types``: packed token-type ids [N] (None: type 0). Dropout sites in this order."""
        c = self.config
        n = len(batch.ids)
        x = tc.buf("enc.embed", n, c.d_model)
        if isinstance(batch, FeatureBatch):
            r_embed = self.embeddings.forward_train(batch.features, batch, x, tc)
        else:
            r_embed = self.embeddings.forward_train(batch, x, tc)
        if self._types is not None:
            x += self._types[0] if types is None else self._types[types]
        r_norm = None
        if self.embed_norm is not None:
            y = tc.buf("enc.embed_norm", n, c.d_model)
            r_norm = self.embed_norm.forward_train(x, None, y, tc)
            x = y
        site = tc.site()
        tc.drop(x, c.dropout, site)
        hidden, r_stack = self.encoder.forward_train(x, batch, tc)
        out, r_head = hidden, None
        if self.head is not None:
            out, r_head = self.head.forward_train(hidden, batch, tc)
        return out, EncoderRecord(batch, types, r_embed, r_norm, site, r_stack, hidden, r_head)

    def backward(self, rec: EncoderRecord, dout: np.ndarray, tc: TrainContext) -> None:
        """Accumulate every parameter's gradient into ``tc.grads`` from the gradient of
        ``forward_train``'s output (logits, or hidden states without a head)."""
        g, nt = tc.grads, tc.nt
        if self.head is not None:
            dx = tc.buf("enc.dhidden", *rec.hidden.shape)
            self.head.backward(rec.head, dout, dx, tc)
        else:
            dx = tc.buf("enc.dhidden", *rec.hidden.shape)
            dx[...] = dout
        self.encoder.backward(rec.stack, dx, tc)
        tc.drop(dx, self.config.dropout, rec.site)
        if rec.embed_norm is not None:
            self.embed_norm.backward(rec.embed_norm, dx, dx, g, nt)
        if self._types is not None:
            dtypes = g["embed_token_types.weight"]
            if rec.types is None:
                dtypes[0] += dx.sum(axis=0)
            else:
                np.add.at(dtypes, rec.types, dx)
        self.embeddings.backward(rec.embed, dx, tc)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str) -> None:
        """Write ``config.json`` + ``model.safetensors``, each atomically: in float32 the flat
        buffer as the data section; an encoder in int8 or bfloat16 writes its matrices (the token
        table included) in that form, as ``Transformer.save_pretrained`` does, loaded mapped."""
        self._save_weights(directory, {"format": MODEL_TYPE, "config": self.config.to_json()})
        self.config.save(os.path.join(directory, CONFIG_NAME))

    @classmethod
    def from_pretrained(cls, directory: str, mmap: bool = True, verify: bool = False,
                        compute_type: str = "default") -> "Encoder":
        """Load an encoder folder: our own (``model_type`` "cyformer-encoder", memory-mapped), a
        registered foreign format (Hugging Face ``bert``), or a sentence-transformers folder
        (``modules.json``: its Transformer module, with the pooling and normalisation that
        ``embed`` then uses by default, kept in ``config.extra["sentence_transformers"]``).
        ``compute_type``: as ``Transformer.from_pretrained`` (the linear layers, the heads included)."""
        from .convert.sbert import transformer_folder
        from .io import read_json
        resolve_compute_type(compute_type)   # a bad or unsupported type fails before any reading
        directory = os.fspath(directory)
        require_model_folder(directory)
        folder, st = transformer_folder(directory)
        cfg_path = os.path.join(folder, CONFIG_NAME)
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}")
        raw = read_json(cfg_path, expect=dict)
        model_type = raw.get("model_type") or "cyformer"
        model = loader_for(model_type, cfg_path, kind="encoder")(folder, raw, mmap=mmap, verify=verify)
        if st is not None:
            model.config.extra["sentence_transformers"] = st.to_extra()
        # "default": as the loader made it, a converted folder's float32 matrices read in now
        if compute_type != "default" or getattr(model, "_float_source", None):
            model.set_compute_type(compute_type)
        return model


@register_loader(MODEL_TYPE, kind="encoder")
def _load_encoder(directory: str, raw, mmap: bool = True, verify: bool = False) -> Encoder:
    config = EncoderConfig.from_dict(raw)
    probe = Encoder.__new__(Encoder)
    probe._compose(config)   # the layout, without a buffer
    return load_own_weights(directory, Encoder, config, probe.layout, mmap=mmap, verify=verify)
