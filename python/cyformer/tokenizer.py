"""Tokenizers: SentencePiece models (as Marian folders carry them) and simple word/char vocabularies.

Both share one interface: ``encode(texts, side)`` -> id lists (ending in EOS), and
``decode(ids, side)`` -> texts. ``side`` is ``"source"`` or ``"target"``: a Marian folder
has one SentencePiece model per side (``source.spm``, ``target.spm``) and one
``vocab.json`` mapping pieces to ids. Unknown pieces map to ``<unk>``.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from .io import atomic_copy_file, atomic_write_bytes, read_json

SPECIALS = ("<pad>", "</s>", "<unk>", "<s>")


class Tokenizer:
    """Base class and factory; use ``Tokenizer.from_pretrained(dir)``."""

    pad_id: int
    eos_id: int
    unk_id: int

    # -- interface ----------------------------------------------------------------------
    def tokenize(self, text: str, side: str = "source") -> List[str]:
        raise NotImplementedError

    def detokenize(self, pieces: List[str], side: str = "target") -> str:
        raise NotImplementedError

    @property
    def vocab(self) -> Dict[str, int]:
        raise NotImplementedError

    def save_pretrained(self, directory: str) -> None:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _id_to_piece(self) -> List[str]:
        cache = getattr(self, "_inverse", None)
        if cache is None:
            cache = [""] * (max(self.vocab.values()) + 1)
            for piece, i in self.vocab.items():
                cache[i] = piece
            self._inverse = cache
        return cache

    @property
    def special_ids(self) -> set:
        return {i for p, i in self.vocab.items() if p in SPECIALS}

    def encode(self, texts: Sequence[str], side: str = "source", add_eos: bool = True) -> List[List[int]]:
        """Texts -> id lists (each ending in EOS when ``add_eos``)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text in a list")
        vocab = self.vocab
        out = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode needs str texts, got {type(text).__name__}")
            ids = [vocab.get(p, self.unk_id) for p in self.tokenize(text, side)]
            if add_eos:
                ids.append(self.eos_id)
            out.append(ids)
        return out

    def decode(self, sequences: Iterable[Sequence[int]], side: str = "target",
               skip_special: bool = True) -> List[str]:
        """Id lists -> texts; generation stops at EOS; special tokens are dropped."""
        inverse = self._id_to_piece()
        specials = self.special_ids
        out = []
        for seq in sequences:
            pieces = []
            for i in seq:
                i = int(i)
                if i == self.eos_id and skip_special:
                    break
                if not 0 <= i < len(inverse):
                    raise ValueError(f"token id {i} is outside the vocabulary [0, {len(inverse)})")
                if skip_special and i in specials:
                    continue
                pieces.append(inverse[i])
            out.append(self.detokenize(pieces, side))
        return out

    @classmethod
    def from_pretrained(cls, directory: str) -> "Tokenizer":
        """A Marian-style SentencePiece folder, or one saved by a cyformer tokenizer."""
        if os.path.exists(os.path.join(directory, "source.spm")):
            return SentencePieceTokenizer.from_pretrained(directory)
        cfg = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(cfg):
            kind = read_json(cfg, expect=dict).get("tokenizer_class", "")   # bounded size and nesting
            if kind == "VocabTokenizer":
                return VocabTokenizer.from_pretrained(directory)
            if kind in ("SentencePieceTokenizer", "MarianTokenizer"):
                return SentencePieceTokenizer.from_pretrained(directory)
        raise FileNotFoundError(f"{directory} holds no tokenizer (source.spm + vocab.json, or a "
                                f"cyformer tokenizer_config.json)")


