"""Training curves and cross-attention heat maps as PNG files (needs the ``plot`` extra: matplotlib)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .training import TrainingHistory


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'cyformer[plot]'") from e
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: TrainingHistory, path: str, title: Optional[str] = None, smooth: int = 50) -> str:
    """Training loss (raw and a running mean of ``smooth`` steps), validation loss and, when
    measured, validation BLEU (right axis) against the step; written to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    steps = np.asarray(history.steps)
    loss = np.asarray(history.loss)
    if len(steps):
        ax.plot(steps, loss, color="#9ecae1", linewidth=0.6, label="train loss")
        if len(loss) >= smooth > 1:
            kernel = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1:], np.convolve(loss, kernel, mode="valid"), color="#08519c",
                    linewidth=1.5, label=f"train loss ({smooth}-step mean)")
    valid = [v for v in history.valid if "loss" in v]
    if valid:
        ax.plot([v["step"] for v in valid], [v["loss"] for v in valid], "o-", color="#d94801",
                label="valid loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (label-smoothed cross-entropy)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    bleu = [v for v in history.valid if "bleu" in v]
    if bleu:
        ax2 = ax.twinx()
        ax2.plot([v["step"] for v in bleu], [v["bleu"] for v in bleu], "s--", color="#238b45", label="valid BLEU")
        ax2.set_ylabel("BLEU")
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.set_title(title or "training")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_attention(weights: np.ndarray, source_tokens: Sequence[str], target_tokens: Sequence[str],
                   path: str, title: Optional[str] = None) -> str:
    """Heat map of cross-attention ``weights`` [target length, source length] (one row per
    generated token, as ``generate(..., return_attention=True)`` returns them)."""
    plt = _pyplot()
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(f"weights must be [target, source], got shape {weights.shape}")
    if weights.shape != (len(target_tokens), len(source_tokens)):
        raise ValueError(f"weights are {weights.shape} but there are {len(target_tokens)} target and "
                         f"{len(source_tokens)} source tokens")
    h, w = weights.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * w + 2), max(3.0, 0.4 * h + 1.5)), dpi=110)
    im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(weights.max())), aspect="auto")
    ax.set_xticks(range(w))
    ax.set_xticklabels(source_tokens, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(h))
    ax.set_yticklabels(target_tokens, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("generated")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(title or "cross-attention (last decoder layer, mean over heads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
