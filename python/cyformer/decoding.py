"""Generation over the incremental decoder: greedy (the beam-1 fast path), beam search, sampling.

Options are named as in CTranslate2 and Hugging Face. ``max_length`` counts generated
tokens, EOS included (HF's ``max_new_tokens``). Every result's ``sequences`` are n-best,
best first, without the start token and ending in EOS when one was generated; ``scores``
are length-normalised sums of log-probabilities, ``sum / length ** length_penalty`` with the
length counting EOS (HF's ``sequences_scores``).

Beam search follows Hugging Face: log-probabilities of the raw logits, then the pad token
(never generated, as for Marian) and, before ``min_length``, EOS are masked; each step keeps
the best ``2 * beam_size`` candidates of ``beam_size * vocab``, moves EOS candidates ranked
within the first ``beam_size`` to the finished hypotheses, and continues with the best
``beam_size`` others. A sentence stops once no running beam can beat its worst finished
hypothesis; the batch stops when every sentence has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ._engine.search import topk
from ._engine.softmax import softmax_forward
from . import threads


@dataclass
class GenerationResult:
    """One source's n-best list."""

    sequences: List[List[int]]
    scores: Optional[List[float]] = None
    attention: Optional[List[np.ndarray]] = None  # per hypothesis: [len, S] or [len, heads, S]


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

    def validate(self, max_len: int) -> None:
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
        if self.num_hypotheses > self.beam_size:
            raise ValueError(f"num_hypotheses={self.num_hypotheses} exceeds beam_size={self.beam_size}")
        if self.min_length > self.max_length:
            raise ValueError(f"min_length={self.min_length} exceeds max_length={self.max_length}")
        if self.max_length > max_len:
            raise ValueError(f"max_length={self.max_length} exceeds the model's max_len={max_len} positions")
        for name in ("length_penalty", "sampling_topp", "sampling_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise TypeError(f"{name} must be a finite number")
        if not 0.0 < self.sampling_topp <= 1.0:
            raise ValueError(f"sampling_topp must be in (0, 1], got {self.sampling_topp}")
        if self.sampling_temperature <= 0:
            raise ValueError(f"sampling_temperature must be > 0, got {self.sampling_temperature}")
        if self.sampling and self.beam_size > 1:
            raise ValueError("sampling (sampling_topk != 1 or sampling_topp < 1) needs beam_size=1")

    @property
    def sampling(self) -> bool:
        return self.sampling_topk != 1 or self.sampling_topp < 1.0


def _mask_logprobs(logp: np.ndarray, step: int, opts: GenerationOptions, config) -> None:
    """HF's logits processors, applied to log-probabilities as HF's beam search does.

    The pad token is never generated (Marian); EOS not before ``min_length``; with
    ``config.forced_eos`` the last step can only produce EOS, which then scores 0.
    """
    if config.forced_eos and step == opts.max_length - 1:
        logp[:] = -np.inf
        logp[:, config.eos_id] = 0.0
        return
    if opts.suppress_pad and config.pad_id != config.eos_id:
        logp[:, config.pad_id] = -np.inf
    if step < opts.min_length:
        logp[:, config.eos_id] = -np.inf


def _normalise(total: float, length: int, penalty: float) -> float:
    return total / (length ** penalty)


def _attention_rows(attn: np.ndarray, rows, src_len, per_head: bool):
    """Per-row cross-attention of one step: [H, S_b] or [S_b] (averaged over heads)."""
    out = []
    for r, n in zip(rows, src_len):
        a = attn[r, :, :n]
        out.append(a.copy() if per_head else a.mean(axis=0))
    return out


def generate(model, src, src_lengths=None, **options) -> List[GenerationResult]:
    opts = GenerationOptions(**options)
    opts.validate(model.config.max_len)
    # Held once for the whole loop: each step's own (nested) hold is then only a counter.
    with threads.blas_single_threaded():
        if opts.beam_size == 1:
            return _greedy_or_sample(model, src, src_lengths, opts)
        return _beam_search(model, src, src_lengths, opts)


def _greedy_or_sample(model, src, src_lengths, opts: GenerationOptions) -> List[GenerationResult]:
    config = model.config
    state = model.start_decoding(src, src_lengths, 1, max_steps=opts.max_length)
    batch = state.rows
    rng = np.random.default_rng(opts.seed) if opts.sampling else None
    tokens = np.full(batch, config.decoder_start_id, dtype=np.int32)
    alive = np.arange(batch)  # source index of each row
    sequences: List[List[int]] = [[] for _ in range(batch)]
    totals = np.zeros(batch, dtype=np.float64)
    attention: List[list] = [[] for _ in range(batch)]
    nt = threads.get_num_threads()
    s_max = int(state.src_lengths.max())
    for step in range(opts.max_length):
        attn = (np.zeros((state.rows, config.n_heads, s_max), dtype=np.float32)
                if opts.return_attention else None)
        logits = model.decode_step(state, tokens, attention=attn)
        softmax_forward(logits, log=True, n_threads=nt)
        _mask_logprobs(logits, step, opts, config)
        if rng is None:
            chosen = logits.argmax(axis=1)
        else:
            chosen = _sample(logits, opts, rng)
        picked = logits[np.arange(len(chosen)), chosen]
        for r, b in enumerate(alive):
            sequences[b].append(int(chosen[r]))
        totals[alive] += picked
        if attn is not None:
            for b, a in zip(alive, _attention_rows(attn, range(len(alive)), state.src_len, opts.attention_per_head)):
                attention[b].append(a)
        running = chosen != config.eos_id
        if not running.any() or step == opts.max_length - 1:
            break
        keep = np.flatnonzero(running)
        if len(keep) < len(alive):
            state.select(keep)
            alive = alive[keep]
        tokens = chosen[keep].astype(np.int32)
    results = []
    for b in range(batch):
        seq = sequences[b]
        res = GenerationResult(sequences=[seq])
        if opts.return_scores:
            res.scores = [_normalise(float(totals[b]), len(seq), opts.length_penalty)]
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
    leave the batch (their rows are dropped from the caches).
    """
    config = model.config
    K = opts.beam_size
    L = opts.max_length
    V = config.tgt_vocab_size
    lp = np.float32(opts.length_penalty)
    state = model.start_decoding(src, src_lengths, K, max_steps=L)
    B = state.rows // K
    nt = threads.get_num_threads()
    s_max = int(state.src_lengths.max())
    heads = config.n_heads

    run_scores = np.zeros((B, K), dtype=np.float32)
    run_scores[:, 1:] = _PENALTY
    run_hist = np.zeros((B, K, L), dtype=np.int32)
    fin_scores = np.full((B, K), _PENALTY, dtype=np.float32)
    fin_hist = np.zeros((B, K, L), dtype=np.int32)
    fin_len = np.zeros((B, K), dtype=np.int32)
    fin_flag = np.zeros((B, K), dtype=bool)
    unsatisfied = np.ones(B, dtype=bool)
    want_attn = opts.return_attention
    attn_shape = (heads, s_max) if opts.attention_per_head else (s_max,)
    run_attn = np.zeros((B, K, L) + attn_shape, dtype=np.float32) if want_attn else None
    fin_attn = np.zeros((B, K, L) + attn_shape, dtype=np.float32) if want_attn else None

    active = np.arange(B)
    tokens = np.full(B * K, config.decoder_start_id, dtype=np.int32)
    for step in range(L):
        n = len(active)
        attn = np.zeros((n * K, heads, s_max), dtype=np.float32) if want_attn else None
        logp = model.decode_step(state, tokens, attention=attn)
        softmax_forward(logp, log=True, n_threads=nt)
        _mask_logprobs(logp, step, opts, config)
        # running score + log p, in place in the step's logits buffer: [n, K * V]
        logp.reshape(n, K, V)[...] += run_scores[active][:, :, None]
        cand_vals, cand = topk(logp.reshape(n, K * V), 2 * K, nt)   # [n, 2K] best first
        parent = cand // V
        tok = (cand % V).astype(np.int32)
        hits = (tok == config.eos_id) | (step + 1 >= L)

        # running hypotheses for the next step: the best K candidates that did not end
        pen = cand_vals + hits.astype(np.float32) * _PENALTY
        keep = _top_sorted(pen, K)                            # [n, K] positions in the 2K list
        next_scores = np.take_along_axis(pen, keep, axis=1)
        next_parent = np.take_along_axis(parent, keep, axis=1)
        next_tok = np.take_along_axis(tok, keep, axis=1)

        # finished hypotheses: ended candidates ranked within the first K compete by normalised score
        did = hits.copy()
        did[:, K:] = False
        norm = cand_vals / np.float32(step + 1) ** lp
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
        hist = run_hist[rows_b, next_parent]
        hist[:, :, step] = next_tok
        run_hist[active] = hist
        run_scores[active] = next_scores
        if want_attn:
            a = run_attn[rows_b, next_parent]
            a[:, :, step] = step_attn[np.arange(n)[:, None], next_parent]
            run_attn[active] = a

        # can a running hypothesis still beat the worst finished one? (HF's early-stop heuristic)
        best_possible = next_scores[:, 0] / np.float32(step + 1) ** lp
        worst = np.where(fin_flag[active], fin_scores[active].min(axis=1, keepdims=True), _PENALTY)
        unsatisfied[active] &= (best_possible[:, None] > worst).any(axis=1)
        if hits.all() or not unsatisfied[active].any():
            break
        still = unsatisfied[active]
        rows = (np.flatnonzero(still)[:, None] * K + next_parent[still]).reshape(-1)
        state.select(rows)
        tokens = next_tok[still].reshape(-1).astype(np.int32)
        active = active[still]

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
