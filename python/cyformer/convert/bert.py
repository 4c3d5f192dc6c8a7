"""Hugging Face BERT-layout folders -> ``cyformer.Encoder``.

``model_type: "bert"``: ``BertModel`` (names ``embeddings.*``, ``encoder.layer.{i}.*``,
``pooler.dense.*``) and ``BertFor*`` (the same under ``bert.``). The separate query/key/value
projections are stacked into the fused in-projection. ``BertForSequenceClassification``
loads with its tanh pooler and ``classifier`` as the sequence head,
``BertForTokenClassification`` with its token head; other ``BertFor*`` (masked LM, question
answering, ...) load their encoder (and pooler) without a head.

``model_type: "roberta"`` / ``"xlm-roberta"`` / ``"camembert"``: the same layer layout under
``roberta.``. Their positions start at ``pad_token_id + 1``, so the position table is
loaded from that row on (``max_len`` = ``max_position_embeddings - pad_token_id - 1``) and
no new layer is needed; ``*ForSequenceClassification``'s head (``classifier.dense`` + tanh on
the first token, then ``classifier.out_proj``) is BERT's pooler + classifier under other names.
"""
from __future__ import annotations

import os

import numpy as np

from ..io import CheckpointError, load_safetensors
from .registry import register_loader

_SUPPORTED_ACTS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_pytorch_tanh",
                   "relu": "relu", "silu": "silu", "swish": "swish"}


SEQUENCE_HEADS = {"BertForSequenceClassification", "RobertaForSequenceClassification",
                  "XLMRobertaForSequenceClassification", "CamembertForSequenceClassification"}
TOKEN_HEADS = {"BertForTokenClassification", "RobertaForTokenClassification",
               "XLMRobertaForTokenClassification", "CamembertForTokenClassification"}
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")


def _head_fields(raw: dict, where: str) -> dict:
    """head, n_labels, id2label, classifier_dropout from a Hugging Face config."""
    arch = raw.get("architectures") or []
    arch = [a for a in arch if isinstance(a, str)] if isinstance(arch, list) else []
    head = None
    if any(a in SEQUENCE_HEADS for a in arch):
        head = "sequence_classification"
    elif any(a in TOKEN_HEADS for a in arch):
        head = "token_classification"
    fields = {"head": head}
    id2label = raw.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            fields["id2label"] = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError):
            raise CheckpointError(f"{where}: id2label keys must be class indices, got "
                                  f"{sorted(map(str, id2label))[:5]}") from None
        fields["n_labels"] = len(id2label)
    elif isinstance(raw.get("num_labels"), int) and not isinstance(raw.get("num_labels"), bool):
        fields["n_labels"] = raw["num_labels"]
    if raw.get("classifier_dropout") is not None:
        fields["classifier_dropout"] = float(raw["classifier_dropout"])
    return fields


