"""``cyformer demo --task digits|speech|graph``: encoders over sets of vectors, end to end.

Each demo trains a small ``Encoder`` with ``n_features`` inputs on a built-in task of
``cyformer.vector_tasks`` and prints its test accuracy, against the comparison that shows
what the attention structure buys:

* ``digits``: 8x8 images as 16 patches of 2x2 pixels, a sequence head on the mean state;
* ``speech``: log-mel frames (25 ms every 10 ms) with local-window attention (``window``
  frames each side), a label per frame; the same model with full attention is trained too,
  and the accuracy and the cost (training and inference time) of each are printed;
* ``graph``: attention only along each graph's edges (plus self), a label per node; a
  no-edge baseline (each node attends to itself only) is trained with the same budget.

The folder written holds the model (``Encoder.from_pretrained``), ``history.json``, one test
example (``example.npz``) and, with matplotlib, the training curves and the attention of the
example (``attention.png``), which ``cyformer plot`` draws again.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from . import threads
from .encoder import Encoder, EncoderConfig
from .training import Trainer, TrainingHistory, confusion_matrix
from .vector_tasks import VECTOR_TASKS, VectorSplit, VectorTaskData, load_vector_task

# Per task: the encoder (pre-LN, GELU), the training budget and what is compared.
VECTOR_DEMOS: Dict[str, dict] = {
    "digits": dict(model=dict(d_model=64, n_heads=4, d_ff=128, n_layers=2, pooling="mean"), steps=400),
    "speech": dict(model=dict(d_model=64, n_heads=4, d_ff=128, n_layers=2, attention_window=16), steps=400,
                   data=dict(n_train=2000)),
    "graph": dict(model=dict(d_model=64, n_heads=4, d_ff=128, n_layers=2, positional="none"), steps=400),
}
TRAINING = dict(optimizer="adamw", schedule="linear", lr=2e-3, warmup_steps=50, weight_decay=0.01,
                label_smoothing=0.0)
BATCH_TOKENS = 2048


@dataclass
class VectorDemoResult:
    model: Encoder
    data: VectorTaskData
    history: TrainingHistory
    test: Dict[str, float]                 # accuracy (and f1 for per-vector labels)
    comparison: Optional[Dict[str, float]]  # the other model's test figures (full attention / no edges)
    seconds: float
    output_dir: Optional[str]


def _examples(split: VectorSplit, no_edges: bool = False) -> list:
    if split.edges is None:
        return list(zip(split.features, split.labels))
    edges = [np.zeros((0, 2), np.int64)] * len(split) if no_edges else split.edges
    return list(zip(split.features, split.labels, edges))


def _config(data: VectorTaskData, model: dict, seed_head: str) -> EncoderConfig:
    fields = dict(vocab_size=1, type_vocab_size=0, n_features=data.n_features, max_len=max(64, data.max_len),
                  embedding_norm=True, norm_first=True, activation="gelu", dropout=0.1,
                  head=seed_head, n_labels=data.n_labels, id2label=dict(enumerate(data.label_names)))
    fields.update(model)
    return EncoderConfig(**fields)


def _train(config: EncoderConfig, data: VectorTaskData, steps: int, seed: int, progress, no_edges: bool = False):
    model = Encoder(config, seed=seed)
    options = dict(TRAINING, warmup_steps=min(TRAINING["warmup_steps"], steps // 4))
    trainer = Trainer(model, total_steps=steps, seed=seed, **options)
    t0 = time.perf_counter()
    trainer.fit(_examples(data.train, no_edges), _examples(data.valid, no_edges), max_steps=steps,
                batch_tokens=BATCH_TOKENS, valid_every=max(steps // 4, 1), progress=progress)
    seconds = time.perf_counter() - t0
    test = trainer.evaluate(_examples(data.test, no_edges), batch_tokens=BATCH_TOKENS)
    t0 = time.perf_counter()
    trainer.predict_labels(_examples(data.test, no_edges), batch_tokens=BATCH_TOKENS)
    test["train_seconds"], test["test_seconds"] = seconds, time.perf_counter() - t0
    return trainer, test


def _confusion_table(trainer: Trainer, data: VectorTaskData, log) -> None:
    gold, pred = trainer.predict_labels(_examples(data.test), batch_tokens=BATCH_TOKENS)
    cm = confusion_matrix(gold, pred, data.n_labels)
    names = [n[:7] for n in data.label_names]
    width = max(7, max(len(n) for n in names))
    log("confusion (rows: true, columns: predicted):")
    log(" " * (width + 1) + " ".join(f"{n:>{width}}" for n in names))
    for n, row in zip(names, cm):
        log(f"{n:>{width}} " + " ".join(f"{v:>{width}d}" for v in row))


def _save(trainer: Trainer, data: VectorTaskData, output_dir: str, log) -> None:
    from .io import atomic_write_bytes
    import io as _io
    trainer.model.save_pretrained(output_dir)
    atomic_write_bytes(os.path.join(output_dir, "history.json"), json.dumps(trainer.history.to_dict()).encode())
    ex = {"features": data.test.features[0], "labels": np.asarray(data.test.labels[0])}
    if data.test.edges is not None:
        ex["edges"] = data.test.edges[0]
    buf = _io.BytesIO()
    np.savez(buf, task=np.array(data.name), **ex)
    atomic_write_bytes(os.path.join(output_dir, "example.npz"), buf.getvalue())
    try:
        from .plots import plot_history
        plot_history(trainer.history, os.path.join(output_dir, "training.png"), title=f"{data.name} demo")
        path = plot_example_attention(output_dir)
        log(f"attention of a test example: {path}")
    except ImportError:
        log("(pip install 'cyformer[plot]' for the training curves and attention pictures)")


def plot_example_attention(model_dir: str, path: Optional[str] = None) -> str:
    """Draw the saved test example's last-layer attention (mean over heads) of a vector demo
    folder: patches for digits, frames for speech, edges for graphs."""
    from . import plots
    model = Encoder.from_pretrained(model_dir)
    with np.load(os.path.join(model_dir, "example.npz")) as f:
        ex = {k: f[k] for k in f.files}
    task = str(ex["task"])
    feats = ex["features"]
    edges = [ex["edges"]] if "edges" in ex else None
    weights = model.attention([feats], edges=edges).mean(axis=1)[0]
    path = path or os.path.join(model_dir, "attention.png")
    if task == "digits":
        side = int(round(np.sqrt(feats.shape[0])))
        p = int(round(np.sqrt(feats.shape[1])))
        image = feats.reshape(side, side, p, p).transpose(0, 2, 1, 3).reshape(side * p, side * p)
        return plots.plot_patch_attention(image, weights, p, path, title="digits: attention over 2x2 patches")
    if task == "speech":
        return plots.plot_frame_attention(weights, path, window=model.config.attention_window,
                                          title="speech: attention over 10 ms frames")
    if task == "graph":
        return plots.plot_graph_attention(weights, ex["edges"], path, node_labels=ex["labels"],
                                          title="graph: attention along the edges (nodes coloured by label)")
    raise ValueError(f"{model_dir}: example.npz is of an unknown task {task!r}")


def vector_demo(task: str = "digits", *, steps: Optional[int] = None, output_dir: Optional[str] = "cyformer-demo",
                seed: int = 0, compare: bool = True, progress: Optional[bool] = None, log=print,
                data_options: Optional[dict] = None) -> VectorDemoResult:
    """Train and test the ``task`` demo (see the module docstring); ``compare=False`` skips the
    comparison model (full attention for speech, no edges for graph); ``data_options``
    (e.g. ``n_train``) go to the task's loader."""
    if task not in VECTOR_TASKS:
        raise ValueError(f"unknown vector task {task!r}; known: {', '.join(VECTOR_TASKS)}")
    spec = VECTOR_DEMOS[task]
    steps = spec["steps"] if steps is None else int(steps)
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    t0 = time.perf_counter()
    data = load_vector_task(task, seed=seed, **{**spec.get("data", {}), **(data_options or {})})
    head = "token_classification" if data.per_position else "sequence_classification"
    config = _config(data, spec["model"], head)
    log(f"{task}: {data.description}; {len(data.train)} train / {len(data.test)} test examples, "
        f"{data.n_features} features per vector, {data.n_labels} labels "
        f"({'one per vector' if data.per_position else 'one per example'}); "
        f"{threads.get_num_threads()} threads")
    trainer, test = _train(config, data, steps, seed, progress)
    model = trainer.model
    log(f"{model.num_parameters:,} parameters, {steps} steps in {test['train_seconds']:.1f} s")
    comparison = None
    if compare and task in ("speech", "graph"):
        if task == "speech":
            other = EncoderConfig.from_dict({**config.to_dict(), "attention_window": None})
            _, comparison = _train(other, data, steps, seed, progress)
            w = config.attention_window
            log(f"window of {w} frames: test accuracy {100 * test['accuracy']:.1f}%, training "
                f"{test['train_seconds']:.1f} s, test inference {test['test_seconds']:.2f} s")
            log(f"full attention:       test accuracy {100 * comparison['accuracy']:.1f}%, training "
                f"{comparison['train_seconds']:.1f} s, test inference {comparison['test_seconds']:.2f} s")
        else:
            _, comparison = _train(config, data, steps, seed, progress, no_edges=True)
            log(f"no-edge baseline (each node attends to itself only): test accuracy "
                f"{100 * comparison['accuracy']:.1f}%")
    _confusion_table(trainer, data, log)
    line = f"test accuracy {100 * test['accuracy']:.1f}%"
    if "f1" in test:
        line += f", macro F1 {100 * test['f1']:.1f}"
    log(line)
    if output_dir is not None:
        _save(trainer, data, output_dir, log)
        log(f"model saved to {output_dir}/ (cyformer.Encoder.from_pretrained)")
    return VectorDemoResult(model, data, trainer.history, test, comparison, time.perf_counter() - t0, output_dir)
