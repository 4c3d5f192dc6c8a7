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
``model_type: "electra"`` (discriminators whose ``embedding_size`` is ``hidden_size``): the
layout under ``electra.``, its sequence head the same as RoBERTa's with GELU for tanh.
"""
from __future__ import annotations

import os

import numpy as np

from ..io import CheckpointError, load_safetensors
from .registry import register_loader

_SUPPORTED_ACTS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_pytorch_tanh",
                   "relu": "relu", "silu": "silu", "swish": "swish"}


_ARCH_PREFIXES = ("Bert", "Roberta", "XLMRoberta", "Camembert", "Electra", "DistilBert")
SEQUENCE_HEADS = {f"{p}ForSequenceClassification" for p in _ARCH_PREFIXES}
TOKEN_HEADS = {f"{p}ForTokenClassification" for p in _ARCH_PREFIXES}
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
# model_type -> (the encoder's name prefix in *For* models, the sequence head's pooler
# activation, whether that head is classifier.dense + classifier.out_proj instead of
# BERT's pooler.dense + classifier)
FAMILIES = {"bert": ("bert", "tanh", False), "electra": ("electra", "gelu", True),
            **{t: ("roberta", "tanh", True) for t in ROBERTA_TYPES}}


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
    if raw.get("model_type") == "electra" and raw.get("embedding_size", raw.get("hidden_size")) != raw.get("hidden_size"):
        raise CheckpointError(f"{where}: an ELECTRA model whose embedding_size ({raw.get('embedding_size')}) is not "
                              f"hidden_size needs its embeddings_project layer, which is not supported")
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
            pad_id=pad, pooler=pooler, pooler_activation=FAMILIES.get(raw.get("model_type"), FAMILIES["bert"])[1],
            pooling="cls", extra=extra, **heads)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def _position_offset(raw: dict) -> int:
    """RoBERTa's first position row: pad_token_id + 1 (positions count from there)."""
    pad = raw.get("pad_token_id", 1)
    return (pad if isinstance(pad, int) and not isinstance(pad, bool) else 1) + 1


# our per-layer tensor -> its name inside a BERT layer ("attention.self.{query,key,value}" stacked)
BERT_LAYER_NAMES = {"self_attn.in_proj": ("attention.self.query", "attention.self.key", "attention.self.value"),
                    "self_attn.out_proj": "attention.output.dense", "norm1": "attention.output.LayerNorm",
                    "linear1": "intermediate.dense", "linear2": "output.dense", "norm2": "output.LayerNorm"}


def layer_names(n_layers: int, layer_prefix: str, table: dict) -> dict:
    """cyformer name -> checkpoint name of every layer's weights and biases: ``table`` maps our
    module (``self_attn.in_proj``, ``norm1``, ...) to the checkpoint's, under ``layer_prefix.{i}``;
    a tuple is stacked (the in-projection's Q, K, V)."""
    m = {}
    for i in range(n_layers):
        for ours, theirs in table.items():
            for kind in ("weight", "bias"):
                # nn.MultiheadAttention's fused projection is in_proj_weight, not in_proj.weight
                name = f"encoder.layers.{i}.{ours}{'_' if ours.endswith('in_proj') else '.'}{kind}"
                m[name] = (tuple(f"{layer_prefix}.{i}.{t}.{kind}" for t in theirs) if isinstance(theirs, tuple)
                           else f"{layer_prefix}.{i}.{theirs}.{kind}")
    return m


def bert_to_cyformer_names(config) -> dict:
    """cyformer name -> BERT name (without a ``bert.`` prefix); in_proj entries map to a triple."""
    m = {"embed_tokens.weight": "embeddings.word_embeddings.weight",
         "embed_positions.weight": "embeddings.position_embeddings.weight",
         "embed_norm.weight": "embeddings.LayerNorm.weight",
         "embed_norm.bias": "embeddings.LayerNorm.bias"}
    if config.type_vocab_size:
        m["embed_token_types.weight"] = "embeddings.token_type_embeddings.weight"
    m.update(layer_names(config.n_layers, "encoder.layer", BERT_LAYER_NAMES))
    return m


