"""Text in, text out: ``Translator`` batches sentences for ``Transformer.generate``.

Sentences are tokenized, sorted by length, decoded in batches of ``max_batch_size``, and
returned in input order. Documented behaviour for awkward input: an empty (or
whitespace-only) line translates to an empty line without running the model; a source
longer than the model's ``max_len`` is truncated to its first ``max_len - 1`` pieces plus
EOS, with a warning; unknown pieces map to ``<unk>``.
"""
from __future__ import annotations

import sys
import warnings
from typing import List, Optional, Sequence

from .decoding import GenerationResult
from .model import Transformer
from .tokenizer import Tokenizer


class Translator:
    def __init__(self, model: Transformer, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.vocab_size > model.config.src_vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} entries but the model's "
                             f"source vocabulary only {model.config.src_vocab_size}")

    @classmethod
    def from_pretrained(cls, model_dir: str, tokenizer_dir: Optional[str] = None) -> "Translator":
        return cls(Transformer.from_pretrained(model_dir), Tokenizer.from_pretrained(tokenizer_dir or model_dir))

    def translate_batch(self, texts: Sequence[str], *, max_batch_size: int = 32, progress: bool = False,
                        **options) -> List[Optional[GenerationResult]]:
        """One ``GenerationResult`` per text (``None`` for an empty line), in input order."""
        if isinstance(texts, str):
            raise TypeError("translate takes a list of texts")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        max_len = self.model.config.max_len
        if options.get("max_length") is None:
            options["max_length"] = min(256, max_len)
        encoded = self.tokenizer.encode(list(texts), side="source")
        truncated = 0
        for i, ids in enumerate(encoded):
            if len(ids) > max_len:
                encoded[i] = ids[:max_len - 1] + [self.tokenizer.eos_id]
                truncated += 1
        if truncated:
            warnings.warn(f"{truncated} source(s) longer than max_len={max_len} pieces were truncated")
        todo = [i for i, t in enumerate(texts) if t.strip()]
        todo.sort(key=lambda i: len(encoded[i]))
        results: List[Optional[GenerationResult]] = [None] * len(texts)
        bar = None
        if progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=len(todo), unit="sent", file=sys.stderr)
            except ImportError:  # pragma: no cover
                bar = None
        try:
            for start in range(0, len(todo), max_batch_size):
                chunk = todo[start:start + max_batch_size]
                out = self.model.generate([encoded[i] for i in chunk], **options)
                for i, r in zip(chunk, out):
                    results[i] = r
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return results

    def translate(self, texts: Sequence[str], **options) -> List[str]:
        """The best translation of each text."""
        results = self.translate_batch(texts, **options)
        best = [r.sequences[0] if r is not None else None for r in results]
        decoded = self.tokenizer.decode([b for b in best if b is not None], side="target")
        it = iter(decoded)
        return [next(it) if b is not None else "" for b in best]
