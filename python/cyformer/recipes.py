"""End-to-end jobs behind ``cyformer demo`` and ``cyformer train``: data, tokenizer, model, training.

``demo`` trains a small Transformer on a built-in task (``cyformer.data``; dates written in
words to ISO dates by default), then translates a handful of test sentences and reports test
BLEU. On a labelling task (``tagging``: a part-of-speech tag per word; ``classify``: the
majority topic of a word sequence) it trains an ``Encoder`` with a token or sequence head
instead, and reports test accuracy (and F1 for tags) with a confusion table; that folder
loads with ``cyformer.Encoder.from_pretrained`` and its ``vocab.json`` tokenizer with
``cyformer.Tokenizer.from_pretrained``. ``train_files`` does the same for a user's parallel text files, with a SentencePiece
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
# The labelling demos' encoder (BERT's layout, post-LN, GELU, learned positions, no token types).
DEMO_ENCODER = dict(d_model=64, n_heads=4, d_ff=256, n_layers=2, max_len=64, type_vocab_size=0, dropout=0.1,
                    activation="gelu")
DEMO_ENCODER_TRAINING = dict(optimizer="adamw", schedule="linear", lr=2e-3, warmup_steps=100, weight_decay=0.01,
                             label_smoothing=0.0)
DEMO_LABEL_STEPS = {"tagging": 400, "classify": 300}


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


def demo(task: str = "dates", *, steps: Optional[int] = None, batch_tokens: Optional[int] = None,
         n_train: int = 40000, output_dir: Optional[str] = "cyformer-demo", seed: int = 0, examples: int = 8,
         beam_size: int = 4, progress: Optional[bool] = None, log=None, attention_plot: bool = True) -> JobResult:
    """Train the demo model on a built-in task and report test BLEU, or accuracy on a
    labelling task (see the module docstring)."""
    from .data import LABEL_TASKS, TASKS, load_task

    from .vector_tasks import VECTOR_TASKS

    log = log or (lambda msg: print(msg, flush=True))
    if task in VECTOR_TASKS:   # image patches, speech frames, graph nodes: cyformer.vector_demo
        from .vector_demo import vector_demo
        return vector_demo(task, steps=steps, output_dir=output_dir, seed=seed, progress=progress, log=log)
    if task in LABEL_TASKS:
        return demo_labels(task, steps=steps, batch_tokens=batch_tokens, output_dir=output_dir, seed=seed,
                           examples=examples, progress=progress, log=log)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join([*TASKS, *LABEL_TASKS, *VECTOR_TASKS])}")
    steps = 800 if steps is None else steps
    batch_tokens = 2500 if batch_tokens is None else batch_tokens
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


def _label_examples(tokenizer: Tokenizer, task, pairs: Sequence[Tuple[str, str]]) -> List[Tuple[List[int], object]]:
    """(ids, label index) or (ids, [label index per token]) from a labelling task's text pairs."""
    index = {name: i for i, name in enumerate(task.labels)}
    ids = tokenizer.encode([s for s, _ in pairs], side="source", add_eos=False)
    if task.objective == "token_classification":
        return [(i, [index[t] for t in tags.split()]) for i, (_, tags) in zip(ids, pairs)]
    return [(i, index[label]) for i, (_, label) in zip(ids, pairs)]


def format_confusion(matrix: np.ndarray, labels: Sequence[str]) -> str:
    """A confusion table: one row per reference label, one column per predicted label, and
    each row's recall."""
    width = max(5, max(len(n) for n in labels), len(str(int(matrix.max(initial=0)))))
    head = " " * (width + 2) + " ".join(f"{n:>{width}}" for n in labels) + "  recall"
    rows = [head]
    for i, name in enumerate(labels):
        total = int(matrix[i].sum())
        recall = f"{100 * matrix[i, i] / total:6.1f}%" if total else "     -"
        rows.append(f"{name:>{width}}  " + " ".join(f"{int(v):>{width}}" for v in matrix[i]) + "  " + recall)
    return "\n".join(rows)


