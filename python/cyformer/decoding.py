"""Generation over the incremental decoder: greedy (the beam-1 fast path), beam search, sampling.

Options are named as in CTranslate2; Hugging Face's names are accepted where they mean the
same thing (``num_beams``, ``max_new_tokens``, ``min_new_tokens``, ``num_return_sequences``,
``do_sample`` with ``top_k`` / ``top_p`` / ``temperature``, ``bad_words_ids``; see
``resolve_options``). ``max_length`` counts generated tokens, EOS included (HF's
``max_new_tokens``). Every result's ``sequences`` are n-best, best first, without the start
token and ending in EOS when one was generated; ``scores`` are length-normalised sums of
log-probabilities, ``sum / length ** length_penalty`` with the length counting EOS (HF's
``sequences_scores``).

Beam search follows Hugging Face: log-probabilities of the raw logits, then the pad token
(never generated, as for Marian) and, before ``min_length``, EOS are masked; each step keeps
the best ``2 * beam_size`` candidates of ``beam_size * vocab``, moves EOS candidates ranked
within the first ``beam_size`` to the finished hypotheses, and continues with the best
``beam_size`` others. A sentence stops once no running beam can beat its worst finished
hypothesis; the batch stops when every sentence has.

Options that shape the search (each costs nothing per step when unset):

- ``target_prefix``: per sentence a list of target ids (or None) the decoder is forced
  through first; the returned sequences start with it (as CTranslate2's). ``max_length`` and
  ``min_length`` count the tokens decoded after it (HF's ``max_new_tokens`` after
  ``decoder_input_ids``; CTranslate2 counts the prefix in ``max_decoding_length``), a
  sentence's decoding also ends at the model's ``max_len`` positions, and scores sum and
  normalise over the tokens after the prefix only (as HF's).
- ``repetition_penalty`` (CTRL, as HF's): every token id already in the hypothesis -- the
  decoder start token, the target prefix and the generated tokens, each counted once --
  gets ``score / penalty`` if its score is > 0, else ``score * penalty``. Greedy search and
  sampling penalise the raw logits, beam search the log-probabilities (both as HF does).
- ``no_repeat_ngram_size=n``: a token that would complete an n-gram already in the
  hypothesis (start token included, as HF's) is masked.
- ``suppress_sequences`` (HF's ``bad_words_ids``): a one-token sequence is never generated;
  a longer one has its last token masked when the hypothesis ends with the others.
- ``disable_unk``: the unknown token (``unk_id``, or the config's) is never generated.
- ``return_alternatives`` (CTranslate2's): after the prefix, the ``num_hypotheses`` most
  likely next tokens (EOS excluded unless it is the only choice; at least
  ``min_alternative_expansion_prob`` likely), each continued by the decoding the other
  options ask for (greedy, sampling or beam search). The alternatives come most likely
  first (not re-ranked); each score is the normalised sum over the alternative token and
  its continuation.
- ``max_input_length`` (CTranslate2's, default 1024): a source longer than this is cut to
  its first ``max_input_length`` tokens, its EOS kept as the last one (as CTranslate2's
  vocabulary does); 0 or None: no cut. A source still longer than the model's ``max_len``
  is refused as without the option (``Translator`` cuts such sources to ``max_len`` itself,
  with a warning).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from ._engine.search import topk
from ._engine.softmax import log_softmax_stats, softmax_forward
from . import threads


@dataclass
class GenerationResult:
    """One source's n-best list."""

    sequences: List[List[int]]
    scores: Optional[List[float]] = None
    attention: Optional[List[np.ndarray]] = None  # per hypothesis: [len, S] or [len, heads, S]


@dataclass
class GenerationStepResult:
    """One token of a ``generate_tokens`` stream.

    ``step`` counts generated tokens from 0 (a target prefix is not streamed);
    ``log_prob`` is the token's log-probability under the distribution it was chosen
    from; ``is_last`` marks the final token (EOS, or the length limit). ``text`` is the
    piece of detokenized text the token adds (``Translator.generate_tokens`` only).
    """

    step: int
    token_id: int
    log_prob: float
    is_last: bool
    text: Optional[str] = None


