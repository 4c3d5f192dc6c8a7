"""Importers (and exporters) between cyformer and other frameworks' weight layouts.

Converters only map foreign names onto the views of ``Transformer.params``:
``from_torch`` takes a PyTorch ``nn.Transformer`` with its embeddings and output layer,
``load_marian`` reads a Hugging Face MarianMT folder (also reached through
``Transformer.from_pretrained``) and ``save_marian`` writes one
(``save_pretrained(dir, format="marian")``). PyTorch is needed only by ``from_torch`` itself.

Folder formats register themselves (``registry.register_loader`` / ``register_exporter``);
a new one is a file here, imported below.
"""
from .registry import ENCODER_LOADERS, EXPORTERS, LOADERS, register_exporter, register_loader
from .marian import load_marian, marian_config, save_marian
from .torch import from_torch
from .bert import bert_config, load_bert
from .distilbert import distilbert_config, load_distilbert


def export_checkpoint(model, directory, format):
    """``Transformer.save_pretrained(directory, format=...)`` for foreign formats."""
    from .registry import exporter_for
    return exporter_for(format)(model, directory)


__all__ = ["from_torch", "load_bert", "bert_config", "load_distilbert", "distilbert_config", "load_marian", "marian_config", "save_marian", "export_checkpoint",
           "register_loader", "register_exporter", "LOADERS", "ENCODER_LOADERS", "EXPORTERS"]
