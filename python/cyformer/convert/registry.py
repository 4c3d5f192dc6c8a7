"""Converters register by format name, as CTranslate2's ``@register_loader``: a new format is
one file under ``convert/`` that decorates its loader (and exporter), imported by
``convert/__init__.py``. ``Transformer.from_pretrained`` dispatches on ``config.json``'s
``model_type``; ``save_pretrained(dir, format=...)`` on the format name.
"""
from __future__ import annotations

from typing import Callable, Dict

# model_type -> loader(directory, raw_config, mmap, verify) -> Transformer
LOADERS: Dict[str, Callable] = {}
# model_type -> loader(...) -> Encoder (encoder-only models: ``Encoder.from_pretrained``)
ENCODER_LOADERS: Dict[str, Callable] = {}
_KINDS = {"transformer": LOADERS, "encoder": ENCODER_LOADERS}
# format -> exporter(model, directory)
EXPORTERS: Dict[str, Callable] = {}


def register_loader(model_type: str, kind: str = "transformer"):
    """Decorator: ``loader(directory, raw_config, mmap=..., verify=...)`` reads ``model_type`` folders.

    ``kind``: ``"transformer"`` (encoder-decoder, ``Transformer.from_pretrained``) or
    ``"encoder"`` (encoder-only, ``Encoder.from_pretrained``).
    """
    table = _KINDS[kind]

    def wrap(fn):
        table[model_type] = fn
        return fn
    return wrap


def register_exporter(format: str):
    """Decorator: ``exporter(model, directory)`` writes ``format`` folders."""
    def wrap(fn):
        EXPORTERS[format] = fn
        return fn
    return wrap


def loader_for(model_type: str, where: str, kind: str = "transformer") -> Callable:
    table = _KINDS[kind]
    try:
        return table[model_type]
    except KeyError:
        known = " and ".join(sorted(table))
        hint = ""
        for other, entries in _KINDS.items():
            if other != kind and model_type in entries:
                hint = (f"; it is an {other}-only model: load it with cyformer.Encoder.from_pretrained"
                        if other == "encoder" else "; it is an encoder-decoder model: load it with "
                        "cyformer.Transformer.from_pretrained")
        raise ValueError(f"{where}: model_type {model_type!r} is not supported ({known} are){hint}") from None


def exporter_for(format: str) -> Callable:
    try:
        return EXPORTERS[format]
    except KeyError:
        known = " or ".join(repr(f) for f in ["cyformer", *sorted(EXPORTERS)])
        raise ValueError(f"unknown checkpoint format {format!r}; expected {known}") from None
