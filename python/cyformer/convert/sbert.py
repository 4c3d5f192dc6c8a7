"""sentence-transformers folders: ``modules.json`` over a Hugging Face encoder, pooling, Normalize.

A saved ``SentenceTransformer`` is a pipeline of modules listed in ``modules.json``: the
Transformer module (the folder itself, ``"path": ""``, or ``0_Transformer/`` in older saves)
holds a BERT-layout model and its tokenizer; ``1_Pooling/config.json`` says how token states
become one vector (``"pooling_mode": "mean"`` since sentence-transformers 5, the
``pooling_mode_*_tokens`` booleans before); an optional ``Normalize`` module scales it to unit
length. ``read_sentence_transformers`` reads that description without torch, and
``Encoder.from_pretrained`` loads the Transformer module's weights and keeps the description in
``config.extra["sentence_transformers"]``, where ``Encoder.embed`` and ``TextEncoder`` take their
default pooling and normalisation from. Modules cyformer does not run (``Dense``, ``LSTM``, a
``Router``, ...) are refused by name rather than silently skipped.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

from ..io import CheckpointError, read_json

MODULES_NAME = "modules.json"
# sentence-transformers' pooling modes, in the order it concatenates them when several are on
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                        "pooling_mode_mean_tokens": "mean",
                        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                        "pooling_mode_weightedmean_tokens": "weightedmean",
                        "pooling_mode_lasttoken": "lasttoken"}


@dataclass
class SentenceTransformerLayout:
    """What a sentence-transformers folder says about turning token states into a vector.

    ``transformer_dir``: the folder of the Transformer module (model and tokenizer files);
    ``pooling``: the pooling modes, concatenated in this order; ``normalize``: unit L2 norm at
    the end; ``max_seq_length``: the module's truncation length (None: the tokenizer's);
    ``do_lower_case``: the module lowercases text before tokenizing; ``include_prompt``: prompt
    tokens count in the pooling; ``prompts`` / ``default_prompt_name``: from
    ``config_sentence_transformers.json``.
    """

    transformer_dir: str
    pooling: Tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: Optional[int] = None
    do_lower_case: bool = False
    include_prompt: bool = True
    prompts: dict = field(default_factory=dict)
    default_prompt_name: Optional[str] = None

    def to_extra(self) -> dict:
        """The JSON-able part an ``EncoderConfig.extra`` keeps (the folder path is not kept)."""
        d = asdict(self)
        del d["transformer_dir"]
        d["pooling"] = list(self.pooling)
        return d


def _module_kind(entry, where: str) -> str:
    kind = entry.get("type") if isinstance(entry, dict) else None
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(f"{where}: every module needs a 'type' string, got {entry!r}")
    return kind.rsplit(".", 1)[-1]


def _inside(directory: str, sub, where: str) -> str:
    """``directory/sub``, refusing a module path that leaves the folder."""
    if not isinstance(sub, str):
        raise CheckpointError(f"{where}: a module 'path' must be a string, got {sub!r}")
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, sub))
    if path != root and not path.startswith(root + os.sep):
        raise CheckpointError(f"{where}: module path {sub!r} points outside the folder")
    return path


def pooling_modes(config: dict, where: str) -> Tuple[str, ...]:
    """The pooling modes of a ``1_Pooling/config.json`` (either generation of its keys)."""
    mode = config.get("pooling_mode")
    if mode is None:
        mode = [name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key)]
    modes = (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, list) else None
    if not modes or not all(isinstance(m, str) for m in modes):
        raise CheckpointError(f"{where}: no pooling mode set (expected 'pooling_mode' or a "
                              f"pooling_mode_*_tokens flag), got {config!r}"[:300])
    for m in modes:
        if m not in POOLING_MODES:
            raise CheckpointError(f"{where}: pooling mode {m!r} is not supported ({', '.join(POOLING_MODES)} are)")
    return modes


def _positive_int(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_sentence_transformers(directory: str) -> Optional[SentenceTransformerLayout]:
    """The layout of a sentence-transformers folder, or None when it has no ``modules.json``."""
    modules_path = os.path.join(directory, MODULES_NAME)
    if not os.path.isfile(modules_path):
        return None
    modules = read_json(modules_path, expect=list)
    if not modules:
        raise CheckpointError(f"{modules_path} lists no modules")
    kinds = [_module_kind(m, modules_path) for m in modules]
    if kinds[0] != "Transformer":
        raise CheckpointError(f"{modules_path}: the first module is {kinds[0]}, not a Transformer; "
                              f"only Transformer + Pooling (+ Normalize) pipelines are supported")
    layout = SentenceTransformerLayout(_inside(directory, modules[0].get("path", ""), modules_path))
    pooled = False
    for entry, kind in zip(modules[1:], kinds[1:]):
        sub = _inside(directory, entry.get("path", ""), modules_path)
        if kind == "Pooling" and not pooled and not layout.normalize:
            cfg_path = os.path.join(sub, "config.json")
            cfg = read_json(cfg_path, expect=dict)
            layout.pooling = pooling_modes(cfg, cfg_path)
            layout.include_prompt = bool(cfg.get("include_prompt", True))
            pooled = True
        elif kind == "Normalize" and not layout.normalize:
            layout.normalize = True
        else:
            raise CheckpointError(f"{modules_path}: module {kind} ({entry.get('type')}) is not supported by "
                                  f"cyformer; supported: Transformer, then Pooling, then Normalize")
    if not pooled:
        # without a Pooling module sentence-transformers returns token embeddings, not one vector
        raise CheckpointError(f"{modules_path} has no Pooling module: it does not produce sentence embeddings")
    bert_cfg = os.path.join(layout.transformer_dir, "sentence_bert_config.json")
    if os.path.isfile(bert_cfg):
        cfg = read_json(bert_cfg, expect=dict)
        layout.max_seq_length = _positive_int(cfg.get("max_seq_length"))
        layout.do_lower_case = bool(cfg.get("do_lower_case", False))
    st_cfg = os.path.join(directory, "config_sentence_transformers.json")
    if os.path.isfile(st_cfg):
        cfg = read_json(st_cfg, expect=dict)
        prompts = cfg.get("prompts") or {}
        if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
            raise CheckpointError(f"{st_cfg}: 'prompts' must map names to strings")
        layout.prompts = dict(prompts)
        name = cfg.get("default_prompt_name")
        if name is not None and name not in prompts:
            raise CheckpointError(f"{st_cfg}: default_prompt_name {name!r} is not one of the prompts")
        layout.default_prompt_name = name
    return layout


def transformer_folder(directory: str) -> Tuple[str, Optional[SentenceTransformerLayout]]:
    """The folder holding the model's ``config.json`` and its sentence-transformers layout (if any)."""
    layout = read_sentence_transformers(directory)
    return (layout.transformer_dir if layout is not None else directory), layout


__all__: List[str] = ["SentenceTransformerLayout", "read_sentence_transformers", "transformer_folder",
                      "pooling_modes", "POOLING_MODES"]
