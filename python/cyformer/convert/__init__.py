"""Importers (and exporters) between cyformer and other frameworks' weight layouts.

Converters only map foreign names onto the views of ``Transformer.params``:
``from_torch`` takes a PyTorch ``nn.Transformer`` with its embeddings and output layer,
``load_marian`` reads a Hugging Face MarianMT folder (also reached through
``Transformer.from_pretrained``) and ``save_marian`` writes one
(``save_pretrained(dir, format="marian")``). PyTorch is needed only by ``from_torch`` itself.
"""
from .marian import load_marian, marian_config, save_marian
from .torch import from_torch


def export_checkpoint(model, directory, format):
    """``Transformer.save_pretrained(directory, format=...)`` for foreign formats."""
    if format == "marian":
        return save_marian(model, directory)
    raise ValueError(f"unknown checkpoint format {format!r}; expected 'cyformer' or 'marian'")


__all__ = ["from_torch", "load_marian", "marian_config", "save_marian", "export_checkpoint"]
