"""Text in, vectors and labels out: ``TextEncoder`` over an ``Encoder`` and its tokenizer.

``TextEncoder.from_pretrained(dir)`` reads a Hugging Face BERT-layout folder or a
sentence-transformers folder (the model through ``Encoder.from_pretrained``, the tokenizer
from its ``tokenizer.json`` through Hugging Face's ``tokenizers`` library, so WordPiece, BPE
and Unigram tokenize exactly as transformers does), or a cyformer encoder folder with
cyformer's own tokenizer files. ``embed(texts)`` -> ``np.ndarray [N, d]``, pooled and
normalised as the folder says (sentence-transformers' ``1_Pooling`` / ``Normalize``), else
mean-pooled; ``classify(texts)`` -> a label and its probability per text (sequence heads) or
per token (token heads).

Texts are sorted by token count and run in batches of ``batch_size`` (less padding work;
results come back in input order). A text longer than ``max_len`` tokens (the least of the
model's positions, the tokenizer's ``model_max_length`` and sentence-transformers'
``max_seq_length``) is truncated as transformers truncates it (``truncation=True``: the
special tokens are kept), with one ``TruncationWarning`` per call that counts them.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .encoder import Encoder
from .io import read_json

TOKENIZER_FILE = "tokenizer.json"
# transformers writes model_max_length = int(1e30) when a tokenizer has no limit of its own
_NO_LIMIT = 10 ** 9

Text = Union[str, Tuple[str, str]]


class TruncationWarning(UserWarning):
    """Texts were longer than the model's ``max_len`` tokens and were cut."""


class Classification(NamedTuple):
    """A sequence head's answer for one text: the most probable label and its probability."""
    label: str
    score: float


class TokenClassification(NamedTuple):
    """A token head's answer for one token: the token, its label and probability, and where it
    is in the text (``text[start:end]``, character offsets as the tokenizer reports them)."""
    token: str
    label: str
    score: float
    start: int
    end: int


class _Encoded(NamedTuple):
    ids: List[List[int]]
    types: Optional[List[List[int]]]    # None: type 0 everywhere
    truncated: int
    encodings: Optional[list]           # tokenizers.Encoding objects (offsets, tokens), if any