def demo_labels(task: str, *, steps: Optional[int] = None, batch_tokens: Optional[int] = None,
                n_train: int = 20000, output_dir: Optional[str] = "cyformer-demo", seed: int = 0,
                examples: int = 6, progress: Optional[bool] = None, log=None) -> JobResult:
    """Train an encoder with a head on a labelling task (``tagging`` or ``classify``), report
    test accuracy (and macro F1 for tags) and print the confusion table."""
    from .data import LABEL_TASKS, load_task
    from .encoder import Encoder, EncoderConfig
    from .training import confusion_matrix, macro_f1

    log = log or (lambda msg: print(msg, flush=True))
    if task not in LABEL_TASKS:
        raise ValueError(f"unknown labelling task {task!r}; known: {', '.join(LABEL_TASKS)}")
    steps = DEMO_LABEL_STEPS[task] if steps is None else steps
    batch_tokens = 1500 if batch_tokens is None else batch_tokens
    t0 = time.perf_counter()
    data = load_task(task, n_train=n_train, n_valid=300, n_test=1000, seed=seed)
    spec = data.task
    tokenizer = data.build_tokenizer()
    train, valid, test = (_label_examples(tokenizer, spec, split) for split in (data.train, data.valid, data.test))
    token_head = spec.objective == "token_classification"
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, head=spec.objective,
                           n_labels=len(spec.labels), id2label=dict(enumerate(spec.labels)),
                           pooling="cls" if token_head else "mean", **DEMO_ENCODER)
    model = Encoder(config, seed=seed)
    log(f"cyformer demo: task '{task}' ({spec.description}); {len(train)} training examples, "
        f"vocabulary {tokenizer.vocab_size}, {len(spec.labels)} labels")
    log(f"model: encoder d_model={config.d_model}, heads={config.n_heads}, d_ff={config.d_ff}, "
        f"{config.n_layers} layers, {config.head} head, {model.num_parameters:,} parameters; "
        f"{threads.get_num_threads()} thread(s); {steps} steps of ~{batch_tokens} tokens")
    options = dict(DEMO_ENCODER_TRAINING, total_steps=steps, warmup_steps=min(DEMO_ENCODER_TRAINING["warmup_steps"],
                                                                              max(1, steps // 5)))
    trainer = Trainer(model, seed=seed, **options)
    checkpoints = os.path.join(output_dir, "checkpoints") if output_dir else None

    def report(t, m):
        f1 = f", F1 {100 * m['f1']:.1f}" if "f1" in m else ""
        log(f"  step {int(m['step']):>5}: valid loss {m['loss']:.3f}, accuracy {100 * m['accuracy']:.1f}%{f1}")

    trainer.fit(train, valid, max_steps=steps, batch_tokens=batch_tokens, valid_every=max(1, steps // 4),
                output_dir=checkpoints, checkpoint_every=max(1, steps // 4), resume=False, progress=progress,
                callback=report)
    train_seconds = time.perf_counter() - t0
    gold, pred = trainer.predict_labels(test)
    scores = {"accuracy": float(np.mean(gold == pred))}
    if token_head:
        scores["f1"] = macro_f1(gold, pred)
    log(f"\ntest examples:")
    for (text, target), (ids, _) in list(zip(data.test, test))[:examples]:
        logits = model.classify([ids])[0]
        if token_head:
            got = [spec.labels[k] for k in logits[:len(ids)].argmax(axis=1)]
            want = target.split()
            shown = " ".join(w if g == r else f"{w}/{g}(!{r})" for w, g, r in
                             zip(text.split(), got, want))
            mark = "ok" if got == want else "  "
            log(f"  {mark} {' '.join(f'{w}/{g}' for w, g in zip(text.split(), got)) if got == want else shown}")
        else:
            got = spec.labels[int(logits.argmax())]
            log(f"  {'ok' if got == target else '  '} {text:<60} -> {got:<8} (reference {target})")
    unit = "words" if token_head else "sequences"
    log(f"\nconfusion on {gold.size} test {unit} (rows: reference, columns: predicted):")
    log(format_confusion(confusion_matrix(gold, pred, len(spec.labels)), spec.labels))
    seconds = time.perf_counter() - t0
    f1 = f", macro F1 {100 * scores['f1']:.1f}" if token_head else ""
    log(f"\ntest accuracy {100 * scores['accuracy']:.1f}%{f1} on {len(test)} test examples; "
        f"training {train_seconds:.0f} s, total {seconds:.0f} s")
    _finish(trainer, tokenizer, output_dir, f"cyformer demo: {task}", log)
    if output_dir:
        log(f"model and tokenizer saved in {output_dir}/ (cyformer.Encoder.from_pretrained('{output_dir}'), "
            f"tokenizer: vocab.json)")
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