def bert_config(raw: dict, where: str = "config.json", *, pooler: bool = False):
    """An ``EncoderConfig`` from a Hugging Face BertConfig (or RobertaConfig) dict; ``pooler``:
    whether the checkpoint holds the tanh pooler. The head follows ``architectures``."""
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
    pad = pad if isinstance(pad, int) and not isinstance(pad, bool) else 0
    max_len = need("max_position_embeddings")
    if raw.get("model_type") in ROBERTA_TYPES:
        max_len -= _position_offset(raw)
        if max_len < 1:
            raise CheckpointError(f"{where}: max_position_embeddings leaves no position after the "
                                  f"offset pad_token_id + 1 = {pad + 1}")
    heads = _head_fields(raw, where)
    extra = {"hf_architectures": raw.get("architectures") or []}
    if raw.get("problem_type"):
        extra["problem_type"] = raw["problem_type"]
    try:
        return EncoderConfig(
            vocab_size=need("vocab_size"), d_model=need("hidden_size"), n_heads=need("num_attention_heads"),
            d_ff=need("intermediate_size"), n_layers=need("num_hidden_layers"),
            max_len=max_len, type_vocab_size=raw.get("type_vocab_size", 2),
            embedding_norm=True, norm_first=False, activation=_SUPPORTED_ACTS[act],
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            dropout=float(raw.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(raw.get("attention_probs_dropout_prob", 0.1)),
            pad_id=pad, pooler=pooler, pooling="cls", extra=extra, **heads)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def _position_offset(raw: dict) -> int:
    """RoBERTa's first position row: pad_token_id + 1 (positions count from there)."""
    pad = raw.get("pad_token_id", 1)
    return (pad if isinstance(pad, int) and not isinstance(pad, bool) else 1) + 1


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


def _head_names(config, model_type: str) -> dict:
    """cyformer name -> checkpoint name (no prefix) of the pooler and the head."""
    m = {}
    roberta = model_type in ROBERTA_TYPES
    if config.pooler:
        src = "classifier.dense" if roberta and config.head == "sequence_classification" else "pooler.dense"
        m.update({f"pooler.dense.{k}": f"{src}.{k}" for k in ("weight", "bias")})
    if config.head is not None:
        src = "classifier.out_proj" if roberta and config.head == "sequence_classification" else "classifier"
        m.update({f"classifier.{k}": f"{src}.{k}" for k in ("weight", "bias")})
    return m


@register_loader("bert", kind="encoder")
def load_bert(directory: str, raw, mmap: bool = True, verify: bool = False):
    """A Hugging Face BERT (or RoBERTa-family) folder as an ``Encoder`` (weights copied into the
    flat buffer), with its pooler and classification head when it has them."""
    from ..encoder import Encoder
    cfg_path = os.path.join(directory, "config.json")
    model_type = raw.get("model_type", "bert")
    bert_config(raw, cfg_path)   # a config we cannot run is refused before the weights are read
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, "pytorch_model.bin")):
            raise FileNotFoundError(f"{directory} holds pytorch_model.bin only; save the model with "
                                    f"safe_serialization=True (model.safetensors)")
        if os.path.exists(os.path.join(directory, "model.safetensors.index.json")):
            raise FileNotFoundError(f"{directory}: sharded checkpoints are not supported yet")
        raise FileNotFoundError(f"{directory} has no model.safetensors")
    tensors = load_safetensors(path, mmap=mmap)
    base = "roberta" if model_type in ROBERTA_TYPES else "bert"
    prefix = f"{base}." if any(k.startswith(f"{base}.embeddings.") for k in tensors) else ""
    roberta_seq = model_type in ROBERTA_TYPES and \
        _head_fields(raw, cfg_path)["head"] == "sequence_classification"
    # RoBERTa's sequence head is its pooler (classifier.dense); a missing one is reported below
    has_pooler = roberta_seq or f"{prefix}pooler.dense.weight" in tensors
    config = bert_config(raw, cfg_path, pooler=has_pooler)

    def get(name):
        return tensors.get(prefix + name)

    names = bert_to_cyformer_names(config)
    head_names = _head_names(config, model_type)
    missing = []
    for ours, theirs in names.items():
        for t in (theirs if isinstance(theirs, tuple) else (theirs,)):
            if get(t) is None:
                missing.append(prefix + t)
    missing += [t for t in head_names.values() if t not in tensors and prefix + t not in tensors]
    if missing:
        raise CheckpointError(f"{path}: {base.upper() if base == 'bert' else 'RoBERTa'} weights missing: "
                              f"{', '.join(missing)}")
    model = Encoder.empty(config)
    state = {}
    for ours, theirs in names.items():
        if isinstance(theirs, tuple):
            state[ours] = np.concatenate([np.asarray(get(t), dtype=np.float32) for t in theirs], axis=0)
        else:
            state[ours] = np.asarray(get(theirs), dtype=np.float32)
    if model_type in ROBERTA_TYPES:   # positions count from pad_token_id + 1
        off = _position_offset(raw)
        state["embed_positions.weight"] = state["embed_positions.weight"][off:off + config.max_len]
    for ours, theirs in head_names.items():
        t = tensors.get(theirs)
        state[ours] = np.asarray(t if t is not None else tensors[prefix + theirs], dtype=np.float32)
    model.load_state_dict(state)
    return model


for _model_type in ROBERTA_TYPES:
    register_loader(_model_type, kind="encoder")(load_bert)