class _HFTokenizer:
    """A ``tokenizers.Tokenizer`` read from ``tokenizer.json``, with truncation done here so that
    it can be counted (the file's own padding and truncation settings are switched off)."""

    def __init__(self, tokenizer, max_len: int, copy: bool = True):
        # a copy: the caller's tokenizer keeps its own padding and truncation settings
        self.tokenizer = tokenizer.__class__.from_str(tokenizer.to_str()) if copy else tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.cutter = tokenizer.__class__.from_str(self.tokenizer.to_str())
        self.cutter.enable_truncation(max_len)   # longest_first, specials kept, as transformers
        self.max_len = max_len

    @classmethod
    def from_file(cls, path: str, max_len: int) -> "_HFTokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - declared dependency
            raise ImportError("tokenizer.json files need the 'tokenizers' package") from e
        # bounded size and nesting first (a CheckpointError naming the file), then tokenizers' reader
        _, text = read_json(path, expect=dict, with_text=True)
        try:
            return cls(Tokenizer.from_str(text), max_len, copy=False)
        except Exception as e:   # tokenizers raises its own Exception type for a bad file
            raise ValueError(f"{path} is not a tokenizer the tokenizers library reads: "
                             f"{' '.join(str(e).split())[:200]}") from None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_count(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def encode(self, texts: Sequence[Text]) -> _Encoded:
        encodings = self.tokenizer.encode_batch(list(texts))
        long = [i for i, e in enumerate(encodings) if len(e.ids) > self.max_len]
        if long:
            for i, e in zip(long, self.cutter.encode_batch([texts[i] for i in long])):
                encodings[i] = e
        ids = [e.ids for e in encodings]
        types = [e.type_ids for e in encodings]
        if not any(any(t) for t in types):
            types = None
        return _Encoded(ids, types, len(long), encodings)


class _CyformerTokenizer:
    """cyformer's own tokenizers (``tokenizer_config.json`` + ``vocab.json``, or SentencePiece):
    the source side without EOS, as the encoders trained here see their text (``cyformer demo
    --task tagging|classify``: one id per word, one label per id)."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer = tokenizer
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def token_count(self, text: str) -> int:
        return len(self.tokenizer.encode([text], side="source", add_eos=False)[0])

    def encode(self, texts: Sequence[Text]) -> _Encoded:
        for t in texts:
            if not isinstance(t, str):
                raise TypeError("text pairs need a tokenizer.json tokenizer (this model's tokenizer "
                                "encodes single texts)")
        ids = self.tokenizer.encode(list(texts), side="source", add_eos=False)
        cut = 0
        for i, s in enumerate(ids):
            if len(s) > self.max_len:
                ids[i] = s[:self.max_len]
                cut += 1
        return _Encoded(ids, None, cut, None)

    def tokens(self, text: str, ids: List[int]):
        """(pieces, (start, end) offsets, special flags) of one encoded text; a piece's offsets are
        where it is found in the text from the previous one on (pieces the tokenizer normalised
        away from the text get an empty span there)."""
        pieces = self.tokenizer._id_to_piece()
        specials = self.tokenizer.special_ids
        out, offsets, pos = [], [], 0
        for t in ids:
            piece = pieces[t]
            at = text.find(piece, pos) if piece else -1
            span = (at, at + len(piece)) if at >= 0 else (pos, pos)
            pos = span[1]
            out.append(piece)
            offsets.append(span)
        return out, offsets, [int(t in specials) for t in ids]


def _tokenizer_max_len(folder: str) -> Optional[int]:
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    value = read_json(path, expect=dict).get("model_max_length")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < _NO_LIMIT:
        return None
    return int(value)


def _check_texts(texts, what: str = "texts") -> List[Text]:
    """A list of texts: strings, or (text, text_pair) pairs; one string is a list of one."""
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, np.ndarray):
        texts = texts.tolist()
    elif isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"{what} must be a str or a list of str, not {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(x, str) for x in t):
            texts[i] = (t[0], t[1])
        elif not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a str (or a pair of str), not {type(t).__name__}")
    return texts


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, not {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


class TextEncoder:
    """An ``Encoder`` with its tokenizer: ``embed(texts)`` and ``classify(texts)``.

    ``tokenizer``: a ``tokenizers.Tokenizer`` or a cyformer ``Tokenizer``. ``max_len``: truncation
    length in tokens (default and upper bound: the model's ``max_len``). ``lowercase``: lowercase
    texts first (sentence-transformers' ``do_lower_case``). ``prompts`` / ``default_prompt_name``:
    named prefixes, as sentence-transformers' ``encode(prompt_name=...)``.
    """

    def __init__(self, model: Encoder, tokenizer, *, max_len: Optional[int] = None, lowercase: bool = False,
                 prompts: Optional[dict] = None, default_prompt_name: Optional[str] = None):
        if not isinstance(model, Encoder):
            raise TypeError(f"model must be a cyformer.Encoder, not {type(model).__name__}")
        if model.config.n_features:
            raise ValueError(f"this encoder reads vectors of {model.config.n_features} features, not tokens: "
                             f"call Encoder.embed / classify with the vectors instead of a TextEncoder")
        limit = model.config.max_len
        if max_len is None:
            max_len = limit
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= limit:
            raise ValueError(f"max_len must be an int in [1, {limit}] (the model's positions), got {max_len!r}")
        self.model = model
        if isinstance(tokenizer, (_HFTokenizer, _CyformerTokenizer)):
            tokenizer = tokenizer.tokenizer
        from .tokenizer import Tokenizer
        if isinstance(tokenizer, Tokenizer):
            self._tok = _CyformerTokenizer(tokenizer, max_len)
        elif hasattr(tokenizer, "encode_batch") and hasattr(tokenizer, "to_str"):
            self._tok = _HFTokenizer(tokenizer, max_len)
        else:
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer or a cyformer Tokenizer, "
                            f"not {type(tokenizer).__name__}")
        if self._tok.vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {self._tok.vocab_size} entries but the model's vocabulary "
                             f"only {model.config.vocab_size}")
        self.max_len = max_len
        self.lowercase = bool(lowercase)
        self.prompts = dict(prompts or {})
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {default_prompt_name!r} is not one of the prompts")
        self.default_prompt_name = default_prompt_name

    @property
    def tokenizer(self):
        """The underlying tokenizer (a ``tokenizers.Tokenizer`` or a cyformer ``Tokenizer``)."""
        return self._tok.tokenizer

    @classmethod
    def from_pretrained(cls, directory: str, tokenizer_dir: Optional[str] = None, *,
                        mmap: bool = True, compute_type: str = "default") -> "TextEncoder":
        """A model folder with its tokenizer: Hugging Face (``tokenizer.json``), sentence-transformers
        (``modules.json``; the Transformer module's folder holds the tokenizer) or cyformer's own.
        ``compute_type`` (float32, int8, bfloat16, auto) as ``Encoder.from_pretrained``."""
        from .convert.sbert import transformer_folder
        directory = os.fspath(directory)
        model = Encoder.from_pretrained(directory, mmap=mmap, compute_type=compute_type)
        folder, _ = transformer_folder(directory)
        # a sentence-transformers folder's settings, or those a TextEncoder saved with the model
        st = model.config.extra.get("sentence_transformers") or {}
        tok_folder = os.fspath(tokenizer_dir) if tokenizer_dir is not None else folder
        limits = [model.config.max_len, _tokenizer_max_len(tok_folder), st.get("max_seq_length")]
        max_len = min(v for v in limits if isinstance(v, int) and not isinstance(v, bool) and v > 0)
        path = os.path.join(tok_folder, TOKENIZER_FILE)
        if os.path.isfile(path):
            tokenizer = _HFTokenizer.from_file(path, max_len)
        else:
            from .tokenizer import Tokenizer
            try:
                tokenizer = _CyformerTokenizer(Tokenizer.from_pretrained(tok_folder), max_len)
            except FileNotFoundError:
                raise FileNotFoundError(f"{tok_folder} holds no tokenizer: expected {TOKENIZER_FILE} (Hugging "
                                        f"Face tokenizers) or cyformer's tokenizer files; save the "
                                        f"tokenizer with the model (tokenizer.save_pretrained)") from None
        return cls(model, tokenizer, max_len=max_len, lowercase=bool(st.get("do_lower_case", False)),
                   prompts=st.get("prompts"), default_prompt_name=st.get("default_prompt_name"))

    def save_pretrained(self, directory: str) -> None:
        """The model in cyformer's format (memory-mapped when loaded again) with the tokenizer
        (``tokenizer.json``, or cyformer's files) and what ``from_pretrained`` read besides:
        pooling and normalisation, ``max_len``, lowercasing and prompts (in the config's
        ``extra["sentence_transformers"]``)."""
        from .io import atomic_write_bytes
        import json
        os.makedirs(directory, exist_ok=True)
        extra = self.model.config.extra
        st = dict(extra.get("sentence_transformers") or {})
        st.update(max_seq_length=self.max_len, do_lower_case=self.lowercase, prompts=dict(self.prompts),
                  default_prompt_name=self.default_prompt_name)
        st.setdefault("pooling", ["mean"])
        st.setdefault("normalize", False)
        extra["sentence_transformers"] = st
        self.model.save_pretrained(directory)
        if isinstance(self._tok, _HFTokenizer):
            atomic_write_bytes(os.path.join(directory, TOKENIZER_FILE), self._tok.tokenizer.to_str().encode("utf-8"))
            atomic_write_bytes(os.path.join(directory, "tokenizer_config.json"),
                               json.dumps({"model_max_length": self.max_len}, indent=1).encode())
        else:
            self._tok.tokenizer.save_pretrained(directory)

    # -- tokens ----------------------------------------------------------------------------------
    def _prompt(self, prompt: Optional[str], prompt_name: Optional[str]) -> Optional[str]:
        if prompt is not None and prompt_name is not None:
            raise ValueError("give prompt or prompt_name, not both")
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                known = ", ".join(sorted(self.prompts)) or "none"
                raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts ({known})")
            prompt = self.prompts[prompt_name]
        elif prompt is None and self.default_prompt_name is not None:
            prompt = self.prompts[self.default_prompt_name]
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        return prompt or None

    def _encode(self, texts: List[Text], prompt: Optional[str] = None) -> _Encoded:
        if prompt:
            texts = [(prompt + t) if isinstance(t, str) else (prompt + t[0], t[1]) for t in texts]
        if self.lowercase:
            texts = [t.lower() if isinstance(t, str) else (t[0].lower(), t[1].lower()) for t in texts]
        enc = self._tok.encode(texts)
        if enc.truncated:
            warnings.warn(f"{enc.truncated} of {len(texts)} text(s) were longer than max_len={self.max_len} "
                          f"tokens and were truncated", TruncationWarning, stacklevel=3)
        return enc

    def _batches(self, enc: _Encoded, batch_size: int, progress: bool) -> Iterator[Tuple[List[int], tuple]]:
        """Chunks of indices sorted by length (longest first, as sentence-transformers), each with
        the arguments of the model call: a padded id array, lengths, token types (or None)."""
        lengths = np.fromiter((len(s) for s in enc.ids), dtype=np.int64, count=len(enc.ids))
        order = np.argsort(-lengths, kind="stable")
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(order), unit="text", file=sys.stderr)
        try:
            for begin in range(0, len(order), batch_size):
                chunk = order[begin:begin + batch_size].tolist()
                n = lengths[chunk]
                width = max(int(n.max()), 1)
                ids = np.zeros((len(chunk), width), dtype=np.int64)
                types = None if enc.types is None else np.zeros((len(chunk), width), dtype=np.int64)
                for row, i in enumerate(chunk):
                    ids[row, :n[row]] = enc.ids[i]
                    if types is not None:
                        types[row, :n[row]] = enc.types[i]
                yield chunk, (ids, n, types)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    def tokenize(self, texts: Union[Text, Sequence[Text]]) -> List[List[int]]:
        """The token ids the model sees for each text (after lowercasing and truncation)."""
        return self._encode(_check_texts(texts)).ids

    # -- embeddings ------------------------------------------------------------------------------
    def embed(self, texts: Union[Text, Sequence[Text]], batch_size: int = 32, pooling=None,
              normalize: Optional[bool] = None, *, prompt: Optional[str] = None,
              prompt_name: Optional[str] = None, progress: bool = False) -> np.ndarray:
        """Sentence embeddings, float32 ``[len(texts), d]`` in input order (a single string: ``[d]``).

        ``pooling`` / ``normalize``: ``Encoder.embed``'s, defaulting to the folder's
        sentence-transformers modules, else mean pooling without normalisation. ``prompt`` (a
        string put before every text) or ``prompt_name`` (one of the folder's prompts; its
        ``default_prompt_name`` applies when neither is given), as sentence-transformers'
        ``encode``. A text with no tokens at all embeds as zeros.
        """
        single = isinstance(texts, str)
        texts = _check_texts(texts)
        batch_size = _check_batch_size(batch_size)
        modes, normalize = self.model.pooling_defaults(pooling, normalize)
        prompt = self._prompt(prompt, prompt_name)
        skip = 0
        st = self.model.config.extra.get("sentence_transformers") or {}
        if prompt and not st.get("include_prompt", True):
            skip = self._tok.token_count(prompt) - 1   # the prompt's tokens and the opening special
        dim = self.model.config.d_model * len(modes)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        enc = self._encode(texts, prompt)
        for chunk, (ids, n, types) in self._batches(enc, batch_size, progress):
            if n[-1] == 0:   # texts without tokens (sorted last) stay zeros, as sentence-transformers'
                live = n > 0  # clamped mean gives them
                if not live.any():
                    continue
                chunk, ids, n = np.asarray(chunk)[live], ids[live], n[live]
                types = None if types is None else types[live]
            out[chunk] = self.model.embed(ids, n, types, pooling=modes, normalize=normalize, prompt_length=skip)
        return out[0] if single else out

    encode = embed   # sentence-transformers' name

    # -- classification --------------------------------------------------------------------------
    def _head(self) -> str:
        self.model._require_head()   # a clear error naming the checkpoint's architecture
        return self.model.config.head

    def _labels(self, n_labels: int) -> List[str]:
        id2label = self.model.config.id2label or {}
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n_labels)]

    def predict_proba(self, texts: Union[Text, Sequence[Text]], batch_size: int = 32, *,
                      progress: bool = False) -> Union[np.ndarray, List[np.ndarray]]:
        """Label probabilities: ``[len(texts), n_labels]`` for a sequence head (softmax of the logits;
        a sigmoid for a one-logit head, as transformers' pipeline), or one ``[tokens, n_labels]``
        array per text for a token head."""
        head = self._head()
        texts = _check_texts(texts)
        batch_size = _check_batch_size(batch_size)
        probs, _ = self._probabilities(texts, batch_size, progress, head)
        return probs

    def _probabilities(self, texts: List[Text], batch_size: int, progress: bool, head: str):
        enc = self._encode(texts)
        for i, s in enumerate(enc.ids):
            if not s:
                raise ValueError(f"texts[{i}] has no tokens to classify")
        per_token = head == "token_classification"
        out: list = [None] * len(texts)
        for chunk, (ids, n, types) in self._batches(enc, batch_size, progress):
            logits = np.asarray(self.model.classify(ids, n, token_type_ids=types), dtype=np.float32)
            p = 1.0 / (1.0 + np.exp(-logits)) if logits.shape[-1] == 1 else _softmax(logits)
            for row, i in enumerate(chunk):
                out[i] = p[row, :n[row]] if per_token else p[row]
        if not per_token:
            return (np.stack(out) if out else np.zeros((0, self.model.config.n_labels), dtype=np.float32)), enc
        return out, enc

    def classify(self, texts: Union[Text, Sequence[Text]], batch_size: int = 32, *, progress: bool = False):
        """The most probable label of each text with its probability (``Classification(label,
        score)``), in input order; for a token head, a list of ``TokenClassification(token, label,
        score, start, end)`` per text, special tokens ([CLS], [SEP]) left out. A single text
        (or pair) gives its own answer rather than a list."""
        head = self._head()
        single = isinstance(texts, str)
        texts = _check_texts(texts)
        batch_size = _check_batch_size(batch_size)
        probs, enc = self._probabilities(texts, batch_size, progress, head)
        if head != "token_classification":
            if not len(texts):
                return []
            labels = self._labels(probs.shape[1])
            if probs.shape[1] == 1:   # one logit: its sigmoid is the probability of that label
                out = [Classification(labels[0], float(p[0])) for p in probs]
            else:
                best = probs.argmax(axis=1)
                out = [Classification(labels[b], float(p[b])) for b, p in zip(best, probs)]
            return out[0] if single else out
        results = []
        for i, p in enumerate(probs):
            labels = self._labels(p.shape[1])
            best = p.argmax(axis=1)
            if enc.encodings is not None:
                e = enc.encodings[i]
                tokens, offsets, special = e.tokens, e.offsets, e.special_tokens_mask
            else:
                tokens, offsets, special = self._tok.tokens(texts[i], enc.ids[i])
            results.append([TokenClassification(tokens[j], labels[best[j]], float(p[j, best[j]]), *offsets[j])
                            for j in range(len(best)) if not special[j]])
        return results[0] if single else results

    def __repr__(self) -> str:
        c = self.model.config
        return f"TextEncoder(d_model={c.d_model}, n_layers={c.n_layers}, max_len={self.max_len}, head={c.head!r})"
