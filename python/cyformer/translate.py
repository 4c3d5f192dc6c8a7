"""Text in, text out: ``Translator`` batches sentences for ``Transformer.generate``.

Sentences are tokenized, sorted by length, decoded in batches of ``max_batch_size``, and
returned in input order. Documented behaviour for awkward input: an empty (or
whitespace-only) line translates to an empty line without running the model; a source
longer than the model's ``max_len`` is truncated to its first ``max_len - 1`` pieces plus
EOS, with a warning; unknown pieces map to ``<unk>`` and are counted in one warning per
call (``UnknownTokenWarning``).
"""
from __future__ import annotations

import sys
import warnings
from typing import Iterator, List, Optional, Sequence, Union

from .decoding import GenerationResult, GenerationStepResult, resolve_options
from .model import Transformer
from .tokenizer import Tokenizer


BATCH_TYPES = ("examples", "tokens")


class UnknownTokenWarning(UserWarning):
    """Source text held tokens outside the vocabulary (read as ``<unk>``)."""


def _batches(order: List[int], lengths: List[int], size: int, batch_type: str) -> Iterator[List[int]]:
    """Consecutive chunks of ``order``: ``size`` items each, or at most ``size`` tokens each."""
    if batch_type == "examples":
        for start in range(0, len(order), size):
            yield order[start:start + size]
        return
    chunk: List[int] = []
    tokens = 0
    for i in order:
        if chunk and tokens + lengths[i] > size:
            yield chunk
            chunk, tokens = [], 0
        chunk.append(i)
        tokens += lengths[i]
    if chunk:
        yield chunk


