"""Training: teacher forcing or labels, label-smoothed cross-entropy, Adam with warm-up,
checkpoints, exact resume.

``Trainer(model, ...)`` owns the gradient buffer (``cyformer.backprop``), the optimizer
state and the schedule. ``step(src, tgt)`` runs one update on a batch of token-id
sequences; ``fit(train, valid, ...)`` loops over batches formed by token count, validates
(loss, and BLEU of greedy decodes when a tokenizer is given), writes checkpoints and resumes
from them.

The model is a ``Transformer`` (examples are ``(source ids, target ids)`` pairs) or an
``Encoder`` with a head (examples are ``(ids, label)`` for a sequence head, ``(ids, labels)``
with one label per token for a token head, optionally ``(ids, labels, token_type_ids)``; for
an encoder of vector sets (``n_features``) ``(features [T, F], label(s))``, optionally with
the graph's ``edges`` [E, 2] as the third element;
labels are class indices or ``config.id2label`` names, and ``-100`` ignores a position, as
in Hugging Face). For an encoder, validation reports accuracy (and macro F1 over the
classes for token labels) instead of BLEU.

Teacher forcing: for a target ``y_1 .. y_n`` (ending in EOS; EOS is appended when
missing) the decoder reads ``decoder_start_id, y_1 .. y_{n-1}`` and is trained to predict
``y_1 .. y_n``.

A checkpoint is a folder ``checkpoint-STEP`` holding the model (``config.json`` +
``model.safetensors``), ``optimizer.safetensors`` and ``trainer_state.json`` (step, data
position, schedule, history). It is written under a temporary name and renamed into place
when complete, so a crash mid-write leaves the previous checkpoints intact. Everything
random (data order, dropout masks) is a function of the seed, the epoch and the step, so a
run resumed from step k reproduces the losses of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .backprop import ForwardBackward, mix_seed
from .io import atomic_write_bytes, dir_mode, fsync_dir, load_safetensors, read_json, save_safetensors
from .encoder import Encoder
from .model import Batch, TokenBatch, Transformer, make_batch
from .optim import Optimizer, Schedule, clip_grad_norm, make_optimizer, make_schedule, schedule_from_dict

Pair = Tuple[Sequence[int], Sequence[int]]
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
IGNORE_INDEX = -100
SAMPLING_SOURCES = ("model", "random")


@dataclass
class TrainingHistory:
    """What ``fit`` logged: per-step training loss and learning rate, periodic validation."""

    steps: List[int] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    lr: List[float] = field(default_factory=list)
    # {"step", "loss", "ppl", "bleu"?} (translation) or {"step", "loss", "accuracy", "f1"?} (labels)
    valid: List[Dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> Dict:
        return {"steps": self.steps, "loss": self.loss, "lr": self.lr, "valid": self.valid}

    @classmethod
    def from_dict(cls, d: Dict) -> "TrainingHistory":
        return cls(list(d.get("steps", [])), list(d.get("loss", [])), list(d.get("lr", [])),
                   list(d.get("valid", [])))


@contextlib.contextmanager
def _no_interrupt():
    """Hold Ctrl-C back while a step's state changes (parameters, optimizer, counters), so an
    interrupt never leaves a half-applied update behind to be checkpointed. The signal is
    re-raised as KeyboardInterrupt right after. (Signal handlers belong to the main thread;
    elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except (ValueError, OSError):  # pragma: no cover - e.g. an embedded interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _as_ids(seq, name: str) -> List[int]:
    arr = np.asarray(seq)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of token ids, got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    return [int(t) for t in arr]


def make_batches(lengths: Sequence[int], batch_tokens: int, seed: int, epoch: int,
                 max_sentences: Optional[int] = None) -> List[np.ndarray]:
    """Indices of each batch for one epoch: similar lengths together, batch order shuffled.

    ``lengths[i]`` is the cost of example i in tokens (max of source and decoder lengths);
    a batch holds at most ``batch_tokens`` of them (an example longer than that is a batch
    of its own). The order is a function of (seed, epoch) only.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    n = len(lengths)
    if n == 0:
        return []
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch])
    lengths = np.asarray(lengths)
    order = np.lexsort((rng.permutation(n), lengths))  # by length, random among equals
    batches, current, tokens = [], [], 0
    for i in order:
        cost = int(lengths[i])
        if current and (tokens + cost > batch_tokens or (max_sentences and len(current) >= max_sentences)):
            batches.append(np.array(current))
            current, tokens = [], 0
        current.append(i)
        tokens += cost
    if current:
        batches.append(np.array(current))
    return [batches[j] for j in rng.permutation(len(batches))]


class Trainer:
    """Trains a ``Transformer``, or an ``Encoder`` with a classification head, in place.

    Options (the paper's defaults): ``optimizer`` 'adam' (betas 0.9/0.98, eps 1e-9),
    'adamw' or 'sgd' (``momentum``); ``schedule`` 'noam' (``lr`` scales the paper's formula,
    default 1.0, with ``warmup_steps``, default 4000), 'constant' or 'linear' (``lr`` is the
    peak, reached after ``warmup_steps``, default 0, and for 'linear' decaying to 0 at
    ``total_steps``); ``label_smoothing`` 0.1; ``clip_norm`` (global gradient norm,
    off by default); ``seed`` for data order and dropout. Dropout rates come from the
    model's config. ``frozen`` names parameters that are not trained (default: Marian's
    ``final_logits_bias``, a fixed buffer in Hugging Face, for models imported from Marian).
    For an encoder (see the module docstring) the same options hold; fine-tuning a loaded
    checkpoint usually wants ``optimizer="adamw", schedule="linear", lr=2e-5..5e-5``.

    Training tips for translation (the lecture notes'): ``scheduled_sampling`` is the share of
    decoder inputs replaced by the model's own predictions (``scheduled_sampling_source=
    "model"``) or by random tokens (``"random"``, noisy teacher forcing), reached linearly over
    ``scheduled_sampling_steps`` updates (0: from the start), so that the decoder learns to
    recover from its own mistakes; ``guided_attention`` weighs a penalty on the last decoder
    layer's cross-attention far from the diagonal (``guided_attention_width`` the tolerated
    spread, as a share of the lengths), for monotonic alignments such as speech or copying.
    """

    def __init__(self, model, *, optimizer: str = "adam", lr: Optional[float] = None,
                 schedule: str = "noam", warmup_steps: Optional[int] = None, total_steps: Optional[int] = None,
                 betas: Tuple[float, float] = (0.9, 0.98), eps: float = 1e-9, weight_decay: float = 0.0,
                 momentum: float = 0.9, label_smoothing: float = 0.1, clip_norm: Optional[float] = None,
                 seed: int = 0, frozen: Optional[Sequence[str]] = None, scheduled_sampling: float = 0.0,
                 scheduled_sampling_steps: int = 0, scheduled_sampling_source: str = "model",
                 guided_attention: float = 0.0, guided_attention_width: float = 0.2):
        if isinstance(model, Encoder):
            _check_trainable_head(model.config)
        elif not isinstance(model, Transformer):
            raise TypeError(f"model must be a cyformer.Transformer or a cyformer.Encoder with a head, "
                            f"not {type(model).__name__}")
        self.labels = isinstance(model, Encoder)   # label objective (vs teacher-forced translation)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 (or None), got {clip_norm}")
        if model.compute_type != "float32":
            raise ValueError(f"the model computes in {model.compute_type}, which is for inference; training "
                             f"needs compute_type='float32' (load the float32 checkpoint, or "
                             f"model.set_compute_type('float32'))")
        if isinstance(model.params, np.memmap) or not model.params.flags.writeable:
            # a memory-mapped checkpoint: train on a private copy
            model.params = np.array(model.params, dtype=np.float32)  # assignment rebinds the layers
        self.model = model
        self.config = model.config
        self.passes = ForwardBackward(model)
        self.optimizer: Optimizer = make_optimizer(optimizer, model.num_parameters, betas=betas, eps=eps,
                                                   weight_decay=weight_decay, momentum=momentum)
        self.schedule: Schedule = make_schedule(schedule, d_model=model.config.d_model, lr=lr,
                                                warmup_steps=warmup_steps, total_steps=total_steps)
        self.label_smoothing = float(label_smoothing)
        self.clip_norm = clip_norm
        self.seed = int(seed)
        self._set_tips(scheduled_sampling=scheduled_sampling, scheduled_sampling_steps=scheduled_sampling_steps,
                       scheduled_sampling_source=scheduled_sampling_source, guided_attention=guided_attention,
                       guided_attention_width=guided_attention_width)
        self.step_count = 0          # optimizer updates done
        self.epoch = 0               # data position for fit / resume
        self.batch_in_epoch = 0
        self.history = TrainingHistory()
        self.last_grad_norm: Optional[float] = None
        if frozen is None:
            frozen = ["output_projection.bias"] if (model.config.extra.get("source_format") == "marian"
                                                    and getattr(model.config, "output_bias", False)) else []
        unknown = [n for n in frozen if n not in model.parameters()]
        if unknown:
            raise ValueError(f"frozen names unknown parameters: {', '.join(unknown)}")
        self.frozen = list(frozen)

    # -- the notes' training tips: scheduled sampling and guided attention ----------------------
    def _set_tips(self, *, scheduled_sampling, scheduled_sampling_steps, scheduled_sampling_source,
                  guided_attention, guided_attention_width) -> None:
        def number(name, v, lo, hi=None):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v or (hi is not None and v > hi):
                raise ValueError(f"{name} must be a number in [{lo}, {hi if hi is not None else 'inf'}], got {v!r}")
            return float(v)

        rate = number("scheduled_sampling", scheduled_sampling, 0.0, 1.0)
        if isinstance(scheduled_sampling_steps, bool) or not isinstance(scheduled_sampling_steps, int) \
                or scheduled_sampling_steps < 0:
            raise ValueError(f"scheduled_sampling_steps must be an int >= 0, got {scheduled_sampling_steps!r}")
        if scheduled_sampling_source not in SAMPLING_SOURCES:
            raise ValueError(f"scheduled_sampling_source must be one of {SAMPLING_SOURCES}, "
                             f"got {scheduled_sampling_source!r}")
        weight = number("guided_attention", guided_attention, 0.0)
        width = number("guided_attention_width", guided_attention_width, 1e-6)
        if (rate or weight) and self.labels:
            raise ValueError("scheduled_sampling and guided_attention are for translation models "
                             "(a decoder's inputs and its cross-attention), not an Encoder")
        if rate and getattr(self.config, "decoder_causal", True) is False:
            raise ValueError("scheduled_sampling needs a decoder that reads its own previous tokens; "
                             "a non-autoregressive model has none")
        if weight and not getattr(self.config, "n_decoder_layers", 0):
            raise ValueError("guided_attention needs a decoder layer's cross-attention")
        self.tips = {"scheduled_sampling": rate, "scheduled_sampling_steps": scheduled_sampling_steps,
                     "scheduled_sampling_source": scheduled_sampling_source, "guided_attention": weight,
                     "guided_attention_width": width}
        self.passes.guide = (weight, width) if weight else None

    def sampling_rate(self, step: Optional[int] = None) -> float:
        """The share of decoder inputs replaced at ``step`` (default: the next update):
        ``scheduled_sampling`` reached linearly over ``scheduled_sampling_steps`` updates."""
        step = self.step_count if step is None else step
        rate, ramp = self.tips["scheduled_sampling"], self.tips["scheduled_sampling_steps"]
        return rate if ramp == 0 else rate * min(1.0, step / ramp)

    def _sample_inputs(self, src_b: Batch, tgt_b: Batch, labels: np.ndarray, seed: int) -> Batch:
        """Scheduled sampling (Bengio et al. 2015): each decoder input but the start token is
        replaced, with probability ``sampling_rate()``, by the model's own prediction of it
        (a teacher-forced pass without dropout) or, with source "random", by a random token
        (noisy teacher forcing). Seeded by the step's seed, so a resumed run draws the same."""
        rate = self.sampling_rate()
        rng = np.random.default_rng(mix_seed(seed, 0x5C4ED))
        pick = rng.random(len(tgt_b.ids)) < rate
        pick[tgt_b.start] = False
        if not pick.any():
            return tgt_b
        if self.tips["scheduled_sampling_source"] == "model":
            self.passes.forward(src_b, tgt_b, labels, training=False, grad_scale=0.0)
            # the prediction at packed position i is of label i, which is the input at i + 1
            replacement = np.roll(self.passes.last_logits.argmax(axis=1), 1)
        else:
            replacement = rng.integers(0, self.config.tgt_vocab_size, size=len(tgt_b.ids))
        ids = tgt_b.ids.copy()
        ids[pick] = replacement[pick]
        return Batch(ids.astype(np.int32), tgt_b.length)

    # -- batches -----------------------------------------------------------------------------
    def _teacher_forcing(self, pairs: Sequence[Pair]) -> Tuple[Batch, Batch, np.ndarray]:
        """(source batch, decoder-input batch, labels) for (src, tgt) id sequences."""
        c = self.config
        if len(pairs) == 0:
            raise ValueError("empty batch")
        vectors = bool(getattr(c, "n_src_features", 0))   # sources are [S, F] float arrays
        srcs, tgt_in, labels = [], [], []
        for i, (s, t) in enumerate(pairs):
            s = np.asarray(s) if vectors else _as_ids(s, f"src[{i}]")
            t = _as_ids(t, f"tgt[{i}]")
            if not t:
                raise ValueError(f"tgt[{i}] is empty; a target needs at least EOS")
            if t[-1] != c.eos_id:
                t = t + [c.eos_id]
            srcs.append(s)
            tgt_in.append([c.decoder_start_id] + t[:-1])
            labels.append(t)
        src_b = self.model._src_batch(srcs, None)
        tgt_b = make_batch(tgt_in, vocab_size=c.tgt_vocab_size, max_len=c.max_len, name="tgt")
        lab = np.concatenate([np.asarray(x, np.int64) for x in labels])
        if lab.min() < 0 or lab.max() >= c.tgt_vocab_size:
            raise ValueError(f"tgt holds a token id outside the vocabulary [0, {c.tgt_vocab_size})")
        return src_b, tgt_b, lab.astype(np.int32)

    def _label_batch(self, examples: Sequence) -> Tuple[Batch, np.ndarray, Optional[np.ndarray]]:
        """(batch, labels [B] or packed [N], packed token types or None) for label examples."""
        c = self.config
        if len(examples) == 0:
            raise ValueError("empty batch")
        token_head = c.head == "token_classification"
        vectors = bool(getattr(c, "n_features", 0))   # examples are vector sets [T, F], not ids
        what, third = ("features", "edges") if vectors else ("ids", "token_type_ids")
        ids, labels, types = [], [], []
        for i, ex in enumerate(examples):
            if not isinstance(ex, (tuple, list)) or len(ex) not in (2, 3):
                raise ValueError(f"example {i} must be ({what}, label{'s' if token_head else ''}) or "
                                 f"({what}, label{'s' if token_head else ''}, {third})")
            seq = np.asarray(ex[0]) if vectors else _as_ids(ex[0], f"ids[{i}]")
            ids.append(seq)
            if token_head:
                lab = self._label_list(ex[1], f"labels[{i}]")
                if len(lab) != len(seq):
                    raise ValueError(f"labels[{i}] has {len(lab)} labels for {len(seq)} tokens; a token head "
                                     f"needs one label per token ({IGNORE_INDEX} to ignore one)")
                labels += lab
            else:
                labels.append(self._label_value(ex[1], f"labels[{i}]"))
            if vectors:
                types.append(None if len(ex) < 3 else ex[2])
                continue
            types.append(None if len(ex) < 3 or ex[2] is None else _as_ids(ex[2], f"token_type_ids[{i}]"))
        if vectors:   # the graph's edges (when given) become the batch's attention mask
            edges = types if any(t is not None for t in types) else None
            if edges is not None:
                edges = [np.zeros((0, 2), np.int64) if e is None else e for e in edges]
            return self.model._batch(ids, None, None, edges), np.asarray(labels, dtype=np.int32), None
        batch = make_batch(ids, vocab_size=c.vocab_size, max_len=c.max_len, name="ids")
        tt = None
        if any(t is not None for t in types):
            tt = self.model._token_types([t if t is not None else [0] * len(s) for t, s in zip(types, ids)], batch)
        return batch, np.asarray(labels, dtype=np.int32), tt

    def _label_value(self, label, name: str) -> int:
        c = self.config
        if isinstance(label, str):
            if label not in c.label2id:
                known = ", ".join(list(c.label2id)[:10])
                raise ValueError(f"{name}: unknown label {label!r} (id2label names {known}"
                                 f"{', ...' if len(c.label2id) > 10 else ''})")
            return c.label2id[label]
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise TypeError(f"{name} must be a class index or a label name, not {type(label).__name__}")
        label = int(label)
        if label != IGNORE_INDEX and not 0 <= label < c.n_labels:
            raise ValueError(f"{name} holds {label}, outside [0, n_labels={c.n_labels}) "
                             f"(and not {IGNORE_INDEX}, which ignores it)")
        return label

    def _label_list(self, labels, name: str) -> List[int]:
        if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
            raise TypeError(f"{name} must be a list of labels, one per token")
        return [self._label_value(v.item() if isinstance(v, np.generic) else v, f"{name}[{j}]")
                for j, v in enumerate(labels)]

    def _cost(self, example) -> int:
        """An example's cost in tokens, for batching by token count."""
        if self.labels:
            return len(example[0])
        s, t = example
        return max(len(s), len(t) + 1)

    def _fits(self, example) -> bool:
        c = self.config
        if self.labels:
            return 0 < len(example[0]) <= c.max_len
        s, t = example
        return 0 < len(s) <= c.max_len and 0 < len(t) + (0 if len(t) and t[-1] == c.eos_id else 1) <= c.max_len

    def _forward(self, examples: Sequence, *, training: bool, seed: int = 0,
                 grad_scale: Optional[float] = None) -> Tuple[float, float, int]:
        """The loss of one batch of examples (saving for backward unless ``grad_scale=0``)."""
        if self.labels:
            batch, labels, types = self._label_batch(examples)
            return self.passes.forward_labels(batch, labels, types, label_smoothing=self.label_smoothing,
                                              training=training, seed=seed, grad_scale=grad_scale,
                                              ignore_index=IGNORE_INDEX)
        src_b, tgt_b, labels = self._teacher_forcing(examples)
        if training and grad_scale != 0.0 and self.tips["scheduled_sampling"] > 0.0:
            tgt_b = self._sample_inputs(src_b, tgt_b, labels, seed)
        return self.passes.forward(src_b, tgt_b, labels, label_smoothing=self.label_smoothing,
                                   training=training, seed=seed, grad_scale=grad_scale)

    @staticmethod
    def _pairs(src: TokenBatch, tgt: TokenBatch, src_lengths=None, tgt_lengths=None) -> List[Pair]:
        def rows(x, lengths, name):
            if isinstance(x, np.ndarray):
                if x.ndim != 2:
                    raise ValueError(f"{name} must be [batch, length], got shape {x.shape}")
                lens = [x.shape[1]] * x.shape[0] if lengths is None else list(np.asarray(lengths))
                if len(lens) != x.shape[0]:
                    raise ValueError(f"{name} lengths must have {x.shape[0]} entries")
                return [x[i, :int(n)] for i, n in enumerate(lens)]
            if not isinstance(x, (list, tuple)):
                raise TypeError(f"{name} must be a list of token-id lists or an int array")
            return list(x)
        s = rows(src, src_lengths, "src")
        t = list(tgt) if isinstance(tgt, np.ndarray) and tgt.ndim == 1 else rows(tgt, tgt_lengths, "tgt")
        if len(s) != len(t):
            raise ValueError(f"src has {len(s)} sequences but tgt has {len(t)}")
        return list(zip(s, t))

    # -- one update --------------------------------------------------------------------------
    def loss_and_gradients(self, pairs: Sequence[Pair], training: bool = True) -> Tuple[float, int]:
        """Zero the gradients, run forward and backward; returns (mean loss, labels counted)."""
        self.passes.zero_grad()
        total, _, n = self._forward(pairs, training=training, seed=mix_seed(self.seed, self.step_count))
        self.passes.backward()
        return total / max(n, 1), n

    def _update(self) -> float:
        step = self.step_count + 1
        lr = self.schedule(step)
        kept = []
        for name in self.frozen:
            self.passes.grad(name)[...] = 0.0
            kept.append((self.model[name], self.model[name].copy()))
        if self.clip_norm is not None:
            self.last_grad_norm = clip_grad_norm(self.passes.grads, self.clip_norm)
        self.optimizer.step(self.model.params, self.passes.grads, lr)
        for view, value in kept:  # weight decay must not move them either
            view[...] = value
        self.step_count = step
        return lr

    def step(self, src: TokenBatch, tgt, src_lengths=None, tgt_lengths=None, token_type_ids=None) -> float:
        """One training step (forward, backward, optimizer) on a batch; returns the mean loss
        per target token (label-smoothed) before the update. For an encoder, ``src`` holds the
        ids and ``tgt`` the labels (one per sequence, or a list per sequence for a token head)."""
        examples = self._pairs(src, tgt, src_lengths, tgt_lengths)
        if token_type_ids is not None:
            if not self.labels:
                raise TypeError("token_type_ids are for an Encoder's training, not a Transformer's")
            types = self._pairs(token_type_ids, tgt, src_lengths, tgt_lengths)
            examples = [(s, t, tt) for (s, t), (tt, _) in zip(examples, types)]
        loss, _ = self.loss_and_gradients(examples)
        with _no_interrupt():
            lr = self._update()
            self.history.steps.append(self.step_count)
            self.history.loss.append(loss)
            self.history.lr.append(lr)
        return loss

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, pairs: Sequence, batch_tokens: int = 4096) -> Dict[str, float]:
        """Mean label-smoothed loss, NLL and perplexity per target token (no dropout); for an
        encoder, the loss and NLL per label, ``accuracy``, and for a token head ``f1`` (macro
        F1 over the classes that occur in the references or the predictions)."""
        if len(pairs) == 0:
            raise ValueError("evaluate needs at least one example")
        total = nll = 0.0
        count = 0
        gold, pred = [], []
        for idx in make_batches([self._cost(p) for p in pairs], batch_tokens, 0, 0):
            t, n_l, n = self._forward([pairs[i] for i in idx], training=False, grad_scale=0.0)
            total, nll, count = total + t, nll + n_l, count + n
            if self.labels:
                g, p = self._last_predictions([pairs[i] for i in idx])
                gold.append(g)
                pred.append(p)
        count = max(count, 1)
        if not self.labels:
            return {"loss": total / count, "nll": nll / count, "ppl": math.exp(min(nll / count, 50.0))}
        gold, pred = np.concatenate(gold), np.concatenate(pred)
        metrics = {"loss": total / count, "nll": nll / count,
                   "accuracy": float(np.mean(gold == pred)) if gold.size else float("nan")}
        if self.config.head == "token_classification":
            metrics["f1"] = macro_f1(gold, pred)
        return metrics

    def _last_predictions(self, examples) -> Tuple[np.ndarray, np.ndarray]:
        """(references, argmax predictions) of the last evaluation forward, ignored labels dropped."""
        _, labels, _ = self._label_batch(examples)
        pred = self.passes.last_logits.argmax(axis=1)
        keep = labels != IGNORE_INDEX
        return labels[keep].astype(np.int64), pred[keep].astype(np.int64)

    def predict_labels(self, examples: Sequence, batch_tokens: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
        """(references, predictions) as class indices over every labelled sequence or token of
        ``examples`` (an encoder's; ignored labels left out), e.g. for ``confusion_matrix``."""
        if not self.labels:
            raise TypeError("predict_labels is for an Encoder with a head")
        gold, pred = [], []
        for idx in make_batches([self._cost(p) for p in examples], batch_tokens, 0, 0):
            chunk = [examples[i] for i in idx]
            self._forward(chunk, training=False, grad_scale=0.0)
            g, p = self._last_predictions(chunk)
            gold.append(g)
            pred.append(p)
        return np.concatenate(gold), np.concatenate(pred)

    def bleu(self, pairs: Sequence[Pair], tokenizer, *, beam_size: int = 1, batch_size: int = 64,
             max_sentences: Optional[int] = None) -> Dict[str, float]:
        """Corpus BLEU (sacrebleu) and exact-match accuracy of decodes against the references."""
        hyps, refs = self.translate_ids(pairs[:max_sentences] if max_sentences else pairs, tokenizer,
                                        beam_size=beam_size, batch_size=batch_size)
        return {"bleu": corpus_bleu(hyps, refs), "exact": float(np.mean([h == r for h, r in zip(hyps, refs)]))}

    def translate_ids(self, pairs: Sequence[Pair], tokenizer, *, beam_size: int = 1,
                      batch_size: int = 64) -> Tuple[List[str], List[str]]:
        hyps, refs = [], []
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            longest = max(len(t) for _, t in chunk)
            max_length = min(self.config.max_len, 2 * longest + 10)
            results = self.model.generate([list(s) for s, _ in chunk], beam_size=beam_size,
                                          max_length=max_length, return_scores=False)
            hyps += tokenizer.decode([r.sequences[0] for r in results])
            refs += tokenizer.decode([list(t) for _, t in chunk])
        return hyps, refs

    # -- the training loop -------------------------------------------------------------------
    def fit(self, train: Sequence[Pair], valid: Optional[Sequence[Pair]] = None, *,
            max_steps: Optional[int] = None, epochs: Optional[int] = None, batch_tokens: int = 4096,
            max_sentences: Optional[int] = None, valid_every: Optional[int] = None,
            bleu_sentences: Optional[int] = 200, tokenizer=None, output_dir: Optional[str] = None,
            checkpoint_every: Optional[int] = None, keep_checkpoints: int = 2, resume: bool = True,
            progress: Optional[bool] = None, callback: Optional[Callable[["Trainer", Dict], None]] = None
            ) -> TrainingHistory:
        """Train until ``max_steps`` updates or ``epochs`` passes over ``train``.

        ``train`` / ``valid``: (source ids, target ids) pairs. Batches hold up to
        ``batch_tokens`` tokens (per side). Every ``valid_every`` steps (and at the end) the
        validation loss is computed, and BLEU of greedy decodes on the first
        ``bleu_sentences`` when ``tokenizer`` is given. With ``output_dir``, a checkpoint is
        written every ``checkpoint_every`` steps and at the end; with ``resume`` the newest
        checkpoint there is loaded first, continuing exactly where it stopped. Ctrl-C stops
        between steps, leaving the model usable (and checkpointed when ``output_dir`` is set).
        """
        if max_steps is None and epochs is None:
            raise ValueError("give max_steps or epochs")
        if len(train) == 0:
            raise ValueError("train is empty")
        if output_dir is not None and resume:
            latest = latest_checkpoint(output_dir)
            if latest is not None:
                self.load_checkpoint(latest)
        c = self.config
        keep = [i for i, ex in enumerate(train) if self._fits(ex)]
        if len(keep) < len(train):
            warnings.warn(f"skipping {len(train) - len(keep)} training examples that are empty or longer "
                          f"than max_len={c.max_len}")
            train = [train[i] for i in keep]
            if not train:
                raise ValueError("no training example fits max_len")
        lengths = [self._cost(ex) for ex in train]
        if progress is None:
            progress = sys.stderr.isatty()
        total = max_steps
        if epochs is not None:
            per_epoch = len(make_batches(lengths, batch_tokens, self.seed, 0, max_sentences))
            by_epochs = epochs * per_epoch
            total = by_epochs if total is None else min(total, by_epochs)
        bar = _progress(total, self.step_count, progress)
        last_valid = None
        try:
            while self.step_count < total:
                batches = make_batches(lengths, batch_tokens, self.seed, self.epoch, max_sentences)
                while self.batch_in_epoch < len(batches) and self.step_count < total:
                    idx = batches[self.batch_in_epoch]
                    loss, _ = self.loss_and_gradients([train[i] for i in idx])
                    with _no_interrupt():   # the update and the data position move together
                        lr = self._update()
                        self.batch_in_epoch += 1
                        h = self.history
                        h.steps.append(self.step_count)
                        h.loss.append(loss)
                        h.lr.append(lr)
                    bar.update(1)
                    if bar.enabled:
                        shown = {k: f"{last_valid[k] * (1 if k == 'bleu' else 100):.1f}"
                                 for k in ("bleu", "accuracy") if last_valid and k in last_valid}
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", **shown)
                    if valid is not None and valid_every and self.step_count % valid_every == 0:
                        last_valid = self.validate(valid, tokenizer, batch_tokens, bleu_sentences)
                        if callback:
                            callback(self, last_valid)
                    if output_dir is not None and checkpoint_every and self.step_count % checkpoint_every == 0:
                        self.save_checkpoint(output_dir, keep=keep_checkpoints)
                if self.batch_in_epoch >= len(batches):
                    self.epoch += 1
                    self.batch_in_epoch = 0
        except KeyboardInterrupt:
            bar.close()
            if output_dir is not None:
                self.save_checkpoint(output_dir, keep=keep_checkpoints)
            raise
        bar.close()
        if valid is not None and (not self.history.valid or self.history.valid[-1]["step"] != self.step_count):
            self.validate(valid, tokenizer, batch_tokens, bleu_sentences)
        if output_dir is not None:
            self.save_checkpoint(output_dir, keep=keep_checkpoints)
        return self.history

    def validate(self, valid: Sequence[Pair], tokenizer=None, batch_tokens: int = 4096,
                 bleu_sentences: Optional[int] = 200) -> Dict[str, float]:
        metrics: Dict[str, float] = {"step": self.step_count}
        metrics.update(self.evaluate(valid, batch_tokens))
        if tokenizer is not None and not self.labels:
            metrics.update(self.bleu(valid, tokenizer, max_sentences=bleu_sentences))
        self.history.valid.append(metrics)
        return metrics

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> Dict:
        return {"format": "cyformer-trainer", "version": 1, "step": self.step_count, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "seed": self.seed,
                "optimizer": {"name": self.optimizer.name, "steps": self.optimizer.steps,
                              "hyper": self.optimizer.hyper()},
                "schedule": self.schedule.to_dict(), "label_smoothing": self.label_smoothing,
                "clip_norm": self.clip_norm, "tips": self.tips, "history": self.history.to_dict()}

    def save_checkpoint(self, output_dir: str, keep: Optional[int] = 2) -> str:
        """Write ``output_dir/checkpoint-STEP`` atomically; keep the newest ``keep``."""
        os.makedirs(output_dir, exist_ok=True)
        _recover(output_dir)
        final = os.path.join(output_dir, f"checkpoint-{self.step_count}")
        tmp = tempfile.mkdtemp(prefix=f".checkpoint-{self.step_count}-", dir=output_dir)
        try:
            os.chmod(tmp, dir_mode())   # mkdtemp's 0700 would survive the rename: the umask's mode
            self.model.save_pretrained(tmp)
            arrays = self.optimizer.state_arrays()
            save_safetensors(os.path.join(tmp, OPTIMIZER_NAME), arrays, {"format": "cyformer-optimizer"})
            atomic_write_bytes(os.path.join(tmp, STATE_NAME), json.dumps(self._state(), indent=1).encode())
            fsync_dir(tmp)
            with _no_interrupt():
                if os.path.exists(final):
                    # the same step saved again (fit's last save, an interrupt): the old copy
                    # steps aside under a name _recover restores should we stop between renames
                    aside = final + _ASIDE
                    shutil.rmtree(aside, ignore_errors=True)
                    os.rename(final, aside)
                    os.rename(tmp, final)
                    shutil.rmtree(aside, ignore_errors=True)
                else:
                    os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(output_dir)
        if keep:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: str) -> None:
        """Restore parameters, optimizer state, schedule, data position and history."""
        state = read_json(os.path.join(path, STATE_NAME), expect=dict)   # bounded size and nesting
        if state.get("format") != "cyformer-trainer":
            raise ValueError(f"{path}/{STATE_NAME} is not a cyformer trainer state")
        loaded = type(self.model).from_pretrained(path, mmap=False)
        if loaded.config.to_dict() != self.config.to_dict():
            raise ValueError(f"{path} holds a model with a different config than this trainer's")
        self.model.params[...] = loaded.params
        opt = state["optimizer"]
        if opt["name"] != self.optimizer.name:
            raise ValueError(f"{path} was trained with {opt['name']}, this trainer uses {self.optimizer.name}")
        arrays = load_safetensors(os.path.join(path, OPTIMIZER_NAME), mmap=False)
        self.optimizer.load_state({k: np.asarray(v) for k, v in arrays.items()}, opt["steps"])
        self.schedule = schedule_from_dict(state["schedule"])
        self.step_count = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.seed = int(state["seed"])
        self.label_smoothing = float(state["label_smoothing"])
        self.clip_norm = state["clip_norm"]
        if "tips" in state:
            self._set_tips(**state["tips"])
        self.history = TrainingHistory.from_dict(state.get("history", {}))

    @classmethod
    def from_checkpoint(cls, path: str, **options) -> "Trainer":
        """A trainer (and its model) restored from a checkpoint folder."""
        state = read_json(os.path.join(path, STATE_NAME), expect=dict)   # bounded size and nesting
        from .encoder import MODEL_TYPE as ENCODER_TYPE
        raw = read_json(os.path.join(path, "config.json"), expect=dict)
        kind = Encoder if raw.get("model_type") == ENCODER_TYPE else Transformer
        model = kind.from_pretrained(path, mmap=False)
        opt = state["optimizer"]
        hyper = dict(opt.get("hyper", {}))
        kwargs = {"optimizer": opt["name"]}
        if opt["name"] in ("adam", "adamw"):
            kwargs.update(betas=tuple(hyper.get("betas", (0.9, 0.98))), eps=hyper.get("eps", 1e-9),
                          weight_decay=hyper.get("weight_decay", 0.0))
        else:
            kwargs.update(momentum=hyper.get("momentum", 0.9), weight_decay=hyper.get("weight_decay", 0.0))
        kwargs.update(options)
        trainer = cls(model, **kwargs)
        trainer.load_checkpoint(path)
        return trainer


