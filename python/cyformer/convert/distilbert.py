"""Hugging Face DistilBERT folders (``model_type: "distilbert"``) -> ``cyformer.Encoder``.

BERT's layers under other names (``transformer.layer.{i}.attention.{q,k,v,out}_lin``,
``sa_layer_norm``, ``ffn.lin1`` / ``ffn.lin2``, ``output_layer_norm``), no token types and
a LayerNorm eps of 1e-12. ``DistilBertForSequenceClassification``'s ``pre_classifier`` +
ReLU on the first token is our pooler with ``pooler_activation="relu"``, its dropout
``seq_classif_dropout``; ``DistilBertForTokenClassification`` is a token head.
"""
from __future__ import annotations

import os

from ..io import CheckpointError, load_safetensors
from .bert import _SUPPORTED_ACTS, _head_fields, encoder_from_tensors, layer_names, weights_file
from .registry import register_loader


def distilbert_config(raw: dict, where: str = "config.json", *, pooler: bool = False):
    """An ``EncoderConfig`` from a Hugging Face DistilBertConfig dict."""
    from ..encoder import EncoderConfig

    def need(key):
        if key not in raw:
            raise CheckpointError(f"{where}: DistilBERT config has no {key!r}")
        return raw[key]

    act = raw.get("activation", "gelu")
    if not isinstance(act, str) or act not in _SUPPORTED_ACTS:
        raise CheckpointError(f"{where}: activation {act!r} is not supported")
    pad = raw.get("pad_token_id")
    heads = _head_fields(raw, where)
    # the sequence head's dropout is seq_classif_dropout; the token head's is dropout
    heads.pop("classifier_dropout", None)
    dropout = float(raw.get("dropout", 0.1))
    classifier_dropout = float(raw.get("seq_classif_dropout", 0.2)) if heads["head"] == "sequence_classification" \
        else dropout
    extra = {"hf_architectures": raw.get("architectures") or []}
    if raw.get("problem_type"):
        extra["problem_type"] = raw["problem_type"]
    if raw.get("sinusoidal_pos_embds"):
        extra["sinusoidal_positions"] = True   # the table is stored in the file; it is loaded as weights
    try:
        return EncoderConfig(
            vocab_size=need("vocab_size"), d_model=need("dim"), n_heads=need("n_heads"), d_ff=need("hidden_dim"),
            n_layers=need("n_layers"), max_len=need("max_position_embeddings"), type_vocab_size=0,
            embedding_norm=True, norm_first=False, activation=_SUPPORTED_ACTS[act], layer_norm_eps=1e-12,
            dropout=dropout, attention_dropout=float(raw.get("attention_dropout", 0.1)),
            pad_id=pad if isinstance(pad, int) and not isinstance(pad, bool) else 0,
            pooler=pooler, pooler_activation="relu", pooling="cls", classifier_dropout=classifier_dropout,
            extra=extra, **heads)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


DISTILBERT_LAYER_NAMES = {"self_attn.in_proj": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
                          "self_attn.out_proj": "attention.out_lin", "norm1": "sa_layer_norm",
                          "linear1": "ffn.lin1", "linear2": "ffn.lin2", "norm2": "output_layer_norm"}


def distilbert_to_cyformer_names(config) -> dict:
    """cyformer name -> DistilBERT name (without a ``distilbert.`` prefix)."""
    m = {"embed_tokens.weight": "embeddings.word_embeddings.weight",
         "embed_positions.weight": "embeddings.position_embeddings.weight",
         "embed_norm.weight": "embeddings.LayerNorm.weight",
         "embed_norm.bias": "embeddings.LayerNorm.bias"}
    m.update(layer_names(config.n_layers, "transformer.layer", DISTILBERT_LAYER_NAMES))
    return m


@register_loader("distilbert", kind="encoder")
def load_distilbert(directory: str, raw, mmap: bool = True, verify: bool = False):
    """A Hugging Face DistilBERT folder as an ``Encoder``, with its sequence or token head."""
    cfg_path = os.path.join(directory, "config.json")
    distilbert_config(raw, cfg_path)   # refuse a config we cannot run before reading weights
    path = weights_file(directory)
    tensors = load_safetensors(path, mmap=mmap)
    prefix = "distilbert." if any(k.startswith("distilbert.embeddings.") for k in tensors) else ""
    config = distilbert_config(raw, cfg_path,
                               pooler=_head_fields(raw, cfg_path)["head"] == "sequence_classification")
    heads = {}
    if config.pooler:
        heads.update({f"pooler.dense.{k}": f"pre_classifier.{k}" for k in ("weight", "bias")})
    if config.head is not None:
        heads.update({f"classifier.{k}": f"classifier.{k}" for k in ("weight", "bias")})
    return encoder_from_tensors(path, tensors, prefix, config, distilbert_to_cyformer_names(config), heads,
                                "DistilBERT")