@dataclass
class GenerationOptions:
    beam_size: int = 1
    max_length: Optional[int] = None  # None: min(256, the model's max_len)
    min_length: int = 0
    length_penalty: float = 1.0
    num_hypotheses: int = 1
    sampling_topk: int = 1
    sampling_topp: float = 1.0
    sampling_temperature: float = 1.0
    seed: Optional[int] = None
    return_scores: bool = True
    return_attention: bool = False
    attention_per_head: bool = False
    suppress_pad: bool = True
    target_prefix: Optional[List[Optional[List[int]]]] = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    disable_unk: bool = False
    unk_id: Optional[int] = None
    suppress_sequences: Optional[List[List[int]]] = None
    return_alternatives: bool = False
    min_alternative_expansion_prob: float = 0.0
    max_input_length: Optional[int] = 1024

    def validate(self, max_len: int, config=None) -> None:
        if self.max_length is None:
            self.max_length = min(256, max_len)
        def whole(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
            if v < low:
                raise ValueError(f"{name} must be >= {low}, got {v}")

        whole("beam_size", 1)
        whole("max_length", 1)
        whole("min_length", 0)
        whole("num_hypotheses", 1)
        whole("sampling_topk", 0)
        whole("no_repeat_ngram_size", 0)
        for name in ("return_scores", "return_attention", "attention_per_head", "suppress_pad",
                     "disable_unk", "return_alternatives"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, not {type(getattr(self, name)).__name__}")
        if self.num_hypotheses > self.beam_size and not self.return_alternatives:
            raise ValueError(f"num_hypotheses={self.num_hypotheses} exceeds beam_size={self.beam_size}")
        if self.min_length > self.max_length:
            raise ValueError(f"min_length={self.min_length} exceeds max_length={self.max_length}")
        if self.max_length > max_len:
            raise ValueError(f"max_length={self.max_length} exceeds the model's max_len={max_len} positions")
        for name in ("length_penalty", "sampling_topp", "sampling_temperature", "repetition_penalty",
                     "min_alternative_expansion_prob"):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                    or not np.isfinite(v)):
                raise TypeError(f"{name} must be a finite number")
        if not 0.0 < self.sampling_topp <= 1.0:
            raise ValueError(f"sampling_topp must be in (0, 1], got {self.sampling_topp}")
        if self.sampling_temperature <= 0:
            raise ValueError(f"sampling_temperature must be > 0, got {self.sampling_temperature}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not 0.0 <= self.min_alternative_expansion_prob <= 1.0:
            raise ValueError(f"min_alternative_expansion_prob must be in [0, 1], "
                             f"got {self.min_alternative_expansion_prob}")
        if self.sampling and self.beam_size > 1:
            raise ValueError("sampling (sampling_topk != 1 or sampling_topp < 1) needs beam_size=1")
        if self.max_input_length is not None:
            whole("max_input_length", 0)
        if config is not None:
            self._validate_ids(config)

    def _validate_ids(self, config) -> None:
        vocab = config.tgt_vocab_size
        if self.unk_id is not None:
            v = self.unk_id
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"unk_id must be an int, not {type(v).__name__}")
            if not 0 <= v < vocab:
                raise ValueError(f"unk_id={v} is outside the target vocabulary [0, {vocab})")
        if self.disable_unk and self.unk_id is None:
            unk = getattr(config, "unk_id", None)
            if unk is None:
                raise ValueError("disable_unk needs the unknown token's id: pass unk_id=... (the model's "
                                 "config has none; Translator passes its tokenizer's)")
            self.unk_id = int(unk)
        if self.suppress_sequences is not None:
            self.suppress_sequences = [_id_list(s, f"suppress_sequences[{i}]", vocab, empty=False)
                                       for i, s in enumerate(_listed(self.suppress_sequences,
                                                                     "suppress_sequences"))]
        if self.target_prefix is not None:
            self.target_prefix = [None if p is None else _id_list(p, f"target_prefix[{i}]", vocab)
                                  for i, p in enumerate(_listed(self.target_prefix, "target_prefix"))]

    @property
    def sampling(self) -> bool:
        return self.sampling_topk != 1 or self.sampling_topp < 1.0


def _listed(value, name: str) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a list with one entry per item, not {type(value).__name__}")
    return list(value)


def _id_list(value, name: str, vocab: int, empty: bool = True) -> List[int]:
    """A flat sequence of target token ids, checked against the vocabulary."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be token ids, not text (Translator takes text)")
    if hasattr(value, "detach"):   # a torch tensor
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a flat list of token ids, got shape {a.shape}")
    if a.size and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must hold integer token ids, got dtype {a.dtype}")
    if not a.size and not empty:
        raise ValueError(f"{name} is empty")
    if a.size and (a.min() < 0 or a.max() >= vocab):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        raise ValueError(f"{name} holds token id {bad}, outside the target vocabulary [0, {vocab})")
    return [int(t) for t in a]


# -- option names ------------------------------------------------------------------------------
_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationOptions))

# Hugging Face (and CTranslate2 Translator) names -> ours, where they mean the same thing.
ALIASES = {
    "num_beams": "beam_size",
    "max_new_tokens": "max_length",
    "min_new_tokens": "min_length",
    "num_return_sequences": "num_hypotheses",
    "top_k": "sampling_topk",
    "top_p": "sampling_topp",
    "temperature": "sampling_temperature",
    "bad_words_ids": "suppress_sequences",
    "max_decoding_length": "max_length",   # CTranslate2's Translator
    "min_decoding_length": "min_length",
}
_HF_SAMPLING = ("top_k", "top_p", "temperature")


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:   # arrays and other values without a plain truth value
        return a is b


def resolve_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """Map Hugging Face names onto ours; return a new dict of ``GenerationOptions`` fields.

    ``do_sample=True`` samples with HF's defaults (``top_k=50``, ``top_p=1.0``,
    ``temperature=1.0``) unless given; ``do_sample=False`` refuses sampling options that
    ask for sampling. An alias given as None counts as not given. Giving both names of one
    option with different values is a ValueError; an unknown name is a TypeError.
    """
    out = dict(options)
    do_sample = out.pop("do_sample", None)
    given_hf_sampling = [n for n in _HF_SAMPLING if out.get(n) is not None]
    for alias, name in ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if value is None:
            continue
        if name in out and out[name] is not None and not _same(out[name], value):
            raise ValueError(f"{alias}={value!r} and {name}={out[name]!r} name the same option: give one")
        out[name] = value
    unknown = sorted(set(out) - _FIELDS)
    if unknown:
        raise TypeError(f"generate() got an unexpected keyword argument {unknown[0]!r}")
    if do_sample is not None:
        if not isinstance(do_sample, (bool, np.bool_)):
            raise TypeError(f"do_sample must be a bool, not {type(do_sample).__name__}")
        if do_sample:
            if out.get("sampling_topk") is None:
                out["sampling_topk"] = 50   # HF's default top_k
        else:
            k, p = out.get("sampling_topk", 1), out.get("sampling_topp", 1.0)
            if (k is not None and k != 1) or (p is not None and p < 1.0):
                raise ValueError(f"do_sample=False contradicts sampling_topk={k}, sampling_topp={p}: "
                                 f"drop do_sample or the sampling options")
    elif given_hf_sampling:
        raise ValueError(f"{', '.join(given_hf_sampling)} need do_sample=True (as in Hugging Face), or use "
                         f"sampling_topk / sampling_topp / sampling_temperature")
    return out


def make_options(config, options: Dict[str, Any]) -> GenerationOptions:
    opts = GenerationOptions(**resolve_options(options))
    opts.validate(config.max_len, config)
    return opts


# -- processors ----------------------------------------------------------------------------------
class _Processors:
    """The logits processors the options ask for, applied in place to a step's scores.

    ``scores`` [R, V] float32 are raw logits (greedy, sampling) or log-probabilities (beam
    search), as HF applies them; ``hist`` [R, T] int32 holds each row's tokens so far,
    the decoder start token first. ``build`` returns None when no option is set.
    """

    def __init__(self, opts: GenerationOptions):
        self.penalty = np.float32(opts.repetition_penalty) if opts.repetition_penalty != 1.0 else None
        self.ngram = int(opts.no_repeat_ngram_size)
        banned = set()
        self.sequences: List[np.ndarray] = []
        if opts.disable_unk:
            banned.add(int(opts.unk_id))
        for s in opts.suppress_sequences or ():
            if len(s) == 1:
                banned.add(s[0])
            else:
                self.sequences.append(np.asarray(s, dtype=np.int32))
        self.banned = np.array(sorted(banned), dtype=np.intp) if banned else None
        self.needs_history = self.penalty is not None or self.ngram > 0 or bool(self.sequences)

    @classmethod
    def build(cls, opts: GenerationOptions) -> Optional["_Processors"]:
        p = cls(opts)
        return p if p.needs_history or p.banned is not None else None

    def __call__(self, scores: np.ndarray, hist: Optional[np.ndarray]) -> None:
        if self.penalty is not None:
            # gather then scatter, as HF: a token counted twice is penalised once
            seen = np.take_along_axis(scores, hist, axis=1)
            seen = np.where(seen < 0, seen * self.penalty, seen / self.penalty)
            np.put_along_axis(scores, hist, seen, axis=1)
        if self.ngram:
            self._ban_ngrams(scores, hist)
        if self.banned is not None:
            scores[:, self.banned] = -np.inf
        T = hist.shape[1] if hist is not None else 0
        for s in self.sequences:
            m = len(s)
            if T >= m - 1:
                rows = np.flatnonzero((hist[:, T - m + 1:] == s[:-1]).all(axis=1))
                scores[rows, s[-1]] = -np.inf

    def _ban_ngrams(self, scores: np.ndarray, hist: np.ndarray) -> None:
        n = self.ngram
        T = hist.shape[1]
        if T < n:   # no complete n-gram yet (HF: cur_len + 1 < n)
            return
        windows = np.lib.stride_tricks.sliding_window_view(hist, n, axis=1)   # [R, T-n+1, n]
        tail = hist[:, T - n + 1:]                                            # [R, n-1]
        match = (windows[:, :, :n - 1] == tail[:, None, :]).all(axis=2)        # [R, T-n+1]
        rows, at = np.nonzero(match)
        scores[rows, windows[rows, at, n - 1]] = -np.inf


def _mask_plan(gen, limit, opts: GenerationOptions, config):
    """HF's logits processors at one step, as masks: (tokens -inf on every row: the pad token,
    never generated by Marian; rows whose EOS is -inf: not before ``min_length``; rows that
    can only produce EOS, which then scores 0: the last position with ``config.forced_eos``,
    else None). ``gen`` is the index of the token each row generates next (negative inside a
    target prefix), ``limit`` its last allowed + 1; arrays [R] or scalars."""
    always = [config.pad_id] if opts.suppress_pad and config.pad_id != config.eos_id else []
    last = (gen == limit - 1) if config.forced_eos else None
    early = gen < opts.min_length
    if last is not None:
        early = np.logical_and(early, np.logical_not(last))
    return always, early, last


def _mask_logprobs(logp: np.ndarray, step: int, opts: GenerationOptions, config) -> None:
    """The masks of ``_mask_plan`` on log-probabilities (as HF's beam search), every row at ``step``."""
    rows = logp.shape[0]
    _mask_rows(logp, np.full(rows, step), np.full(rows, opts.max_length), opts, config)


def _mask_rows(logp: np.ndarray, gen: np.ndarray, limit: np.ndarray, opts: GenerationOptions, config) -> None:
    """The masks of ``_mask_plan`` on log-probabilities, a step per row (``gen`` [R], ``limit`` [R])."""
    always, early, last = _mask_plan(gen, limit, opts, config)
    logp[:, always] = -np.inf
    if last is not None and last.any():
        logp[last] = -np.inf
        logp[last, config.eos_id] = 0.0
    logp[early, config.eos_id] = -np.inf


def _banned(step: int, opts: GenerationOptions, config) -> Optional[List[int]]:
    """The tokens the masks set to -inf on every row at ``step``, for the fused log-softmax
    top-k (``topk(log_softmax=True, banned=...)``); None at the forced-EOS step, which it replaces."""
    always, early, last = _mask_plan(step, opts.max_length, opts, config)
    if last:
        return None
    return always + ([config.eos_id] if early else [])


def _greedy_pick(logits: np.ndarray, gen: np.ndarray, limit: np.ndarray, opts: GenerationOptions,
                 config) -> tuple:
    """Greedy search's choice per row, as HF's: the argmax of the logits (after the logits
    processors) under ``_mask_plan``'s masks. Returns (token ids [R] int64, their
    log-probabilities [R] float32, bitwise the log-softmax's; zeros unless
    ``opts.return_scores``). The log-softmax is never written, and its statistics only
    computed for scores. ``logits`` is overwritten."""
    rows = logits.shape[0]
    if opts.return_scores:
        m, ls = log_softmax_stats(logits, threads.get_num_threads())
    always, early, last = _mask_plan(gen, limit, opts, config)
    logits[:, always] = -np.inf
    logits[early, config.eos_id] = -np.inf
    chosen = logits.argmax(axis=1)
    picked = ((logits[np.arange(rows), chosen] - m) - ls if opts.return_scores
              else np.zeros(rows, np.float32))
    if last is not None:
        chosen[last] = config.eos_id
        picked[last] = 0.0
    return chosen, picked


def _normalise(total: float, length: int, penalty: float) -> float:
    return total / (length ** penalty) if length > 0 else 0.0


def _attention_rows(attn: np.ndarray, rows, src_len, per_head: bool):
    """Per-row cross-attention of one step: [H, S_b] or [S_b] (averaged over heads)."""
    out = []
    for r, n in zip(rows, src_len):
        a = attn[r, :, :n]
        out.append(a.copy() if per_head else a.mean(axis=0))
    return out


class _Prefix:
    """Target prefixes of a batch: ``length`` [B], ``ids`` [B, P_max] (padded), and ``limit``
    [B], how many tokens each sentence may generate after its prefix."""

    def __init__(self, prefixes: List[Optional[List[int]]], max_length: int, max_len: int):
        self.length = np.array([len(p or ()) for p in prefixes], dtype=np.int64)
        self.ids = np.zeros((len(prefixes), max(1, int(self.length.max()))), dtype=np.int32)
        for b, p in enumerate(prefixes):
            if p:
                self.ids[b, :len(p)] = p
        full = np.flatnonzero(self.length >= max_len)
        if full.size:
            b = int(full[0])
            raise ValueError(f"target_prefix[{b}] has {self.length[b]} tokens, leaving no room within the "
                             f"model's max_len={max_len} positions")
        self.limit = np.minimum(max_length, max_len - self.length)
        self.steps = int((self.length + self.limit).max())

    @classmethod
    def build(cls, opts: GenerationOptions, max_len: int) -> Optional["_Prefix"]:
        if opts.target_prefix is None or not any(opts.target_prefix):
            return None
        return cls(opts.target_prefix, opts.max_length, max_len)

    def check(self, batch: int) -> None:
        if len(self.length) != batch:
            raise ValueError(f"target_prefix has {len(self.length)} entries for {batch} source(s)")


def _start_history(rows: int, steps: int, start: int) -> np.ndarray:
    hist = np.empty((rows, steps + 1), dtype=np.int32)
    hist[:, 0] = start
    return hist


# -- entry points ----------------------------------------------------------------------------------
def generate(model, src, src_lengths=None, **options) -> List[GenerationResult]:
    opts = make_options(model.config, options)
    src, src_lengths = _truncate_sources(model, src, src_lengths, opts.max_input_length)
    # Held once for the whole loop: each step's own (nested) hold is then only a counter.
    # governed: each step's kernels run at the thread count the step governor measured best
    with threads.blas_single_threaded(), threads.governed():
        if opts.return_alternatives:
            return _alternatives(model, src, src_lengths, opts)
        return _search(model, src, src_lengths, opts)


def _search(model, src, src_lengths, opts: GenerationOptions) -> List[GenerationResult]:
    if opts.beam_size == 1:
        return _greedy_or_sample(model, src, src_lengths, opts)
    return _beam_search(model, src, src_lengths, opts)


def _truncate_sources(model, src, src_lengths, limit: Optional[int]):
    """Cut sources longer than ``limit`` tokens, keeping a final EOS (CTranslate2's rule).

    Inputs with no source over the limit are returned as they are (the common case costs a
    length check); others come back as a padded [B, T] int32 array plus lengths.
    """
    if not limit or getattr(model.config, "n_src_features", 0):   # the limit counts tokens
        return src, src_lengths
    if src_lengths is None:
        if isinstance(src, np.ndarray) and src.ndim in (1, 2) and src.shape[-1] <= limit:
            return src, src_lengths
        if isinstance(src, (list, tuple)) and all(hasattr(s, "__len__") and len(s) <= limit for s in src):
            return src, src_lengths
    from .model import make_batch
    c = model.config
    batch = make_batch(src, src_lengths, vocab_size=c.src_vocab_size, max_len=np.iinfo(np.int32).max,
                       name="src")
    if int(batch.length.max()) <= limit:
        return src, src_lengths
    lengths = np.minimum(batch.length, limit).astype(np.int32)
    out = np.zeros((batch.size, int(lengths.max())), dtype=np.int32)
    for b, (start, n) in enumerate(zip(batch.start.tolist(), batch.length.tolist())):
        keep = min(n, limit)
        out[b, :keep] = batch.ids[start:start + keep]
        if n > limit and batch.ids[start + n - 1] == c.eos_id:
            out[b, keep - 1] = c.eos_id
    return out, lengths


def _greedy_or_sample(model, src, src_lengths, opts: GenerationOptions) -> List[GenerationResult]:
    config = model.config
    prefix = _Prefix.build(opts, config.max_len)
    procs = _Processors.build(opts)
    steps = opts.max_length if prefix is None else prefix.steps
    state = model.start_decoding(src, src_lengths, 1, max_steps=steps)
    batch = state.rows
    if prefix is not None:
        prefix.check(batch)
    rng = np.random.default_rng(opts.seed) if opts.sampling else None
    tokens = np.full(batch, config.decoder_start_id, dtype=np.int32)
    alive = np.arange(batch)  # source index of each row
    sequences: List[List[int]] = [[] for _ in range(batch)]
    totals = np.zeros(batch, dtype=np.float64)
    attention: List[list] = [[] for _ in range(batch)]
    hist = (_start_history(batch, steps, config.decoder_start_id)
            if procs is not None and procs.needs_history else None)
    s_max = int(state.src_lengths.max())
    for step in range(steps):
        attn = (np.zeros((state.rows, config.n_heads, s_max), dtype=np.float32)
                if opts.return_attention else None)
        logits = model.decode_step(state, tokens, attention=attn)
        if procs is not None:   # on the raw logits, as HF's greedy search and sampling
            procs(logits, hist[alive, :step + 1] if hist is not None else None)
        if rng is None:
            if prefix is None:
                gen, limit, forced = np.full(len(alive), step), np.full(len(alive), opts.max_length), None
            else:
                gen, limit = step - prefix.length[alive], prefix.limit[alive]
                forced = gen < 0
            chosen, picked = _greedy_pick(logits, gen, limit, opts, config)
        else:
            softmax_forward(logits, log=True, n_threads=threads.get_num_threads())
            if prefix is None:
                _mask_logprobs(logits, step, opts, config)
                forced = None
            else:
                gen = step - prefix.length[alive]
                _mask_rows(logits, gen, prefix.limit[alive], opts, config)
                forced = gen < 0
            if forced is None or not forced.any():
                chosen = _sample(logits, opts, rng)
            else:   # rows inside their prefix draw nothing, so a prefix does not shift the random stream
                chosen = np.zeros(len(alive), dtype=np.int64)
                free = np.flatnonzero(~forced)
                if free.size:
                    chosen[free] = _sample(logits[free], opts, rng)
            picked = logits[np.arange(len(chosen)), chosen]
        if forced is not None and forced.any():
            chosen[forced] = prefix.ids[alive[forced], step]
            picked[forced] = 0.0
        for r, b in enumerate(alive):
            sequences[b].append(int(chosen[r]))
        totals[alive] += picked
        if hist is not None:
            hist[alive, step + 1] = chosen
        if attn is not None:
            for b, a in zip(alive, _attention_rows(attn, range(len(alive)), state.src_len, opts.attention_per_head)):
                attention[b].append(a)
        if prefix is None:
            running = chosen != config.eos_id
            if not running.any() or step == opts.max_length - 1:
                break
        else:
            running = (forced | (chosen != config.eos_id)) & (gen + 1 < prefix.limit[alive])
            if not running.any():
                break
        keep = np.flatnonzero(running)
        if len(keep) < len(alive):
            state.select(keep)
            alive = alive[keep]
        tokens = chosen[keep].astype(np.int32)
    state.release()   # the caches go back to the model's pool for the next call
    results = []
    for b in range(batch):
        seq = sequences[b]
        res = GenerationResult(sequences=[seq])
        if opts.return_scores:
            n = len(seq) - (int(prefix.length[b]) if prefix is not None else 0)
            res.scores = [_normalise(float(totals[b]), n, opts.length_penalty)]
        if opts.return_attention:
            res.attention = [np.stack(attention[b])]
        results.append(res)
    return results


def _sample(logp: np.ndarray, opts: GenerationOptions, rng: np.random.Generator) -> np.ndarray:
    """Sample one token per row from top-k / top-p of softmax(logp / temperature)."""
    out = np.empty(logp.shape[0], dtype=np.int64)
    for r in range(logp.shape[0]):
        scores = logp[r].astype(np.float64) / opts.sampling_temperature
        k = opts.sampling_topk if opts.sampling_topk > 0 else scores.size
        k = min(k, int(np.isfinite(scores).sum()) or 1)
        cand = np.argpartition(-scores, k - 1)[:k]
        cand = cand[np.argsort(-scores[cand], kind="stable")]
        p = np.exp(scores[cand] - scores[cand[0]])
        p /= p.sum()
        if opts.sampling_topp < 1.0:
            cut = int(np.searchsorted(np.cumsum(p), opts.sampling_topp) + 1)
            cand, p = cand[:cut], p[:cut] / p[:cut].sum()
        out[r] = cand[rng.choice(len(cand), p=p)]
    return out


_PENALTY = np.float32(-1.0e9)


def _top_sorted(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of each row, best first (ties: lower index first)."""
    return topk(np.ascontiguousarray(values, dtype=np.float32), min(k, values.shape[1]))[1]


def _beam_search(model, src, src_lengths, opts: GenerationOptions) -> List[GenerationResult]:
    """Hugging Face's (transformers 5) beam search with ``early_stopping=False``, over a KV cache.

    Per sentence: ``beam_size`` running hypotheses (sums of log-probs; all but the first
    start at -1e9 so the first step expands one beam) and up to ``beam_size`` finished
    ones. Each step takes the top ``2 * beam_size`` of ``running + log p`` over
    ``beam_size * vocab``; a candidate that ends (EOS, or the length limit) and ranks within
    the first ``beam_size`` competes for the finished list with score
    ``sum / generated_length ** length_penalty``; the best ``beam_size`` others continue. A
    sentence is done once its finished list is full and the best running hypothesis,
    normalised by the current length, cannot beat the worst finished one; done sentences
    leave the batch (their rows are dropped from the caches). Inside a target prefix every
    beam is fed the prefix token and keeps its score (HF's ``decoder_input_ids``), so the
    first free step still expands one beam.
    """
    config = model.config
    K = opts.beam_size
    L = opts.max_length
    V = config.tgt_vocab_size
    lp = np.float32(opts.length_penalty)
    prefix = _Prefix.build(opts, config.max_len)
    procs = _Processors.build(opts)
    T = L if prefix is None else prefix.steps   # history positions
    state = model.start_decoding(src, src_lengths, K, max_steps=T)
    B = state.rows // K
    if prefix is not None:
        prefix.check(B)
    s_max = int(state.src_lengths.max())
    heads = config.n_heads
    history = procs is not None and procs.needs_history

    run_scores = np.zeros((B, K), dtype=np.float32)
    run_scores[:, 1:] = _PENALTY
    run_hist = np.zeros((B, K, T), dtype=np.int32)
    fin_scores = np.full((B, K), _PENALTY, dtype=np.float32)
    fin_hist = np.zeros((B, K, T), dtype=np.int32)
    fin_len = np.zeros((B, K), dtype=np.int32)
    fin_flag = np.zeros((B, K), dtype=bool)
    unsatisfied = np.ones(B, dtype=bool)
    want_attn = opts.return_attention
    attn_shape = (heads, s_max) if opts.attention_per_head else (s_max,)
    run_attn = np.zeros((B, K, T) + attn_shape, dtype=np.float32) if want_attn else None
    fin_attn = np.zeros((B, K, T) + attn_shape, dtype=np.float32) if want_attn else None

    active = np.arange(B)
    tokens = np.full(B * K, config.decoder_start_id, dtype=np.int32)
    for step in range(T):
        n = len(active)
        attn = np.zeros((n * K, heads, s_max), dtype=np.float32) if want_attn else None
        logp = model.decode_step(state, tokens, attention=attn)
        banned = _banned(step, opts, config) if procs is None and prefix is None else None
        if banned is None:
            softmax_forward(logp, log=True, n_threads=threads.get_num_threads())
        if procs is not None:   # on the log-probabilities, as HF's beam search
            hist = None
            if history:
                hist = np.empty((n * K, step + 1), dtype=np.int32)
                hist[:, 0] = config.decoder_start_id
                hist[:, 1:] = run_hist[active, :, :step].reshape(n * K, step)
            procs(logp, hist)
        if banned is not None:   # the log-softmax and masks happen inside topk
            gen = None
        elif prefix is None:
            _mask_logprobs(logp, step, opts, config)
            gen = None
        else:
            gen = step - prefix.length[active]                       # [n] index of the token generated now
            lim = prefix.limit[active]
            _mask_rows(logp, np.repeat(gen, K), np.repeat(lim, K), opts, config)
            forced = gen < 0
        # running score + log p over [n, K * V], summed inside topk (not written out); without
        # logits processors or a prefix, the log-softmax and masks too (one read of the logits)
        cand_vals, cand = topk(logp.reshape(n, K * V), 2 * K, threads.get_num_threads(),
                               offsets=np.ascontiguousarray(run_scores[active]),
                               log_softmax=banned is not None, banned=banned)   # [n, 2K] best first
        parent = cand // V
        tok = (cand % V).astype(np.int32)
        if gen is None:
            hits = (tok == config.eos_id) | (step + 1 >= L)
            length = np.float32(step + 1) ** lp                      # generated length, normalised
        else:
            hits = (tok == config.eos_id) | (gen + 1 >= lim)[:, None]
            hits[forced] = False
            length = (np.maximum(gen + 1, 1).astype(np.float32) ** lp)[:, None]

        # running hypotheses for the next step: the best K candidates that did not end
        pen = cand_vals + hits.astype(np.float32) * _PENALTY
        keep = _top_sorted(pen, K)                            # [n, K] positions in the 2K list
        next_scores = np.take_along_axis(pen, keep, axis=1)
        next_parent = np.take_along_axis(parent, keep, axis=1)
        next_tok = np.take_along_axis(tok, keep, axis=1)
        if gen is not None and forced.any():   # inside the prefix: every beam takes the prefix token
            next_scores[forced] = run_scores[active[forced]]
            next_parent[forced] = np.arange(K)
            next_tok[forced] = prefix.ids[active[forced], step][:, None]

        # finished hypotheses: ended candidates ranked within the first K compete by normalised score
        did = hits.copy()
        did[:, K:] = False
        norm = cand_vals / length
        norm = norm + (~unsatisfied[active])[:, None].astype(np.float32) * _PENALTY
        norm = norm + (~did).astype(np.float32) * _PENALTY
        merged = np.concatenate([fin_scores[active], norm], axis=1)
        best = _top_sorted(merged, K)
        rows_b = active[:, None]
        old = best < K
        new = ~old
        new_pos = np.where(new, best - K, 0)
        new_parent = np.take_along_axis(parent, new_pos, axis=1)
        new_tok = np.take_along_axis(tok, new_pos, axis=1)
        hist_old = fin_hist[rows_b, np.where(old, best, 0)]
        hist_new = run_hist[rows_b, new_parent]
        hist_new[:, :, step] = new_tok
        fin_hist[active] = np.where(new[:, :, None], hist_new, hist_old)
        fin_len[active] = np.where(new, step + 1, fin_len[rows_b, np.where(old, best, 0)])
        fin_flag[active] = np.where(new, did[np.arange(n)[:, None], new_pos],
                                    fin_flag[rows_b, np.where(old, best, 0)])
        fin_scores[active] = np.take_along_axis(merged, best, axis=1)
        if want_attn:
            step_attn = _step_attention(attn, opts).reshape((n, K) + attn_shape)
            a_old = fin_attn[rows_b, np.where(old, best, 0)]
            a_new = run_attn[rows_b, new_parent]
            a_new[:, :, step] = step_attn[np.arange(n)[:, None], new_parent]
            fin_attn[active] = np.where(new.reshape(new.shape + (1,) * (a_new.ndim - 2)), a_new, a_old)

        # move the running hypotheses on
        hist_run = run_hist[rows_b, next_parent]
        hist_run[:, :, step] = next_tok
        run_hist[active] = hist_run
        run_scores[active] = next_scores
        if want_attn:
            a = run_attn[rows_b, next_parent]
            a[:, :, step] = step_attn[np.arange(n)[:, None], next_parent]
            run_attn[active] = a

        # can a running hypothesis still beat the worst finished one? (HF's early-stop heuristic)
        best_possible = next_scores[:, 0] / (length if gen is None else length[:, 0])
        worst = np.where(fin_flag[active], fin_scores[active].min(axis=1, keepdims=True), _PENALTY)
        beatable = (best_possible[:, None] > worst).any(axis=1)
        if gen is not None:
            beatable |= forced
        unsatisfied[active] &= beatable
        if hits.all() or not unsatisfied[active].any():
            break
        still = unsatisfied[active]
        rows = (np.flatnonzero(still)[:, None] * K + next_parent[still]).reshape(-1)
        state.select(rows)
        tokens = next_tok[still].reshape(-1).astype(np.int32)
        active = active[still]

    state.release()   # the caches go back to the model's pool for the next call
    results = []
    for b in range(B):
        count = min(opts.num_hypotheses, K)
        seqs = [fin_hist[b, j, :fin_len[b, j]].tolist() for j in range(count)]
        res = GenerationResult(sequences=seqs)
        if opts.return_scores:
            res.scores = [float(fin_scores[b, j]) for j in range(count)]
        if want_attn:
            n_src = int(state.src_lengths[b])
            res.attention = [fin_attn[b, j, :fin_len[b, j], ..., :n_src].copy() for j in range(count)]
        results.append(res)
    return results


def _step_attention(attn: np.ndarray, opts: GenerationOptions) -> np.ndarray:
    """This step's cross-attention per row: [rows, heads, S] or head-averaged [rows, S]."""
    return attn if opts.attention_per_head else attn.mean(axis=1)


# -- alternatives at the first free position ------------------------------------------------------
def _sources_as_lists(model, src, src_lengths) -> List[List[int]]:
    batch = model._src_batch(src, src_lengths)
    return [batch.ids[s:s + n].tolist() for s, n in zip(batch.start.tolist(), batch.length.tolist())]


def _alternatives(model, src, src_lengths, opts: GenerationOptions) -> List[GenerationResult]:
    """CTranslate2's ``return_alternatives``: per sentence, the ``num_hypotheses`` most likely
    tokens after the target prefix, each continued by the search the options ask for.

    One pass feeds every prefix and reads the next-token distribution at its end (with
    the same processors and masks as the search); a second pass decodes every
    (sentence, alternative) pair as a sentence of its own, with ``prefix + [alternative]``
    as its target prefix and one token less to generate.
    """
    config = model.config
    sources = _sources_as_lists(model, src, src_lengths)
    B = len(sources)
    prefixes = opts.target_prefix if opts.target_prefix is not None else [None] * B
    prefix = _Prefix(prefixes, opts.max_length, config.max_len)
    prefix.check(B)
    procs = _Processors.build(opts)
    on_logits = opts.beam_size == 1   # where the processors act, as in the search that follows
    eos = config.eos_id
    V = config.tgt_vocab_size
    state = model.start_decoding(sources, None, 1, max_steps=int(prefix.length.max()) + 1)
    s_max = int(state.src_lengths.max())
    first = np.empty((B, V), dtype=np.float32)   # log-probs of the first free token
    attention: List[list] = [[] for _ in range(B)]
    alive = np.arange(B)
    tokens = np.full(B, config.decoder_start_id, dtype=np.int32)
    for step in range(int(prefix.length.max()) + 1):
        attn = (np.zeros((state.rows, config.n_heads, s_max), dtype=np.float32)
                if opts.return_attention else None)
        logits = model.decode_step(state, tokens, attention=attn)
        if attn is not None:
            for b, a in zip(alive, _attention_rows(attn, range(len(alive)), state.src_len,
                                                   opts.attention_per_head)):
                attention[b].append(a)
        done = np.flatnonzero(prefix.length[alive] == step)
        if done.size:
            rows = alive[done]
            scores = logits[done]   # a copy: the buffer is the step's
            hist = None
            if procs is not None and procs.needs_history:
                hist = np.empty((len(rows), step + 1), dtype=np.int32)
                hist[:, 0] = config.decoder_start_id
                hist[:, 1:] = prefix.ids[rows, :step]
            if procs is not None and on_logits:
                procs(scores, hist)
            softmax_forward(scores, log=True, n_threads=threads.get_num_threads())
            if procs is not None and not on_logits:
                procs(scores, hist)
            _mask_rows(scores, np.zeros(len(rows), dtype=np.int64), prefix.limit[rows], opts, config)
            # EOS is no alternative (CTranslate2 expands with min_length=1) unless forced
            only_eos = ~np.isfinite(np.delete(scores, eos, axis=1)).any(axis=1)
            scores[~only_eos, eos] = -np.inf
            first[rows] = scores
        keep = np.flatnonzero(prefix.length[alive] > step)
        if not keep.size:
            break
        state.select(keep)
        alive = alive[keep]
        tokens = prefix.ids[alive, step].astype(np.int32)

    # the alternatives: most likely first, finite, at least min_alternative_expansion_prob likely
    picks: List[List[tuple]] = []
    for b in range(B):
        k = min(opts.num_hypotheses, V)
        cand = np.argsort(-first[b], kind="stable")[:k]
        floor = np.log(opts.min_alternative_expansion_prob) if opts.min_alternative_expansion_prob > 0 else -np.inf
        picks.append([(int(t), float(first[b, t])) for t in cand
                      if np.isfinite(first[b, t]) and first[b, t] >= floor])

    state.release()   # the caches go back to the model's pool, for the continuations below
    # continue every (sentence, alternative) with room left
    jobs = [(b, j) for b in range(B) for j in range(len(picks[b])) if prefix.limit[b] > 1]
    cont: Dict[tuple, GenerationResult] = {}
    if jobs:
        sub = dataclasses.replace(
            opts, return_alternatives=False, num_hypotheses=1, return_scores=True, max_input_length=None,
            max_length=opts.max_length - 1, min_length=max(0, opts.min_length - 1),
            target_prefix=[list(prefixes[b] or []) + [picks[b][j][0]] for b, j in jobs])
        out = _search(model, [sources[b] for b, _ in jobs], None, sub)
        cont = dict(zip(jobs, out))

    lp = opts.length_penalty
    results = []
    for b in range(B):
        p_len = int(prefix.length[b])
        seqs, scores, attns = [], [], []
        for j, (tok, tok_lp) in enumerate(picks[b]):
            r = cont.get((b, j))
            if r is None:   # the alternative is the last token allowed
                seq, total, n = list(prefixes[b] or []) + [tok], tok_lp, 1
                att = np.stack(attention[b]) if opts.return_attention else None
            else:
                seq = r.sequences[0]
                n_cont = len(seq) - p_len - 1
                total = tok_lp + (r.scores[0] * n_cont ** lp if n_cont > 0 else 0.0)
                n = n_cont + 1
                att = r.attention[0] if opts.return_attention else None
            seqs.append(seq)
            scores.append(_normalise(total, n, lp))
            attns.append(att)
        res = GenerationResult(sequences=seqs)
        if opts.return_scores:
            res.scores = scores
        if opts.return_attention:
            res.attention = attns
        results.append(res)
    return results


# -- streaming ---------------------------------------------------------------------------------------
def generate_tokens(model, src, src_lengths=None, **options) -> Iterator[GenerationStepResult]:
    """Decode one source greedily (or by sampling), yielding each token as it is chosen.

    Options are ``generate``'s, with ``beam_size=1`` and one hypothesis. The options are
    checked and the source encoded when this is called; the tokens come as the iterator is
    advanced. Nothing is held between tokens, so a caller may stop at any point (break out
    of its loop) and the model stays usable.
    """
    options = dict(options)
    tp = options.get("target_prefix")
    if tp is not None and len(tp) and all(isinstance(t, (int, np.integer)) for t in tp):
        options["target_prefix"] = [list(tp)]   # a flat prefix for the one sentence
    opts = make_options(model.config, options)
    for name, bad in (("beam_size", opts.beam_size != 1), ("num_hypotheses", opts.num_hypotheses != 1),
                      ("return_alternatives", opts.return_alternatives),
                      ("return_attention", opts.return_attention)):
        if bad:
            raise ValueError(f"generate_tokens decodes one hypothesis greedily or by sampling: "
                             f"{name}={getattr(opts, name)!r} is not supported (use generate)")
    src, src_lengths = _truncate_sources(model, src, src_lengths, opts.max_input_length)
    config = model.config
    prefixes = opts.target_prefix if opts.target_prefix is not None else [None]
    prefix = _Prefix(prefixes, opts.max_length, config.max_len)
    with threads.blas_single_threaded():
        state = model.start_decoding(src, src_lengths, 1, max_steps=prefix.steps)
    if state.rows != 1:
        raise ValueError(f"generate_tokens takes one sentence, got {state.rows}")
    prefix.check(1)
    return _token_stream(model, state, prefix, opts)


def _token_stream(model, state, prefix: _Prefix, opts: GenerationOptions) -> Iterator[GenerationStepResult]:
    config = model.config
    procs = _Processors.build(opts)
    hist = _start_history(1, prefix.steps, config.decoder_start_id) if procs is not None else None
    rng = np.random.default_rng(opts.seed) if opts.sampling else None
    p_len, limit = int(prefix.length[0]), int(prefix.limit[0])
    token = np.full(1, config.decoder_start_id, dtype=np.int32)
    for step in range(prefix.steps):
        # decode_step holds BLAS at one thread for the step only: nothing stays held across a yield
        logits = model.decode_step(state, token)
        if procs is not None:
            procs(logits, hist[:, :step + 1] if procs.needs_history else None)
        gen = step - p_len
        if gen < 0:
            chosen = int(prefix.ids[0, step])
        elif rng is None:
            ids, log_probs = _greedy_pick(logits, np.array([gen]), np.array([limit]),
                                          dataclasses.replace(opts, return_scores=True), config)
            chosen, log_prob = int(ids[0]), float(log_probs[0])
        else:
            softmax_forward(logits, log=True, n_threads=threads.get_num_threads())
            _mask_rows(logits, np.array([gen]), np.array([limit]), opts, config)
            chosen = int(_sample(logits, opts, rng)[0])
            log_prob = float(logits[0, chosen])
        if hist is not None:
            hist[0, step + 1] = chosen
        token[0] = chosen
        if gen >= 0:
            last = chosen == config.eos_id or gen + 1 >= limit
            yield GenerationStepResult(step=gen, token_id=chosen, log_prob=log_prob, is_last=last)
            if last:
                return
