"""Non-autoregressive translation (NAT, Gu et al. 2018): predict the output length, then
emit every target token at once.

``NATransformer`` is the encoder-decoder ``Transformer`` with two changes, both from the
paper:

* a **length predictor**: a linear layer over the mean of each source's encoder states gives
  logits over target lengths ``0..max_target_len`` (trained with cross-entropy, weighted by
  ``length_loss_weight``);
* a **decoder without the causal mask**, whose inputs are the source embeddings copied
  uniformly to the predicted length (target position t of T reads source token
  ``floor((t + 1/2) * S / T)``, embedded by the source embeddings with target position t),
  so all T positions are decoded in one pass.

It trains with the same ``Trainer`` (teacher forcing gives the true lengths; the labels are
the target tokens and EOS, and the length loss is added by the model's training pass), and
``generate`` returns ``GenerationResult``s as the autoregressive path does: one decoder pass
per source, or ``length_beam`` candidate lengths scored by their mean token log-probability
(the paper's noisy parallel decoding without a teacher).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from . import threads
from .config import TransformerConfig
from .convert.registry import register_loader
from .decoding import GenerationResult
from .layers import TrainContext
from .layers.base import derive_layout
from .layers.linear import Linear
from .model import Batch, Transformer, _compose, _weight_specs, load_own_weights

MODEL_TYPE = "cyformer-nat"


@dataclass
class NATConfig(TransformerConfig):
    """``TransformerConfig`` plus ``max_target_len`` (the largest length the predictor can
    name, EOS included; <= ``max_len``) and ``length_loss_weight``."""

    MODEL_TYPE = MODEL_TYPE

    max_target_len: int = 64
    length_loss_weight: float = 0.1

    @property
    def decoder_causal(self) -> bool:
        return False   # the decoder sees every target position at once

    def validate(self) -> None:
        super().validate()
        v = self.max_target_len
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= self.max_len:
            raise ValueError(f"max_target_len must be an int in [1, max_len={self.max_len}], got {v!r}")
        if self.n_src_features:
            raise ValueError("a NAT decoder copies source token embeddings: n_src_features must be 0")
        w = self.length_loss_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"length_loss_weight must be >= 0, got {w!r}")

    @classmethod
    def from_dict(cls, d):
        mt = d.get("model_type", MODEL_TYPE) if isinstance(d, dict) else MODEL_TYPE
        if mt != MODEL_TYPE:
            raise ValueError(f"not a NAT config: model_type {mt!r} (expected {MODEL_TYPE!r})")
        return super().from_dict(d)


def _compose_nat(c: NATConfig):
    """((src_embed, tgt_embed, encoder, decoder, generator, length_predictor), weight specs)."""
    layers = _compose(c)
    length_predictor = Linear("length_predictor.weight", "length_predictor.bias", c.max_target_len + 1, c.d_model)
    specs = derive_layout(_weight_specs(*layers) + list(length_predictor.weights()))
    return (*layers, length_predictor), specs


def copy_positions(src_length: np.ndarray, tgt_length: np.ndarray) -> np.ndarray:
    """Packed source-row offsets (within each source) that every packed target position
    copies: floor((t + 0.5) * S / T) for t < T (the uniform copy of Gu et al.)."""
    parts = [np.minimum(((np.arange(t) + 0.5) * s / t).astype(np.int64), s - 1)
             for s, t in zip(src_length.tolist(), tgt_length.tolist())]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclass
class NATRecord:
    src: Batch
    tgt: Batch
    src_embed: object
    encoder: object
    memory: np.ndarray
    copy_embed: object
    decoder: object
    hidden: np.ndarray
    pooled: np.ndarray
    dlength: np.ndarray      # gradient of the weighted length loss wrt the length logits [B, L + 1]


class NATransformer(Transformer):
    """Encoder, length predictor and non-causal decoder; see the module docstring.

    Weights: ``Transformer``'s (the target token table serves the tied output projection only)
    plus ``length_predictor.{weight,bias}`` [max_target_len + 1, d_model].
    """

    def __init__(self, config: NATConfig, seed: Optional[int] = 0, *, params: Optional[np.ndarray] = None):
        if not isinstance(config, NATConfig):
            raise TypeError(f"config must be a NATConfig, not {type(config).__name__}")
        config.validate()
        self.config = config
        layers, self.weight_specs = _compose_nat(config)
        self.src_embed, self.tgt_embed, self.encoder, self.decoder, self.generator, self.length_predictor = layers
        self.layout = [(s.name, s.shape) for s in self.weight_specs]
        self._local = threading.local()
        self.params = np.zeros(self._total(), dtype=np.float32) if params is None else params
        if params is None:
            self.init_parameters(seed)

    def _layers(self):
        return (*super()._layers(), self.length_predictor)

    @classmethod
    def empty(cls, config: NATConfig) -> "NATransformer":
        """A model with zeroed parameters, to be filled by a loader."""
        return cls(config, params=np.zeros(sum(s.size for s in _compose_nat(config)[1]), dtype=np.float32))

    # -- shared by training and inference ------------------------------------------------------------
    def _copy_batch(self, src: Batch, tgt_length: np.ndarray) -> Batch:
        """The decoder's input batch: source ids copied to each target position (positions 0..T-1)."""
        rows = np.repeat(src.start, tgt_length) + copy_positions(src.length, tgt_length)
        return Batch(src.ids[rows], tgt_length.astype(np.int32))

    @staticmethod
    def _mean_pool(memory: np.ndarray, src: Batch) -> np.ndarray:
        return (np.add.reduceat(memory, src.start, axis=0) / src.length[:, None]).astype(np.float32)

    # -- training passes ---------------------------------------------------------------------------------
    def forward_train(self, src: Batch, tgt: Batch, tc: TrainContext):
        """Logits [N_tgt, V] for every target position at once (``tgt`` gives the lengths; its
        ids are not read), and the record; the length loss is computed here (its weighted
        gradient kept for ``backward``; its value in ``last_length_loss``)."""
        c = self.config
        d = c.d_model
        if int(tgt.length.max()) > c.max_target_len:
            raise ValueError(f"a target of {int(tgt.length.max())} tokens (EOS included) is longer than "
                             f"max_target_len={c.max_target_len}")
        x = tc.buf("enc.embed", len(src.ids), d)
        r_src = self.src_embed.forward_train(src, x, tc)
        memory, r_enc = self.encoder.forward_train(x, src, tc)
        pooled = self._mean_pool(memory, src)
        length_logits = np.empty((src.size, c.max_target_len + 1), dtype=np.float32)
        self.length_predictor.forward(pooled, length_logits, tc.nt)
        z = length_logits.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        target = tgt.length.astype(np.int64)
        self.last_length_loss = float(-logp[np.arange(src.size), target].mean())
        dlength = np.exp(logp)
        dlength[np.arange(src.size), target] -= 1.0
        dlength = (dlength * (c.length_loss_weight / src.size)).astype(np.float32)
        copy = self._copy_batch(src, tgt.length)
        y = tc.buf("dec.embed", len(copy.ids), d)
        r_copy = self.src_embed.forward_train(copy, y, tc)
        hidden, r_dec = self.decoder.forward_train(y, tgt, memory, src, tc)
        logits = tc.buf("logits", len(copy.ids), c.tgt_vocab_size)
        self.generator.forward(hidden, logits, tc.nt)
        return logits, NATRecord(src, tgt, r_src, r_enc, memory, r_copy, r_dec, hidden, pooled, dlength)

    def backward(self, rec: NATRecord, dlogits: np.ndarray, tc: TrainContext) -> None:
        g, nt = tc.grads, tc.nt
        hidden, memory = rec.hidden, rec.memory
        dx = tc.buf("dhidden", *hidden.shape)
        self.generator.backward(hidden, dlogits, dx, g, nt)
        dmemory = tc.buf("dmemory", *memory.shape)
        dmemory[...] = 0.0
        self.decoder.backward(rec.decoder, dx, dmemory, tc)
        self.src_embed.backward(rec.copy_embed, dx, tc)
        dpooled = np.empty_like(rec.pooled)
        self.length_predictor.backward(rec.pooled, rec.dlength, dpooled, g, nt)
        dmemory += np.repeat(dpooled / rec.src.length[:, None].astype(np.float32), rec.src.length, axis=0)
        self.encoder.backward(rec.encoder, dmemory, tc)
        self.src_embed.backward(rec.src_embed, dmemory, tc)

    # -- inference -----------------------------------------------------------------------------------------
    def predict_lengths(self, src, src_lengths=None, k: int = 1) -> np.ndarray:
        """The k most likely target lengths per source (EOS included), [B, k], best first."""
        batch = self._src_batch(src, src_lengths)
        nt = threads.get_num_threads()
        with threads.blas_single_threaded():
            memory = self._encode_packed(batch, self._workspace(), nt)
            return self._top_lengths(memory, batch, k, nt)

    def _top_lengths(self, memory: np.ndarray, src: Batch, k: int, nt: int) -> np.ndarray:
        logits = np.empty((src.size, self.config.max_target_len + 1), dtype=np.float32)
        self.length_predictor.forward(self._mean_pool(memory, src), logits, nt)
        logits[:, 0] = -np.inf   # a target has at least one token (EOS)
        return np.argsort(-logits, axis=1, kind="stable")[:, :k]

    def generate(self, src, src_lengths=None, *, length_beam: int = 1, beam_size: Optional[int] = None,
                 max_length: Optional[int] = None, return_scores: bool = True, **options) -> List[GenerationResult]:
        """One decoder pass per candidate length: every position's most likely token at once.

        ``length_beam`` (or ``beam_size``, as the autoregressive API names it) candidate lengths
        per source, the best by mean token log-probability returned; ``max_length`` caps the
        length. Sequences end at their first EOS (not included), as ``Transformer.generate``'s
        do. Other autoregressive options are refused with a TypeError.
        """
        if options:
            raise TypeError(f"NATransformer.generate does not take {', '.join(sorted(options))} "
                            f"(non-autoregressive decoding has no step-wise search)")
        k = length_beam if beam_size is None else beam_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"length_beam must be an int >= 1, got {k!r}")
        c = self.config
        k = min(k, c.max_target_len)
        batch = self._src_batch(src, src_lengths)
        nt = threads.get_num_threads()
        ws = self._workspace()
        with threads.blas_single_threaded():
            memory = self._encode_packed(batch, ws, nt).copy()
            lengths = self._top_lengths(memory, batch, k, nt)
            if max_length is not None:
                lengths = np.minimum(lengths, max(1, int(max_length)))
            # candidates: source b repeated k times, one length each
            rep = np.repeat(np.arange(batch.size), k)
            src_rep = Batch(np.concatenate([batch.ids[batch.start[b]:batch.start[b] + batch.length[b]]
                                            for b in rep]), batch.length[rep])
            mem_rep = np.concatenate([memory[batch.start[b]:batch.start[b] + batch.length[b]] for b in rep])
            tgt_len = lengths.reshape(-1).astype(np.int32)
            copy = self._copy_batch(src_rep, tgt_len)
            y = ws.get("nat.dec_x", len(copy.ids), c.d_model)
            self.src_embed.forward(copy.ids, copy.positions, y, nt)
            tgt = Batch(copy.ids, tgt_len)
            hidden = self.decoder.forward(y, tgt, mem_rep, src_rep, ws, nt)
            logits = self._logits_packed(hidden, nt)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        tokens = logp.argmax(axis=1)
        best_lp = logp[np.arange(len(tokens)), tokens]
        results = []
        for b in range(batch.size):
            best = None
            for j in range(k):
                i = b * k + j
                lo, n = int(tgt.start[i]), int(tgt_len[i])
                score = float(best_lp[lo:lo + n].mean())
                if best is None or score > best[0]:
                    best = (score, tokens[lo:lo + n].tolist())
            seq = best[1]
            if c.eos_id in seq:
                seq = seq[:seq.index(c.eos_id)]
            results.append(GenerationResult([seq], [best[0]] if return_scores else None))
        return results

    def start_decoding(self, *args, **kwargs):
        raise TypeError("a NATransformer decodes every position in one pass: use generate(), "
                        "not step-wise decoding")

    decode_step = generate_tokens = start_decoding

    @classmethod
    def from_pretrained(cls, directory: str, mmap: bool = True, verify: bool = False) -> "NATransformer":
        model = Transformer.from_pretrained(directory, mmap=mmap, verify=verify)
        if not isinstance(model, NATransformer):
            raise ValueError(f"{directory} holds an autoregressive model ({type(model).__name__}); "
                             f"load it with Transformer.from_pretrained")
        return model


@register_loader(MODEL_TYPE)
def _load_nat(directory: str, raw, mmap: bool = True, verify: bool = False) -> NATransformer:
    config = NATConfig.from_dict(raw)
    return load_own_weights(directory, NATransformer, config, [(s.name, s.shape) for s in _compose_nat(config)[1]],
                            mmap=mmap, verify=verify)
