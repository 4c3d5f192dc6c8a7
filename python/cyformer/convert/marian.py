"""Hugging Face MarianMT folders (``config.json`` with ``model_type: "marian"`` + weights).

Marian is the paper's post-LN Transformer with: token embeddings scaled by sqrt(d_model)
(``scale_embedding``), a fixed sinusoidal table whose sines fill the first half of each
vector and cosines the second (not interleaved; often absent from the file, so it is
recomputed), source, target and output embeddings tied, ``final_logits_bias`` added to
the logits, separate q/k/v projections (fused here into ``in_proj_weight``), and the
pad token doubling as the decoder start token.
"""
from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np

from ..config import TransformerConfig
from ..io import CheckpointError, load_safetensors, read_json
from .registry import register_exporter, register_loader

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu",
                "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def marian_config(hf: Dict) -> TransformerConfig:
    """Our config for a Hugging Face MarianConfig dict."""
    def get(key, default=None):
        return hf.get(key, default)

    act = get("activation_function", "swish")
    if act not in _ACTIVATIONS:
        raise ValueError(f"Marian activation_function {act!r} is not supported ({sorted(_ACTIVATIONS)})")
    if get("normalize_before", False) or get("add_final_layer_norm", False):
        raise ValueError("pre-LN Marian variants (normalize_before / add_final_layer_norm) are not supported")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
                 ("encoder_ffn_dim", "decoder_ffn_dim")):
        if get(a) != get(b):
            raise ValueError(f"Marian config has {a}={get(a)} but {b}={get(b)}; cyformer needs them equal")
    vocab = int(get("vocab_size"))
    tgt_vocab = int(get("decoder_vocab_size") or vocab)
    share = bool(get("share_encoder_decoder_embeddings", True)) and tgt_vocab == vocab
    pad = int(get("pad_token_id", vocab - 1))
    start = get("decoder_start_token_id")
    start = pad if start is None else int(start)
    return TransformerConfig(
        src_vocab_size=vocab, tgt_vocab_size=tgt_vocab, d_model=int(get("d_model")),
        n_heads=int(get("encoder_attention_heads")), d_ff=int(get("encoder_ffn_dim")),
        n_encoder_layers=int(get("encoder_layers")), n_decoder_layers=int(get("decoder_layers")),
        max_len=int(get("max_position_embeddings", 512)), norm_first=False, final_norm=False,
        activation=_ACTIVATIONS[act], positional="sinusoidal", sinusoidal_layout="halves",
        scale_embedding=bool(get("scale_embedding", True)), share_embeddings=share,
        tie_output=bool(get("tie_word_embeddings", True)), output_bias=True,
        dropout=float(get("dropout", 0.1)),
        attention_dropout=float(get("attention_dropout", 0.0)),
        activation_dropout=float(get("activation_dropout", 0.0)), layer_norm_eps=1e-5, pad_id=pad,
        bos_id=start, eos_id=int(get("eos_token_id", 0)), decoder_start_id=start,
        forced_eos=get("forced_eos_token_id") is not None and get("forced_eos_token_id") == get("eos_token_id", 0),
        extra={"source_format": "marian"})


