"""End-to-end jobs behind ``cyformer demo`` and ``cyformer train``: data, tokenizer, model, training.

``demo`` trains a small Transformer on a built-in task (``cyformer.data``; dates written in
words to ISO dates by default), then translates a handful of test sentences and reports test
BLEU. ``train_files`` does the same for a user's parallel text files, with a SentencePiece
tokenizer trained on them (or one given). Both write a folder that ``cyformer translate``
reads: ``config.json`` + ``model.safetensors`` + the tokenizer files, checkpoints under
``checkpoints/``, the training curves as ``training.png`` when matplotlib is installed.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import threads
from .config import TransformerConfig
from .model import Transformer
from .tokenizer import SentencePieceTokenizer, Tokenizer
from .training import Trainer, TrainingHistory

# The demo model: small enough to train in minutes on two cores, large enough for the task.
DEMO_MODEL = dict(d_model=128, n_heads=4, d_ff=512, n_encoder_layers=2, n_decoder_layers=2, dropout=0.1,
                  max_len=64, share_embeddings=True)
DEMO_TRAINING = dict(optimizer="adam", schedule="noam", lr=1.0, warmup_steps=300, label_smoothing=0.1)


@dataclass
class JobResult:
    model: Transformer
    tokenizer: Tokenizer
    history: TrainingHistory
    test: Dict[str, float]
    seconds: float
    output_dir: Optional[str]


def _encode_pairs(tokenizer: Tokenizer, pairs: Sequence[Tuple[str, str]]) -> List[Tuple[List[int], List[int]]]:
    src = tokenizer.encode([s for s, _ in pairs], side="source")
    tgt = tokenizer.encode([t for _, t in pairs], side="target")
    return list(zip(src, tgt))


def _config_for(tokenizer: Tokenizer, base: Dict) -> TransformerConfig:
    fields = dict(base)
    fields.update(src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size,
                  pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                  bos_id=tokenizer.vocab.get("<s>", tokenizer.eos_id), unk_id=tokenizer.unk_id)
    fields.setdefault("decoder_start_id", fields["bos_id"])
    return TransformerConfig(**fields)


def _finish(trainer: Trainer, tokenizer: Tokenizer, output_dir: Optional[str], title: str, log) -> None:
    if output_dir is None:
        return
    trainer.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    from .io import atomic_write_bytes
    atomic_write_bytes(os.path.join(output_dir, "history.json"), json.dumps(trainer.history.to_dict()).encode())
    try:
        from .plots import plot_history
    except ImportError:  # pragma: no cover - plots import matplotlib lazily
        return
    try:
        path = plot_history(trainer.history, os.path.join(output_dir, "training.png"), title=title)
        log(f"training curves: {path}")
    except ImportError:
        log("(install matplotlib, `pip install 'cyformer[plot]'`, for the training-curve PNG)")


def demo(task: str = "dates", *, steps: int = 800, batch_tokens: int = 2500, n_train: int = 40000,
         output_dir: Optional[str] = "cyformer-demo", seed: int = 0, examples: int = 8,
         beam_size: int = 4, progress: Optional[bool] = None, log=None, attention_plot: bool = True) -> JobResult:
    """Train the demo model on a built-in task and report test BLEU (see the module docstring)."""
    from .data import TASKS, load_task

    log = log or (lambda msg: print(msg, flush=True))
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    t0 = time.perf_counter()
    data = load_task(task, n_train=n_train, n_valid=300, n_test=500, seed=seed)
    tokenizer = data.build_tokenizer()
    train, valid, test = (_encode_pairs(tokenizer, split) for split in (data.train, data.valid, data.test))
    config = _config_for(tokenizer, DEMO_MODEL)
    model = Transformer(config, seed=seed)
    log(f"cyformer demo: task '{task}' ({data.task.description}); {len(train)} training pairs, "
        f"vocabulary {tokenizer.vocab_size}")
    log(f"model: d_model={config.d_model}, heads={config.n_heads}, d_ff={config.d_ff}, "
        f"{config.n_encoder_layers}+{config.n_decoder_layers} layers, {model.num_parameters:,} parameters; "
        f"{threads.get_num_threads()} thread(s); {steps} steps of ~{batch_tokens} tokens")
    trainer = Trainer(model, seed=seed, **DEMO_TRAINING)
    checkpoints = os.path.join(output_dir, "checkpoints") if output_dir else None
    trainer.fit(train, valid, max_steps=steps, batch_tokens=batch_tokens, valid_every=max(1, steps // 5),
                bleu_sentences=300, tokenizer=tokenizer, output_dir=checkpoints,
                checkpoint_every=max(1, steps // 5), resume=False, progress=progress,
                callback=lambda t, m: log(f"  step {int(m['step']):>5}: valid loss {m['loss']:.3f}, "
                                          f"BLEU {m.get('bleu', float('nan')):.1f}, "
                                          f"exact {100 * m.get('exact', float('nan')):.1f}%"))
    train_seconds = time.perf_counter() - t0
    hyps, refs = trainer.translate_ids(test, tokenizer, beam_size=beam_size)
    from .training import corpus_bleu
    scores = {"bleu": corpus_bleu(hyps, refs), "exact": float(np.mean([h == r for h, r in zip(hyps, refs)]))}
    log(f"\ntranslations of test sentences (beam {beam_size}):")
    # hyps and refs are decoded text, as a person writes it ("2004-03-21")
    for (src, _), hyp, ref in list(zip(data.test, hyps, refs))[:examples]:
        mark = "ok" if hyp == ref else "  "
        log(f"  {mark} {data.task.detokenize(src, 'source'):<48} -> {hyp:<14} (reference {ref})")
    seconds = time.perf_counter() - t0
    log(f"\ntest BLEU {scores['bleu']:.1f}, exact match {100 * scores['exact']:.1f}% on {len(test)} sentences; "
        f"training {train_seconds:.0f} s, total {seconds:.0f} s")
    _finish(trainer, tokenizer, output_dir, f"cyformer demo: {task}", log)
    if output_dir and attention_plot:
        _attention_example(model, tokenizer, data.test[0][0], os.path.join(output_dir, "attention.png"), log)
    if output_dir:
        example = data.task.detokenize(data.test[0][0], "source")
        log(f"model and tokenizer saved in {output_dir}/ (try: echo '{example}' | cyformer translate {output_dir})")
    return JobResult(model, tokenizer, trainer.history, scores, seconds, output_dir)


def _attention_example(model: Transformer, tokenizer: Tokenizer, text: str, path: str, log) -> None:
    """Cross-attention heat map of one greedy translation, as in the lecture notes."""
    try:
        from .plots import plot_attention

        src = tokenizer.encode([text])[0]
        res = model.generate([src], return_attention=True, max_length=model.config.max_len // 2)[0]
        seq = res.sequences[0]
        inverse = tokenizer._id_to_piece()
        plot_attention(res.attention[0], [inverse[i] for i in src], [inverse[i] for i in seq], path,
                       title=f"cross-attention: {text}")
        log(f"attention heat map: {path}")
    except ImportError:
        pass


def train_files(src_path: str, tgt_path: str, output_dir: str, *, config: Optional[Dict] = None,
                valid_paths: Optional[Tuple[str, str]] = None, tokenizer_dir: Optional[str] = None,
                vocab_size: int = 8000, steps: int = 10000, batch_tokens: int = 4096,
                valid_every: int = 1000, checkpoint_every: int = 1000, seed: int = 0,
                training: Optional[Dict] = None, progress: Optional[bool] = None, log=None) -> JobResult:
    """Train on parallel text files (one sentence per line), resuming from ``output_dir``."""
    from .data import read_parallel

    log = log or (lambda msg: print(msg, flush=True))
    t0 = time.perf_counter()
    pairs = read_parallel(src_path, tgt_path, skip_empty=True)
    valid_pairs = read_parallel(*valid_paths, skip_empty=True) if valid_paths else None
    if tokenizer_dir:
        tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    elif os.path.exists(os.path.join(output_dir, "vocab.json")):
        tokenizer = Tokenizer.from_pretrained(output_dir)   # resuming: keep the ids
    else:
        log(f"training a SentencePiece model ({vocab_size} pieces) on {len(pairs)} sentence pairs")
        tokenizer = SentencePieceTokenizer.train([t for p in pairs for t in p], output_dir, vocab_size=vocab_size)
    base = dict(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3, n_decoder_layers=3, max_len=256,
                share_embeddings=True)
    base.update(config or {})
    for key in ("src_vocab_size", "tgt_vocab_size"):
        base.pop(key, None)
    model_config = _config_for(tokenizer, base)
    model = Transformer(model_config, seed=seed)
    options = dict(optimizer="adam", schedule="noam", warmup_steps=4000, label_smoothing=0.1)
    options.update(training or {})
    trainer = Trainer(model, seed=seed, **options)
    train = _encode_pairs(tokenizer, pairs)
    valid = _encode_pairs(tokenizer, valid_pairs) if valid_pairs else None
    log(f"model: {model.num_parameters:,} parameters, vocabulary {tokenizer.vocab_size}; {len(train)} pairs; "
        f"{threads.get_num_threads()} thread(s)")
    trainer.fit(train, valid, max_steps=steps, batch_tokens=batch_tokens, valid_every=valid_every,
                tokenizer=tokenizer, output_dir=os.path.join(output_dir, "checkpoints"),
                checkpoint_every=checkpoint_every, resume=True, progress=progress,
                callback=lambda t, m: log(f"  step {int(m['step'])}: valid loss {m['loss']:.3f}"
                                          + (f", BLEU {m['bleu']:.1f}" if "bleu" in m else "")))
    test = trainer.history.valid[-1] if trainer.history.valid else {}
    _finish(trainer, tokenizer, output_dir, f"cyformer train: {os.path.basename(src_path)}", log)
    log(f"saved to {output_dir}/ in {time.perf_counter() - t0:.0f} s")
    return JobResult(model, tokenizer, trainer.history, test, time.perf_counter() - t0, output_dir)