def _head_names(config, model_type: str) -> dict:
    """cyformer name -> checkpoint name (no prefix) of the pooler and the head."""
    m = {}
    dense_head = FAMILIES[model_type][2] and config.head == "sequence_classification"
    if config.pooler:
        src = "classifier.dense" if dense_head else "pooler.dense"
        m.update({f"pooler.dense.{k}": f"{src}.{k}" for k in ("weight", "bias")})
    if config.head is not None:
        src = "classifier.out_proj" if dense_head else "classifier"
        m.update({f"classifier.{k}": f"{src}.{k}" for k in ("weight", "bias")})
    return m


def weights_file(directory: str) -> str:
    """The folder's ``model.safetensors``, or a FileNotFoundError saying what is there instead."""
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, "pytorch_model.bin")):
            raise FileNotFoundError(f"{directory} holds pytorch_model.bin only; save the model with "
                                    f"safe_serialization=True (model.safetensors)")
        if os.path.exists(os.path.join(directory, "model.safetensors.index.json")):
            raise FileNotFoundError(f"{directory}: sharded checkpoints are not supported yet")
        raise FileNotFoundError(f"{directory} has no model.safetensors")
    return path


def encoder_from_tensors(path: str, tensors, prefix: str, config, names: dict, head_names: dict, family: str,
                         positions_from: int = 0):
    """An ``Encoder`` of ``config`` filled from a foreign checkpoint's tensors.

    ``names``: cyformer name -> checkpoint name under ``prefix`` (a tuple of names is
    stacked along the first axis: Q, K, V into the fused in-projection); ``head_names``: the
    same for the pooler and head, found with or without the prefix. Every missing tensor is
    named in one CheckpointError. ``positions_from``: the first row of the position table."""
    from ..encoder import Encoder

    def get(name):
        return tensors.get(prefix + name)

    missing = [prefix + t for theirs in names.values()
               for t in (theirs if isinstance(theirs, tuple) else (theirs,)) if get(t) is None]
    missing += [t for t in head_names.values() if t not in tensors and prefix + t not in tensors]
    if missing:
        raise CheckpointError(f"{path}: {family} weights missing: {', '.join(missing)}")
    model = Encoder.empty(config)
    state = {}
    for ours, theirs in names.items():
        if isinstance(theirs, tuple):
            state[ours] = np.concatenate([np.asarray(get(t), dtype=np.float32) for t in theirs], axis=0)
        else:
            state[ours] = np.asarray(get(theirs), dtype=np.float32)
    if positions_from:
        state["embed_positions.weight"] = state["embed_positions.weight"][positions_from:positions_from + config.max_len]
    for ours, theirs in head_names.items():
        t = tensors.get(theirs)
        state[ours] = np.asarray(t if t is not None else tensors[prefix + theirs], dtype=np.float32)
    model.load_state_dict(state)
    return model


@register_loader("bert", kind="encoder")
def load_bert(directory: str, raw, mmap: bool = True, verify: bool = False):
    """A Hugging Face BERT-layout folder (BERT, the RoBERTa family, ELECTRA) as an ``Encoder``
    (weights copied into the flat buffer), with its pooler and classification head when it has them."""
    cfg_path = os.path.join(directory, "config.json")
    model_type = raw.get("model_type", "bert")
    bert_config(raw, cfg_path)   # a config we cannot run is refused before the weights are read
    path = weights_file(directory)
    tensors = load_safetensors(path, mmap=mmap)
    base, _, dense_head = FAMILIES[model_type]
    prefix = f"{base}." if any(k.startswith(f"{base}.embeddings.") for k in tensors) else ""
    # a dense sequence head (RoBERTa, ELECTRA) is our pooler; a missing one is reported below
    has_pooler = ((dense_head and _head_fields(raw, cfg_path)["head"] == "sequence_classification")
                  or f"{prefix}pooler.dense.weight" in tensors)
    config = bert_config(raw, cfg_path, pooler=has_pooler)
    family = {"bert": "BERT", "roberta": "RoBERTa", "electra": "ELECTRA"}[base]
    return encoder_from_tensors(path, tensors, prefix, config, bert_to_cyformer_names(config),
                                _head_names(config, model_type), family,
                                _position_offset(raw) if model_type in ROBERTA_TYPES else 0)


for _model_type in FAMILIES:
    if _model_type != "bert":
        register_loader(_model_type, kind="encoder")(load_bert)
