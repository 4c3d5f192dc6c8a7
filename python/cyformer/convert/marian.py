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
from ..io import CheckpointError, load_safetensors

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


def _strip(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


def marian_tensors(hf_tensors: Dict[str, np.ndarray], config: TransformerConfig) -> Dict[str, np.ndarray]:
    """Map Marian tensor names onto ours (q/k/v fused; positions and tied copies dropped)."""
    src = {_strip(k): v for k, v in hf_tensors.items()}
    out: Dict[str, np.ndarray] = {}
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
            out[f"{ours}.in_proj_weight"] = np.concatenate(
                [take(f"{theirs}.{p}_proj.weight") for p in "qkv"], axis=0)
            out[f"{ours}.in_proj_bias"] = np.concatenate([take(f"{theirs}.{p}_proj.bias") for p in "qkv"])
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
    for side, n, norms in (("encoder", config.n_encoder_layers, ("self_attn_layer_norm", "final_layer_norm")),
                           ("decoder", config.n_decoder_layers,
                            ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"))):
        for i in range(n):
            o, t = f"{side}.layers.{i}", f"{side}.layers.{i}"
            attention(f"{o}.self_attn", f"{t}.self_attn")
            if side == "decoder":
                attention(f"{o}.multihead_attn", f"{t}.encoder_attn")
            for k, norm in enumerate(norms, start=1):
                for p in ("weight", "bias"):
                    plain(f"{o}.norm{k}.{p}", f"{t}.{norm}.{p}")
            for ours, theirs in (("linear1", "fc1"), ("linear2", "fc2")):
                for p in ("weight", "bias"):
                    plain(f"{o}.{ours}.{p}", f"{t}.{theirs}.{p}")
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


def load_marian(directory: str):
    """Load a Hugging Face MarianMT folder as a ``cyformer.Transformer``."""
    from ..model import Transformer

    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    config = marian_config(hf)
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, "pytorch_model.bin")):
            raise ValueError(f"{directory} holds pytorch_model.bin; cyformer reads model.safetensors "
                             f"(re-save with save_pretrained(..., safe_serialization=True))")
        raise FileNotFoundError(f"{directory} has no model.safetensors")
    model = Transformer.empty(config)
    model.load_state_dict(marian_tensors(load_safetensors(path), config))
    return model