def _layer_names(config: TransformerConfig):
    """(ours, theirs, kind) for every per-layer tensor group: kind 'attention' names a module
    whose q/k/v are fused here, 'plain' a single tensor. Marian names lack the 'model.' prefix."""
    for side, n, norms in (("encoder", config.n_encoder_layers, ("self_attn_layer_norm", "final_layer_norm")),
                           ("decoder", config.n_decoder_layers,
                            ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"))):
        for i in range(n):
            p = f"{side}.layers.{i}"
            yield f"{p}.self_attn", f"{p}.self_attn", "attention"
            if side == "decoder":
                yield f"{p}.multihead_attn", f"{p}.encoder_attn", "attention"
            for k, norm in enumerate(norms, start=1):
                for w in ("weight", "bias"):
                    yield f"{p}.norm{k}.{w}", f"{p}.{norm}.{w}", "plain"
            for ours, theirs in (("linear1", "fc1"), ("linear2", "fc2")):
                for w in ("weight", "bias"):
                    yield f"{p}.{ours}.{w}", f"{p}.{theirs}.{w}", "plain"


def _strip(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


def marian_tensors(hf_tensors: Dict[str, np.ndarray], config: TransformerConfig) -> Dict[str, np.ndarray]:
    """Map Marian tensor names onto ours (q/k/v fused; positions and tied copies dropped)."""
    return {name: (np.concatenate([a for _, a in v], axis=0) if isinstance(v, list) else v)
            for name, v in marian_parts(hf_tensors, config).items()}


def marian_parts(hf_tensors: Dict[str, np.ndarray], config: TransformerConfig) -> Dict[str, object]:
    """``marian_tensors`` without copies: each of our tensors as the file's array, or for a fused
    q/k/v matrix or bias as row blocks [(first row, array)] that the loader writes (or quantizes)
    straight into place, so loading holds no second copy of the model."""
    src = {_strip(k): v for k, v in hf_tensors.items()}
    out: Dict[str, object] = {}
    used = set()

    def take(name: str) -> np.ndarray:
        if name not in src:
            raise KeyError(name)
        used.add(name)
        return src[name]

    def first_of(*names: str) -> np.ndarray:
        for n in names:
            if n in src:
                return take(n)
        raise CheckpointError(f"Marian weights have none of {', '.join(names)}")

    missing = []

    def attention(ours: str, theirs: str) -> None:
        try:
            for kind in ("weight", "bias"):
                blocks = [take(f"{theirs}.{p}_proj.{kind}") for p in "qkv"]
                starts = np.cumsum([0] + [len(b) for b in blocks[:-1]])
                out[f"{ours}.in_proj_{kind}"] = [(int(r0), b) for r0, b in zip(starts, blocks)]
            out[f"{ours}.out_proj.weight"] = take(f"{theirs}.out_proj.weight")
            out[f"{ours}.out_proj.bias"] = take(f"{theirs}.out_proj.bias")
        except KeyError as e:
            missing.append(str(e.args[0]))

    def plain(ours: str, theirs: str) -> None:
        try:
            out[ours] = take(theirs)
        except KeyError as e:
            missing.append(str(e.args[0]))

    shared = first_of("shared.weight", "encoder.embed_tokens.weight")
    out["encoder.embed_tokens.weight"] = shared
    if not config.share_embeddings:
        out["decoder.embed_tokens.weight"] = first_of("decoder.embed_tokens.weight")
    for ours, theirs, kind in _layer_names(config):
        (attention if kind == "attention" else plain)(ours, theirs)
    if not config.tie_output:
        plain("output_projection.weight", "lm_head.weight")
    try:
        out["output_projection.bias"] = take("final_logits_bias").reshape(-1)
    except KeyError:
        out["output_projection.bias"] = np.zeros(config.tgt_vocab_size, dtype=np.float32)
    if missing:
        raise CheckpointError("Marian weights are missing: " + ", ".join(missing))
    # Tied copies and the fixed sinusoidal tables carry nothing of their own.
    ignorable = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight",
                 "encoder.embed_positions.weight", "decoder.embed_positions.weight", "shared.weight"}
    unexpected = sorted(set(src) - used - ignorable)
    if unexpected:
        raise CheckpointError("Marian weights have unexpected tensors: " + ", ".join(unexpected))
    return out


@register_loader("marian")
def _load_marian_folder(directory: str, raw_config: Dict, mmap: bool = True, verify: bool = False):
    # the matrices stay in the mapped file until from_pretrained sets the compute type: float32
    # copies them into the buffer, int8 / bf16 converts them from the file, block by block
    return _marian_model(directory)


def load_marian(directory: str):
    """Load a Hugging Face MarianMT folder as a float32 ``cyformer.Transformer``."""
    model = _marian_model(directory)
    model.set_compute_type("float32")
    return model


def _marian_model(directory: str):
    from ..model import Transformer

    hf = read_json(os.path.join(directory, "config.json"), expect=dict)   # bounded size and nesting
    config = marian_config(hf)
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, "pytorch_model.bin")):
            raise ValueError(f"{directory} holds pytorch_model.bin; cyformer reads model.safetensors "
                             f"(re-save with save_pretrained(..., safe_serialization=True))")
        raise FileNotFoundError(f"{directory} has no model.safetensors")
    model = Transformer.empty(config)
    model._load_lazily(marian_parts(load_safetensors(path), config))
    return model


_EXPORT_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "silu": "swish", "gelu_tanh": "gelu_new"}


