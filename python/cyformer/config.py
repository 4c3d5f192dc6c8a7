"""TransformerConfig: every hyper-parameter of the encoder-decoder model, validated."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from ._engine.ffn import ACTIVATION_NAMES as ACTIVATIONS  # the one table: engine/activation_table.h
POSITIONALS = ("sinusoidal", "learned", "none")
SINUSOIDAL_LAYOUTS = ("interleaved", "halves")


class JsonConfig:
    """A config dataclass's JSON round trip: ``model_type`` names its kind, unknown fields are
    refused, reads are bounded (``io.read_json``) and writes atomic."""

    MODEL_TYPE = "cyformer"

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_type"] = self.MODEL_TYPE
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]):
        if not isinstance(d, dict):
            raise TypeError("config must be a JSON object")
        d = dict(d)
        d.pop("model_type", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        from .io import parse_json
        # bounded nesting; bad JSON is a CheckpointError (a ValueError) "config is not valid JSON"
        return cls.from_dict(parse_json(text, "config"))

    def save(self, path: str) -> None:
        from .io import atomic_write_bytes
        atomic_write_bytes(path, (self.to_json() + "\n").encode())

    @classmethod
    def load(cls, path: str):
        from .io import read_json
        return cls.from_dict(read_json(path, expect=dict))   # bounded; errors name the file


@dataclass
class TransformerConfig(JsonConfig):
    """Hyper-parameters of an encoder-decoder Transformer ("Attention Is All You Need").

    Defaults are the paper's base model with a 32k shared vocabulary. ``norm_first=False``
    is the paper's post-LN (``x = LN(x + sublayer(x))``); ``True`` is pre-LN. ``final_norm``
    adds a LayerNorm after each stack (``None``: only for pre-LN; PyTorch's
    ``nn.Transformer`` always has one). ``positional`` is ``'sinusoidal'`` (fixed,
    ``sinusoidal_layout`` 'interleaved' as in the paper or 'halves' as in Marian),
    ``'learned'`` (a ``[max_len, d_model]`` table per side) or ``'none'``.
    ``scale_embedding`` multiplies token embeddings by sqrt(d_model).
    ``share_embeddings`` ties the source and target embeddings (one table);
    ``tie_output`` ties the target embedding and the output projection (pre-softmax
    linear). Both together are the paper's single shared matrix. ``forced_eos`` makes
    generation end with EOS when it reaches ``max_length`` (Hugging Face's
    ``forced_eos_token_id``, which Marian checkpoints set). ``dropout`` applies to the
    embeddings and every sublayer's output, ``attention_dropout`` to the attention weights
    and ``activation_dropout`` inside the FFN (``None``: the same as ``dropout``, as in
    ``nn.Transformer``); dropout acts only in training. ``n_src_features`` > 0 makes the
    sources sets of float vectors (speech frames, say) through a learned projection plus
    the source positions, instead of token ids (``src_vocab_size`` is then unused).
    """

    src_vocab_size: int = 32000
    tgt_vocab_size: Optional[int] = None
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    max_len: int = 512
    norm_first: bool = False
    final_norm: Optional[bool] = None
    activation: str = "relu"
    positional: str = "sinusoidal"
    sinusoidal_layout: str = "interleaved"
    scale_embedding: bool = True
    share_embeddings: bool = False
    tie_output: bool = True
    output_bias: bool = False
    dropout: float = 0.1
    attention_dropout: Optional[float] = None
    activation_dropout: Optional[float] = None
    layer_norm_eps: float = 1e-5
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    decoder_start_id: Optional[int] = None
    forced_eos: bool = False
    unk_id: Optional[int] = None   # the target <unk> id, for generate(disable_unk=True)
    n_src_features: int = 0        # > 0: sources are float vectors [S, n_src_features], not ids
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tgt_vocab_size is None:
            self.tgt_vocab_size = self.src_vocab_size
        if self.final_norm is None:
            self.final_norm = self.norm_first
        if self.decoder_start_id is None:
            self.decoder_start_id = self.bos_id
        # nn.Transformer uses one rate everywhere; Marian sets the three separately.
        if self.attention_dropout is None:
            self.attention_dropout = self.dropout
        if self.activation_dropout is None:
            self.activation_dropout = self.dropout
        self.validate()

    @property
    def d_k(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        def positive_int(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"TransformerConfig.{name} must be an int, not {type(v).__name__}")
            if v < 0 or (v == 0 and not allow_zero):
                raise ValueError(f"TransformerConfig.{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")

        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
            positive_int(name)
        for name in ("n_encoder_layers", "n_decoder_layers"):
            positive_int(name, allow_zero=True)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("norm_first", "final_norm", "scale_embedding", "share_embeddings", "tie_output",
                     "output_bias", "forced_eos"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TransformerConfig.{name} must be a bool")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.positional not in POSITIONALS:
            raise ValueError(f"positional must be one of {POSITIONALS}, got {self.positional!r}")
        if self.sinusoidal_layout not in SINUSOIDAL_LAYOUTS:
            raise ValueError(f"sinusoidal_layout must be one of {SINUSOIDAL_LAYOUTS}, "
                             f"got {self.sinusoidal_layout!r}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(f"share_embeddings needs equal vocabularies, got "
                             f"src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        v = self.n_src_features
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"n_src_features must be an int >= 0, got {v!r}")
        if v and self.share_embeddings:
            raise ValueError("share_embeddings needs token sources; a model of source feature vectors "
                             "(n_src_features > 0) has no source token table to share")
        if self.unk_id is not None:
            if isinstance(self.unk_id, bool) or not isinstance(self.unk_id, int):
                raise TypeError("TransformerConfig.unk_id must be an int or None")
            if not 0 <= self.unk_id < self.tgt_vocab_size:
                raise ValueError(f"unk_id={self.unk_id} is outside the vocabulary [0, {self.tgt_vocab_size})")
        for name in ("pad_id", "bos_id", "eos_id", "decoder_start_id"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"TransformerConfig.{name} must be an int")
            # pad pads both sides; the others are target-side tokens.
            limit = min(self.src_vocab_size, self.tgt_vocab_size) if name == "pad_id" else self.tgt_vocab_size
            if not 0 <= v < limit:
                raise ValueError(f"{name}={v} is outside the vocabulary [0, {limit})")