class Translator:
    def __init__(self, model: Transformer, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.vocab_size > model.config.src_vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} entries but the model's "
                             f"source vocabulary only {model.config.src_vocab_size}")

    @classmethod
    def from_pretrained(cls, model_dir: str, tokenizer_dir: Optional[str] = None, *,
                        compute_type: str = "default") -> "Translator":
        """The model of ``model_dir`` (``compute_type``: "default" as stored, "float32", "int8",
        "bfloat16" or "auto", see ``Transformer.set_compute_type``) with its tokenizer."""
        return cls(Transformer.from_pretrained(model_dir, compute_type=compute_type),
                   Tokenizer.from_pretrained(tokenizer_dir or model_dir))

    def translate_batch(self, texts: Union[str, Sequence[str]], *, max_batch_size: int = 32,
                        batch_type: str = "examples", progress: bool = False,
                        **options) -> List[Optional[GenerationResult]]:
        """One ``GenerationResult`` per text (``None`` for an empty line), in input order.

        Texts are sorted by length and decoded in batches of ``max_batch_size`` sentences
        (``batch_type="examples"``) or of at most ``max_batch_size`` source tokens
        (``batch_type="tokens"``, as CTranslate2; a longer sentence gets a batch of its own).
        A single string is a batch of one. ``options`` are ``Transformer.generate``'s.
        Source tokens outside the vocabulary are mapped to ``<unk>`` and counted: one
        warning per call gives the count.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, not {type(t).__name__}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
            raise TypeError(f"max_batch_size must be an int, not {type(max_batch_size).__name__}")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if batch_type not in BATCH_TYPES:
            raise ValueError(f"batch_type must be one of {BATCH_TYPES}, not {batch_type!r}")
        options, prefixes = self._decoding_options(options, len(texts))
        max_len = self.model.config.max_len
        if options.get("max_length") is None and options.get("max_new_tokens") is None:
            options["max_length"] = min(256, max_len)
        encoded = self.tokenizer.encode(texts, side="source")
        unk = self.tokenizer.unk_id
        unknown = [sum(1 for t in ids if t == unk) for ids in encoded]
        with_unknown = [i for i, u in enumerate(unknown) if u]
        if with_unknown:
            warnings.warn(f"{sum(unknown)} source token(s) in {len(with_unknown)} of {len(texts)} sentence(s) "
                          f"are not in the vocabulary and were read as <unk> (the first in sentence "
                          f"{with_unknown[0] + 1})", UnknownTokenWarning, stacklevel=2)
        truncated = 0
        for i, ids in enumerate(encoded):
            if len(ids) > max_len:
                encoded[i] = ids[:max_len - 1] + [self.tokenizer.eos_id]
                truncated += 1
        if truncated:
            warnings.warn(f"{truncated} source(s) longer than max_len={max_len} pieces were truncated",
                          stacklevel=2)
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
            for chunk in _batches(todo, [len(e) for e in encoded], max_batch_size, batch_type):
                if prefixes is not None:
                    options["target_prefix"] = [prefixes[i] for i in chunk]
                out = self.model.generate([encoded[i] for i in chunk], **options)
                for i, r in zip(chunk, out):
                    results[i] = r
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return results

    def translate(self, texts: Union[str, Sequence[str]], **options) -> Union[str, List[str]]:
        """The best translation of each text; of one string, that string's translation."""
        results = self.translate_batch(texts, **options)
        best = [r.sequences[0] if r is not None else None for r in results]
        decoded = self.tokenizer.decode([b for b in best if b is not None], side="target")
        it = iter(decoded)
        out = [next(it) if b is not None else "" for b in best]
        return out[0] if isinstance(texts, str) else out

    def generate_tokens(self, text: str, **options) -> Iterator[GenerationStepResult]:
        """Translate one text token by token, as CTranslate2's ``generate_tokens``: an iterator
        of ``GenerationStepResult`` whose ``text`` is the piece of translation the token adds.

        Greedy search or sampling; options are ``Transformer.generate_tokens``'s, with
        ``target_prefix`` a string. Joined, the pieces give the translation after the
        prefix (whenever detokenizing is incremental, as for SentencePiece and word
        vocabularies). An empty text yields nothing; stopping early leaves the model usable.
        """
        if not isinstance(text, str):
            raise TypeError(f"generate_tokens takes one text (a str), not {type(text).__name__}")
        options, prefixes = self._decoding_options(options, 1)
        prefix = prefixes[0] if prefixes is not None else None
        if not text.strip():
            return iter(())
        ids = self.tokenizer.encode([text], side="source")[0]
        max_len = self.model.config.max_len
        if len(ids) > max_len:
            ids = ids[:max_len - 1] + [self.tokenizer.eos_id]
            warnings.warn(f"the source is longer than max_len={max_len} pieces and was truncated", stacklevel=2)
        stream = self.model.generate_tokens(ids, target_prefix=[prefix], **options)
        return self._with_text(stream, prefix or [])

    def _with_text(self, stream, prefix: List[int]) -> Iterator[GenerationStepResult]:
        import os.path
        seq = list(prefix)
        shown = self.tokenizer.decode([seq], side="target")[0] if seq else ""
        for r in stream:
            seq.append(r.token_id)
            text = self.tokenizer.decode([seq], side="target")[0]
            r.text = text[len(os.path.commonprefix([shown, text])):]
            shown = text
            yield r

    def _decoding_options(self, options: dict, count: int):
        """``generate`` options where Translator takes text: a ``target_prefix`` (one string or
        None per text) and ``suppress_sequences`` given as strings are tokenized on the target
        side without EOS; ``disable_unk`` uses the tokenizer's unknown id. Returns the options
        without ``target_prefix``, and the prefixes as id lists (None if none was given)."""
        options = resolve_options(options)
        prefixes = options.pop("target_prefix", None)
        if prefixes is not None:
            if isinstance(prefixes, str):
                prefixes = [prefixes]
            if not isinstance(prefixes, (list, tuple)):
                raise TypeError(f"target_prefix must be a list of strings, one per text, "
                                f"not {type(prefixes).__name__}")
            if len(prefixes) != count:
                raise ValueError(f"target_prefix has {len(prefixes)} entries for {count} text(s)")
            prefixes = [self._target_ids(p) for p in prefixes]
        sequences = options.get("suppress_sequences")
        if sequences is not None:
            if isinstance(sequences, str):
                sequences = [sequences]
            options["suppress_sequences"] = [self._target_ids(s) if isinstance(s, str) else s
                                             for s in sequences]
        if options.get("disable_unk") and options.get("unk_id") is None:
            options["unk_id"] = self.tokenizer.unk_id
        return options, prefixes

    def _target_ids(self, text) -> Optional[List[int]]:
        """Target-side ids of a text, without EOS (ids pass as they are; None and "" are None)."""
        if text is None or isinstance(text, str) and not text.strip():
            return None
        if isinstance(text, str):
            return self.tokenizer.encode([text], side="target", add_eos=False)[0] or None
        return text