def _load_vocab(path: str) -> Dict[str, int]:
    vocab = read_json(path)   # bounded size and nesting; CheckpointError names the file
    if not isinstance(vocab, dict) or not all(type(v) is int for v in vocab.values()):
        raise ValueError(f"{path} must map pieces to integer ids")
    return vocab


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece segmentation per side, ids from a shared ``vocab.json`` (Marian's layout)."""

    def __init__(self, source_model: str, target_model: Optional[str], vocab: Dict[str, int],
                 eos: str = "</s>", unk: str = "<unk>", pad: str = "<pad>"):
        try:
            import sentencepiece as spm
        except ImportError as e:  # pragma: no cover - declared dependency
            raise ImportError("SentencePiece tokenizers need the 'sentencepiece' package") from e
        self._paths = (source_model, target_model or source_model)
        self._sp = {"source": spm.SentencePieceProcessor(model_file=source_model),
                    "target": spm.SentencePieceProcessor(model_file=target_model or source_model)}
        self._vocab = dict(vocab)
        for name, piece in (("eos", eos), ("unk", unk), ("pad", pad)):
            if piece not in self._vocab:
                raise ValueError(f"vocab has no {name} token {piece!r}")
        self.eos_id, self.unk_id, self.pad_id = self._vocab[eos], self._vocab[unk], self._vocab[pad]

    @property
    def vocab(self) -> Dict[str, int]:
        return self._vocab

    def tokenize(self, text: str, side: str = "source") -> List[str]:
        return self._sp[side].encode(text, out_type=str)

    def detokenize(self, pieces: List[str], side: str = "target") -> str:
        return self._sp[side].decode_pieces(pieces)

    @classmethod
    def from_pretrained(cls, directory: str) -> "SentencePieceTokenizer":
        src = os.path.join(directory, "source.spm")
        tgt = os.path.join(directory, "target.spm")
        vocab = os.path.join(directory, "vocab.json")
        for p in (src, vocab):
            if not os.path.exists(p):
                raise FileNotFoundError(f"{directory} has no {os.path.basename(p)}")
        return cls(src, tgt if os.path.exists(tgt) else None, _load_vocab(vocab))

    @classmethod
    def train(cls, texts: Iterable[str], directory: str, vocab_size: int = 8000,
              model_type: str = "unigram", character_coverage: float = 1.0,
              seed_sentences: int = 2_000_000) -> "SentencePieceTokenizer":
        """Train one SentencePiece model on ``texts`` (both sides of a corpus, for a shared
        vocabulary) and write ``source.spm``, ``target.spm`` and ``vocab.json`` to ``directory``.

        Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``<s>`` 3, then the pieces.
        """
        import tempfile

        import sentencepiece as spm

        if vocab_size <= len(SPECIALS):
            raise ValueError(f"vocab_size must exceed {len(SPECIALS)}")
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            corpus = os.path.join(tmp, "corpus.txt")
            n = 0
            with open(corpus, "w", encoding="utf-8") as f:
                for text in texts:
                    if text.strip():
                        f.write(text.replace("\n", " ") + "\n")
                        n += 1
            if n == 0:
                raise ValueError("no text to train a SentencePiece model on")
            prefix = os.path.join(tmp, "spm")
            try:
                # pieces only: our specials are added to vocab.json around them
                spm.SentencePieceTrainer.train(
                    input=corpus, model_prefix=prefix, vocab_size=vocab_size - len(SPECIALS) + 1,
                    model_type=model_type, character_coverage=character_coverage, unk_id=0, bos_id=-1,
                    eos_id=-1, pad_id=-1, input_sentence_size=seed_sentences, shuffle_input_sentence=True,
                    hard_vocab_limit=False, num_threads=1, minloglevel=2)
            except RuntimeError as e:
                raise ValueError(f"SentencePiece training failed: {e}") from None
            sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
            vocab = {t: i for i, t in enumerate(SPECIALS)}
            for i in range(sp.get_piece_size()):
                piece = sp.id_to_piece(i)
                if piece not in vocab and piece != "<unk>":
                    vocab[piece] = len(vocab)
            for side in ("source", "target"):
                atomic_copy_file(prefix + ".model", os.path.join(directory, f"{side}.spm"))
        atomic_write_bytes(os.path.join(directory, "vocab.json"),
                           json.dumps(vocab, ensure_ascii=False, indent=1).encode())
        return cls.from_pretrained(directory)

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        for name, path in zip(("source.spm", "target.spm"), self._paths):
            dest = os.path.join(directory, name)
            if os.path.abspath(path) != os.path.abspath(dest):
                atomic_copy_file(path, dest)
        atomic_write_bytes(os.path.join(directory, "vocab.json"),
                           json.dumps(self._vocab, ensure_ascii=False, indent=1).encode())


class TextNormalizer:
    """How one side's text becomes tokens and tokens become text again, as data.

    ``tokens(text)``: optionally lowercase, apply the ``replace`` pairs in order, then split
    on whitespace (``split="whitespace"``) or into its non-space characters
    (``split="characters"``). ``text(tokens)``: join with ``join`` (a space, or nothing for
    character sides), then apply the ``detokenize_replace`` pairs. A model folder stores one
    per side in ``tokenizer_config.json``, so text a user types goes through exactly the
    normalisation the model was trained with (``cyformer.data`` tasks define theirs here).
    """

    __slots__ = ("lowercase", "replace", "split", "join", "detokenize_replace")
    SPLITS = ("whitespace", "characters")

    def __init__(self, lowercase: bool = False, replace: Sequence[Sequence[str]] = (),
                 split: str = "whitespace", join: Optional[str] = None,
                 detokenize_replace: Sequence[Sequence[str]] = ()):
        if not isinstance(lowercase, bool):
            raise TypeError("lowercase must be a bool")
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, not {split!r}")
        self.lowercase = lowercase
        self.replace = self._pairs("replace", replace)
        self.split = split
        self.join = ("" if split == "characters" else " ") if join is None else join
        if not isinstance(self.join, str):
            raise TypeError("join must be a str")
        self.detokenize_replace = self._pairs("detokenize_replace", detokenize_replace)

    @staticmethod
    def _pairs(name: str, pairs) -> tuple:
        out = []
        for pair in pairs:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(x, str) for x in pair) or not pair[0]):
                raise ValueError(f"{name} must be a list of [old, new] string pairs (old non-empty), "
                                 f"got {pair!r}")
            out.append((pair[0], pair[1]))
        return tuple(out)

    def tokens(self, text: str) -> List[str]:
        if self.lowercase:
            text = text.lower()
        for old, new in self.replace:
            text = text.replace(old, new)
        if self.split == "characters":
            return [c for c in text if not c.isspace()]
        return text.split()

    def text(self, tokens: Sequence[str]) -> str:
        out = self.join.join(tokens)
        for old, new in self.detokenize_replace:
            out = out.replace(old, new)
        return out

    def to_dict(self) -> dict:
        return {"lowercase": self.lowercase, "replace": [list(p) for p in self.replace], "split": self.split,
                "join": self.join, "detokenize_replace": [list(p) for p in self.detokenize_replace]}

    @classmethod
    def from_dict(cls, d) -> "TextNormalizer":
        if not isinstance(d, dict):
            raise ValueError(f"a normalizer must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - set(cls.__slots__)
        if unknown:
            raise ValueError(f"unknown normalizer fields: {', '.join(sorted(unknown))}")
        return cls(**d)

    def __eq__(self, other) -> bool:
        return isinstance(other, TextNormalizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"TextNormalizer({self.to_dict()})"


class VocabTokenizer(Tokenizer):
    """Words or characters over a fixed vocabulary (the built-in tasks).

    ``level="word"`` splits on whitespace, ``"char"`` into characters; ``normalizers``
    (``{"source": TextNormalizer, "target": TextNormalizer}``) replace that per side with the
    normalisation a model was trained with, saved with the tokenizer.
    """

    def __init__(self, tokens: Sequence[str], level: str = "word",
                 normalizers: Optional[Mapping[str, "TextNormalizer"]] = None):
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', not {level!r}")
        self.level = level
        self.normalizers: Dict[str, TextNormalizer] = {}
        for side, norm in (normalizers or {}).items():
            if side not in ("source", "target"):
                raise ValueError(f"normalizers are per side ('source', 'target'), not {side!r}")
            if not isinstance(norm, TextNormalizer):
                norm = TextNormalizer.from_dict(norm)
            self.normalizers[side] = norm
        ordered = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        self._vocab = {t: i for i, t in enumerate(dict.fromkeys(ordered))}
        self.pad_id, self.eos_id, self.unk_id = 0, 1, 2
        self.bos_id = 3

    @classmethod
    def build(cls, texts: Iterable[str], level: str = "word", min_count: int = 1) -> "VocabTokenizer":
        counts: Dict[str, int] = {}
        for text in texts:
            for t in (text.split() if level == "word" else list(text)):
                counts[t] = counts.get(t, 0) + 1
        tokens = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(tokens, level)

    @property
    def vocab(self) -> Dict[str, int]:
        return self._vocab

    def tokenize(self, text: str, side: str = "source") -> List[str]:
        norm = self.normalizers.get(side)
        if norm is not None:
            return norm.tokens(text)
        return text.split() if self.level == "word" else list(text)

    def detokenize(self, pieces: List[str], side: str = "target") -> str:
        norm = self.normalizers.get(side)
        if norm is not None:
            return norm.text(pieces)
        return (" " if self.level == "word" else "").join(pieces)

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        atomic_write_bytes(os.path.join(directory, "vocab.json"),
                           json.dumps(self._vocab, ensure_ascii=False, indent=1).encode())
        config = {"tokenizer_class": "VocabTokenizer", "level": self.level}
        if self.normalizers:
            config["normalizers"] = {side: n.to_dict() for side, n in self.normalizers.items()}
        atomic_write_bytes(os.path.join(directory, "tokenizer_config.json"),
                           json.dumps(config, ensure_ascii=False, indent=1).encode())

    @classmethod
    def from_pretrained(cls, directory: str) -> "VocabTokenizer":
        vocab = _load_vocab(os.path.join(directory, "vocab.json"))
        config = read_json(os.path.join(directory, "tokenizer_config.json"))   # bounded size and nesting
        if not isinstance(config, dict):
            raise ValueError(f"{directory}/tokenizer_config.json must hold a JSON object")
        normalizers = config.get("normalizers") or {}
        if not isinstance(normalizers, dict):
            raise ValueError(f"{directory}/tokenizer_config.json: normalizers must map a side to a normalizer")
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        try:
            tok = cls(tokens, config.get("level", "word"), normalizers)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{directory}/tokenizer_config.json: {e}") from None
        if tok.vocab != vocab:
            raise ValueError(f"{directory}/vocab.json must list {SPECIALS} first, as ids 0-3")
        return tok