_ASIDE = ".replaced"


def _recover(output_dir: str) -> None:
    """Put back a checkpoint that stepped aside for a re-save of its step that never finished."""
    for name in os.listdir(output_dir):
        if name.endswith(_ASIDE) and _CHECKPOINT.match(name[:-len(_ASIDE)]):
            final = os.path.join(output_dir, name[:-len(_ASIDE)])
            if os.path.exists(os.path.join(final, STATE_NAME)):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
            else:
                shutil.rmtree(final, ignore_errors=True)
                os.rename(os.path.join(output_dir, name), final)


def list_checkpoints(output_dir: str) -> List[str]:
    """Complete checkpoint folders in ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CHECKPOINT.match(name)
        if m and os.path.exists(os.path.join(output_dir, name, STATE_NAME)):
            found.append((int(m.group(1)), os.path.join(output_dir, name)))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """The newest complete checkpoint (after putting back one a failed re-save set aside)."""
    if os.path.isdir(output_dir):
        _recover(output_dir)
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def _check_trainable_head(config) -> None:
    if config.head is None:
        raise ValueError("the Trainer fits an Encoder with a head, and this one has none (config.head is None): "
                         "build it with EncoderConfig(head='sequence_classification' or "
                         "'token_classification', n_labels=...)")
    problem = config.extra.get("problem_type")
    if problem in ("regression", "multi_label_classification") or config.n_labels < 2:
        raise ValueError(f"the Trainer fits single-label classification with cross-entropy; this model is "
                         f"set up for {problem or 'regression (n_labels=1)'}, which it does not train")


def macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """Mean over classes (those in ``gold`` or ``pred``) of each class's F1 = 2PR / (P + R)."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    classes = np.union1d(gold, pred)
    if classes.size == 0:
        return float("nan")
    scores = []
    for k in classes:
        tp = float(np.sum((gold == k) & (pred == k)))
        denominator = float(np.sum(gold == k) + np.sum(pred == k))
        scores.append(2.0 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def confusion_matrix(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> np.ndarray:
    """[n_labels, n_labels] counts: row = reference class, column = predicted class."""
    out = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(out, (np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return out


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (13a tokenisation), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


class _NoBar:
    enabled = False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: Optional[int], initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)
    bar.enabled = True
    return bar