def marian_export_config(config: TransformerConfig) -> Dict:
    """The Hugging Face MarianConfig dict for our config; ValueError for what Marian cannot hold."""
    c = config
    problems = []
    if c.norm_first or c.final_norm:
        problems.append("Marian is post-LN without final norms (norm_first=False, final_norm=False)")
    if c.positional != "sinusoidal" or c.sinusoidal_layout != "halves":
        problems.append("Marian uses the sinusoidal table with sines and cosines in halves "
                        "(positional='sinusoidal', sinusoidal_layout='halves')")
    if not c.tie_output:
        problems.append("Marian ties the output projection to the target embedding (tie_output=True)")
    if c.activation not in _EXPORT_ACTIVATIONS:
        problems.append(f"activation {c.activation!r} has no Marian name")
    if problems:
        raise ValueError("this model cannot be written as a MarianMT folder: " + "; ".join(problems))
    return {
        "model_type": "marian", "architectures": ["MarianMTModel"],
        "vocab_size": c.src_vocab_size, "decoder_vocab_size": c.tgt_vocab_size,
        "share_encoder_decoder_embeddings": c.share_embeddings, "tie_word_embeddings": True,
        "d_model": c.d_model, "encoder_layers": c.n_encoder_layers, "decoder_layers": c.n_decoder_layers,
        "encoder_attention_heads": c.n_heads, "decoder_attention_heads": c.n_heads,
        "encoder_ffn_dim": c.d_ff, "decoder_ffn_dim": c.d_ff, "max_position_embeddings": c.max_len,
        "activation_function": _EXPORT_ACTIVATIONS[c.activation], "scale_embedding": c.scale_embedding,
        "dropout": c.dropout, "attention_dropout": c.attention_dropout,
        "activation_dropout": c.activation_dropout, "init_std": 0.02, "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0, "use_cache": True, "is_encoder_decoder": True,
        "pad_token_id": c.pad_id, "eos_token_id": c.eos_id, "bos_token_id": c.bos_id,
        "decoder_start_token_id": c.decoder_start_id,
        "forced_eos_token_id": c.eos_id if c.forced_eos else None,
        "normalize_before": False, "add_final_layer_norm": False, "normalize_embedding": False,
        "static_position_embeddings": True,
    }


@register_exporter("marian")
def save_marian(model, directory: str) -> None:
    """Write ``model`` as a Hugging Face MarianMT folder (config.json + model.safetensors).

    The fused Q/K/V projections are split back into q/k/v, the output bias becomes
    ``final_logits_bias``, so ``MarianMTModel.from_pretrained`` (and CTranslate2's converter)
    read the folder as is.
    """
    from ..io import atomic_write_bytes, save_safetensors

    c = model.config
    hf_config = marian_export_config(c)
    v = model.parameters()
    d = c.d_model
    out: Dict[str, np.ndarray] = {}
    # Tied copies (encoder/decoder embed_tokens, lm_head) and the fixed sinusoidal tables
    # are left out, as transformers' own save_pretrained does; it re-ties and recomputes them.
    if c.share_embeddings:
        out["model.shared.weight"] = v["encoder.embed_tokens.weight"]
    else:
        out["model.encoder.embed_tokens.weight"] = v["encoder.embed_tokens.weight"]
        out["model.decoder.embed_tokens.weight"] = v["decoder.embed_tokens.weight"]

    def attention(ours: str, theirs: str) -> None:
        w, b = v[f"{ours}.in_proj_weight"], v[f"{ours}.in_proj_bias"]
        for i, p in enumerate("qkv"):
            out[f"{theirs}.{p}_proj.weight"] = w[i * d:(i + 1) * d]
            out[f"{theirs}.{p}_proj.bias"] = b[i * d:(i + 1) * d]
        out[f"{theirs}.out_proj.weight"] = v[f"{ours}.out_proj.weight"]
        out[f"{theirs}.out_proj.bias"] = v[f"{ours}.out_proj.bias"]

    for ours, theirs, kind in _layer_names(c):
        if kind == "attention":
            attention(ours, f"model.{theirs}")
        else:
            out[f"model.{theirs}"] = v[ours]
    bias = v.get("output_projection.bias")
    out["final_logits_bias"] = (np.zeros((1, c.tgt_vocab_size), np.float32) if bias is None
                                else bias.reshape(1, -1))
    os.makedirs(directory, exist_ok=True)
    save_safetensors(os.path.join(directory, "model.safetensors"),
                     {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in out.items()}, {"format": "pt"})
    atomic_write_bytes(os.path.join(directory, "config.json"), (json.dumps(hf_config, indent=2) + "\n").encode())
    gen = {"decoder_start_token_id": c.decoder_start_id, "eos_token_id": c.eos_id, "pad_token_id": c.pad_id,
           "bad_words_ids": [[c.pad_id]], "forced_eos_token_id": c.eos_id if c.forced_eos else None,
           "max_length": c.max_len, "num_beams": 4}
    atomic_write_bytes(os.path.join(directory, "generation_config.json"), (json.dumps(gen, indent=2) + "\n").encode())
