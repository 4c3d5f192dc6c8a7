"""Hugging Face BERT folders (``model_type: "bert"``) -> ``cyformer.Encoder``.

Reads ``config.json`` and ``model.safetensors`` of a ``BertModel`` (names ``embeddings.*``,
``encoder.layer.{i}.*``) or of a ``BertFor*`` model (the same under ``bert.``); the
separate query/key/value projections are stacked into the fused in-projection. The pooler
and any head are not read yet (heads are a later part of issue 11).
"""
from __future__ import annotations

import os

import numpy as np

from ..io import CheckpointError, load_safetensors
from .registry import register_loader

_SUPPORTED_ACTS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_pytorch_tanh",
                   "relu": "relu", "silu": "silu", "swish": "swish"}


def bert_config(raw: dict, where: str = "config.json"):
    """An ``EncoderConfig`` from a Hugging Face BertConfig dict."""
    from ..encoder import EncoderConfig

    def need(key):
        if key not in raw:
            raise CheckpointError(f"{where}: BERT config has no {key!r}")
        return raw[key]

    pos = raw.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type {pos!r} is not supported (only 'absolute')")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise CheckpointError(f"{where}: a BERT decoder (is_decoder / add_cross_attention) is not supported")
    act = raw.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _SUPPORTED_ACTS:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported")
    pad = raw.get("pad_token_id")
    return EncoderConfig(
        vocab_size=need("vocab_size"), d_model=need("hidden_size"), n_heads=need("num_attention_heads"),
        d_ff=need("intermediate_size"), n_layers=need("num_hidden_layers"),
        max_len=need("max_position_embeddings"), type_vocab_size=raw.get("type_vocab_size", 2),
        embedding_norm=True, norm_first=False, activation=_SUPPORTED_ACTS[act],
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        dropout=float(raw.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(raw.get("attention_probs_dropout_prob", 0.1)),
        pad_id=pad if isinstance(pad, int) and not isinstance(pad, bool) else 0,
        extra={"hf_architectures": raw.get("architectures") or []})


def bert_to_cyformer_names(config) -> dict:
    """cyformer name -> BERT name (without a ``bert.`` prefix); in_proj entries map to a triple."""
    m = {"embed_tokens.weight": "embeddings.word_embeddings.weight",
         "embed_positions.weight": "embeddings.position_embeddings.weight",
         "embed_norm.weight": "embeddings.LayerNorm.weight",
         "embed_norm.bias": "embeddings.LayerNorm.bias"}
    if config.type_vocab_size:
        m["embed_token_types.weight"] = "embeddings.token_type_embeddings.weight"
    for i in range(config.n_layers):
        c, h = f"encoder.layers.{i}", f"encoder.layer.{i}"
        for kind in ("weight", "bias"):
            m[f"{c}.self_attn.in_proj_{kind}"] = tuple(f"{h}.attention.self.{p}.{kind}"
                                                       for p in ("query", "key", "value"))
            m[f"{c}.self_attn.out_proj.{kind}"] = f"{h}.attention.output.dense.{kind}"
            m[f"{c}.norm1.{kind}"] = f"{h}.attention.output.LayerNorm.{kind}"
            m[f"{c}.linear1.{kind}"] = f"{h}.intermediate.dense.{kind}"
            m[f"{c}.linear2.{kind}"] = f"{h}.output.dense.{kind}"
            m[f"{c}.norm2.{kind}"] = f"{h}.output.LayerNorm.{kind}"
    return m


@register_loader("bert", kind="encoder")
def load_bert(directory: str, raw, mmap: bool = True, verify: bool = False):
    """A Hugging Face BERT folder as an ``Encoder`` (weights copied into the flat buffer)."""
    from ..encoder import Encoder
    cfg_path = os.path.join(directory, "config.json")
    config = bert_config(raw, cfg_path)
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, "pytorch_model.bin")):
            raise FileNotFoundError(f"{directory} holds pytorch_model.bin only; save the model with "
                                    f"safe_serialization=True (model.safetensors)")
        if os.path.exists(os.path.join(directory, "model.safetensors.index.json")):
            raise FileNotFoundError(f"{directory}: sharded checkpoints are not supported yet")
        raise FileNotFoundError(f"{directory} has no model.safetensors")
    tensors = load_safetensors(path, mmap=mmap)
    prefix = "bert." if any(k.startswith("bert.embeddings.") for k in tensors) else ""

    def get(name):
        return tensors.get(prefix + name)

    names = bert_to_cyformer_names(config)
    missing = []
    for ours, theirs in names.items():
        for t in (theirs if isinstance(theirs, tuple) else (theirs,)):
            if get(t) is None:
                missing.append(prefix + t)
    if missing:
        raise CheckpointError(f"{path}: BERT weights missing: {', '.join(missing)}")
    model = Encoder.empty(config)
    state = {}
    for ours, theirs in names.items():
        if isinstance(theirs, tuple):
            state[ours] = np.concatenate([np.asarray(get(t), dtype=np.float32) for t in theirs], axis=0)
        else:
            state[ours] = np.asarray(get(theirs), dtype=np.float32)
    model.load_state_dict(state)
    return model
