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


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_history(history: TrainingHistory, path: str, title: Optional[str] = None, smooth: int = 50) -> str:
    """Training loss (raw and a running mean of ``smooth`` steps), validation loss and, when
    measured, validation BLEU or accuracy (right axis) against the step; written to ``path``."""
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
    # the right axis: BLEU of a translation run, or accuracy (%) of a labelling run
    key, name, scale = ("bleu", "BLEU", 1.0) if any("bleu" in v for v in history.valid) else \
        ("accuracy", "accuracy (%)", 100.0)
    scored = [v for v in history.valid if key in v]
    if scored:
        ax2 = ax.twinx()
        ax2.plot([v["step"] for v in scored], [scale * v[key] for v in scored], "s--", color="#238b45",
                 label=f"valid {name}")
        ax2.set_ylabel(name)
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.set_title(title or "training")
    return _save(plt, fig, path)


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
    return _save(plt, fig, path)


# -- self-attention over vector sets: image patches, speech frames, graph nodes -----------------------
def _check_square(weights, n: int, what: str) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n, n):
        raise ValueError(f"weights must be [{n}, {n}] ({what}), got shape {w.shape}")
    return w


def plot_patch_attention(image: np.ndarray, weights: np.ndarray, patch_size: int, path: str,
                         title: Optional[str] = None) -> str:
    """An image beside the attention its patches receive: ``weights`` [n_patches, n_patches]
    (row = query patch, e.g. ``Encoder.attention`` averaged over heads) is averaged over the
    queries and drawn on the patch grid."""
    plt = _pyplot()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {img.shape}")
    gh, gw = img.shape[0] // patch_size, img.shape[1] // patch_size
    w = _check_square(weights, gh * gw, f"{gh}x{gw} patches of {patch_size}x{patch_size}")
    received = w.mean(axis=0).reshape(gh, gw)
    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3.5), dpi=110)
    a.imshow(img if img.ndim == 3 else img, cmap=None if img.ndim == 3 else "gray_r")
    a.set_title("input", fontsize=9)
    b.imshow(img if img.ndim == 2 else img.mean(axis=2), cmap="gray_r", alpha=0.35)
    im = b.imshow(np.kron(received, np.ones((patch_size, patch_size))), cmap="magma", alpha=0.65)
    b.set_title("attention received per patch", fontsize=9)
    for ax in (a, b):
        ax.set_xticks(np.arange(-0.5, img.shape[1], patch_size), minor=False)
        ax.set_yticks(np.arange(-0.5, img.shape[0], patch_size), minor=False)
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.grid(color="white", alpha=0.4, linewidth=0.5)
    fig.colorbar(im, ax=b, fraction=0.046)
    fig.suptitle(title or "self-attention over image patches", fontsize=10)
    return _save(plt, fig, path)


def plot_frame_attention(weights: np.ndarray, path: str, *, window: Optional[int] = None,
                         frame_ms: float = 10.0, title: Optional[str] = None) -> str:
    """Frame-by-frame self-attention [T, T] of a speech-like input (row = query frame); with
    ``window`` the band |i - j| <= window that local attention keeps is outlined."""
    plt = _pyplot()
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"weights must be [frames, frames], got shape {w.shape}")
    t = w.shape[0]
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    extent = (0, t * frame_ms, t * frame_ms, 0)
    im = ax.imshow(w, cmap="viridis", extent=extent, vmin=0.0, vmax=max(1e-9, float(w.max())))
    if window is not None:
        i = np.arange(t + 1) * frame_ms
        for sign in (-1, 1):
            ax.plot(i, np.clip(i + sign * window * frame_ms, 0, t * frame_ms), color="white",
                    linewidth=0.8, linestyle="--")
    ax.set_xlabel("key frame (ms)")
    ax.set_ylabel("query frame (ms)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or ("self-attention over frames" + (f" (window {window})" if window is not None else "")),
                 fontsize=9)
    return _save(plt, fig, path)


def plot_graph_attention(weights: np.ndarray, edges, path: str, *, node_labels: Optional[Sequence] = None,
                         title: Optional[str] = None) -> str:
    """A graph drawn on a circle, each edge as wide and dark as the attention along it
    (``weights`` [n, n], row = attending node; the larger of the two directions), nodes
    coloured by ``node_labels`` when given."""
    plt = _pyplot()
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    n = int(max(e.max() + 1 if e.size else 0, np.asarray(weights).shape[0]))
    w = _check_square(weights, n, f"{n} nodes")
    angle = 2 * np.pi * np.arange(n) / n
    xy = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    top = max(1e-9, float(max((max(w[i, j], w[j, i]) for i, j in e.tolist()), default=0.0)))
    for i, j in e.tolist():
        a = max(w[i, j], w[j, i]) / top
        ax.plot(*xy[[i, j]].T, color="#08306b", alpha=0.15 + 0.85 * a, linewidth=0.5 + 3.5 * a, zorder=1)
    colours = None if node_labels is None else np.asarray(node_labels)
    ax.scatter(xy[:, 0], xy[:, 1], s=140, c=colours if colours is not None else "#fdae6b",
               cmap="tab10" if colours is not None else None, edgecolors="black", zorder=2)
    for k in range(n):
        ax.annotate(str(k), xy[k], ha="center", va="center", fontsize=7, zorder=3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or "self-attention along a graph's edges", fontsize=9)
    return _save(plt, fig, path)
