"""Importers (and exporters) between cyformer and other frameworks' weight layouts.

Converters only map foreign names onto the views of ``Transformer.params``:
``from_torch`` takes a PyTorch ``nn.Transformer`` with its embeddings and output layer,
``load_marian`` reads a Hugging Face MarianMT folder (also reached through
``Transformer.from_pretrained``). PyTorch is needed only by ``from_torch`` itself.
"""
from .marian import load_marian, marian_config
from .torch import from_torch


def export_checkpoint(model, directory, format):
    raise ValueError(f"unknown checkpoint format {format!r}; this version writes 'cyformer'")


__all__ = ["from_torch", "load_marian", "marian_config", "export_checkpoint"]
