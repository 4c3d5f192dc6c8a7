"""Built-in tasks on sets of vectors (not words): image patches, speech frames, graph nodes.

Each loader returns a ``VectorTaskData`` whose splits hold one float32 matrix [T_i, F] per
example (the set of vectors self-attention runs over) and its labels: one per example
(``per_position=False``, a sequence head) or one per vector (``per_position=True``, a token
head). Graph examples also carry their edge lists. All of it is generated offline or ships
with a package; nothing is downloaded.

=========  =========================================================  ==========================
task       input vectors                                              label
=========  =========================================================  ==========================
digits     2x2 patches of scikit-learn's bundled 8x8 digits (16 x 4)  the digit (per image)
speech     log-mel frames (25 ms every 10 ms) of a generated melody   per frame: the note's step
           of 4-8 noisy tones                                         from the last (first/up/down)
graph      per node a one-hot colour, a height and noise, random      per node: the colour of its
           connected graphs of 10-30 nodes                            highest neighbour
=========  =========================================================  ==========================

The speech and graph labels need context (the previous note, the neighbours), so a model that
looks at one vector alone is at chance; the graph's needs exactly the edges, the speech one
only a window of frames around each position.

Generation uses NumPy's PCG64 ``Generator`` seeded by ``(task, seed)``: the same data for the
same NumPy version; splits are drawn from separate streams so sizes do not shift each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .features import image_patches, log_mel_spectrogram

__all__ = ["VectorSplit", "VectorTaskData", "VECTOR_TASKS", "load_vector_task", "load_digits",
           "load_speech", "load_graph"]


@dataclass
class VectorSplit:
    """``features[i]`` [T_i, F] float32; ``labels[i]`` an int (per set) or int64 [T_i] (per
    vector); ``edges[i]`` int64 [E_i, 2] for graphs (None otherwise)."""

    features: List[np.ndarray]
    labels: list
    edges: Optional[List[np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(f) for f in self.features], dtype=np.int64)


@dataclass
class VectorTaskData:
    name: str
    n_features: int
    label_names: Tuple[str, ...]
    per_position: bool
    train: VectorSplit
    valid: VectorSplit
    test: VectorSplit
    description: str = ""
    info: dict = field(default_factory=dict)

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    @property
    def max_len(self) -> int:
        return int(max(s.lengths.max() for s in (self.train, self.valid, self.test) if len(s)))

    def __repr__(self) -> str:
        return (f"VectorTaskData({self.name!r}, F={self.n_features}, labels={self.n_labels}, "
                f"train={len(self.train)}, valid={len(self.valid)}, test={len(self.test)})")


def _rng(task: str, seed: int, split: str) -> np.random.Generator:
    key = f"cyformer.vector_tasks/{task}/{seed}/{split}".encode()
    return np.random.default_rng(list(key))


def _check_sizes(**sizes) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")


# -- digits: scikit-learn's 8x8 images as 16 patches -------------------------------------------------
def load_digits(*, patch_size: int = 2, n_valid: int = 180, n_test: int = 360, seed: int = 0) -> VectorTaskData:
    """The 1797 8x8 digit images bundled with scikit-learn (no download), each as
    (8/p)^2 patch vectors of p*p pixels scaled to [0, 1]; a seeded split."""
    _check_sizes(n_valid=n_valid, n_test=n_test, seed=seed)
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError:
        raise ImportError("the digits task reads scikit-learn's bundled images: "
                          "pip install scikit-learn") from None
    d = _sk_digits()
    images, target = d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)
    if n_valid + n_test >= len(images):
        raise ValueError(f"n_valid + n_test must leave training images (there are {len(images)})")
    patches = image_patches(images, patch_size)
    order = _rng("digits", seed, "split").permutation(len(images))
    test, valid, train = (order[:n_test], order[n_test:n_test + n_valid], order[n_test + n_valid:])

    def split(idx) -> VectorSplit:
        return VectorSplit([patches[i] for i in idx], [int(target[i]) for i in idx])

    return VectorTaskData("digits", patches.shape[2], tuple(str(i) for i in range(10)), False,
                          split(train), split(valid), split(test),
                          description=f"8x8 digits as {patches.shape[1]} patches of {patch_size}x{patch_size}")


# -- speech: melodies of noisy tones, labelled per frame -------------------------------------------
SPEECH_LABELS = ("first", "up", "down")
_PITCHES = 220.0 * 2.0 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12.0)   # a pentatonic run, 220-554 Hz


def _melody(rng: np.random.Generator, sample_rate: int, n_mels: int) -> Tuple[np.ndarray, np.ndarray]:
    n_notes = int(rng.integers(4, 9))
    notes = [int(rng.integers(len(_PITCHES)))]
    while len(notes) < n_notes:
        p = int(rng.integers(len(_PITCHES)))
        if p != notes[-1]:
            notes.append(p)
    durations = rng.integers(int(0.06 * sample_rate), int(0.2 * sample_rate), size=n_notes)
    pieces, note_of_sample = [], []
    for i, (p, n) in enumerate(zip(notes, durations)):
        t = np.arange(n) / sample_rate
        f = _PITCHES[p] * (1.0 + 0.01 * rng.standard_normal())          # slightly out of tune
        envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)        # 10 ms attack and release
        pieces.append(rng.uniform(0.3, 1.0) * envelope * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)))
        note_of_sample.append(np.full(n, i))
    wave = np.concatenate(pieces)
    wave = wave + 0.1 * rng.standard_normal(wave.size)
    owner = np.concatenate(note_of_sample)
    frames = log_mel_spectrogram(wave, sample_rate, n_mels=n_mels)
    hop, frame = int(round(0.01 * sample_rate)), int(round(0.025 * sample_rate))
    centre = owner[np.arange(len(frames)) * hop + frame // 2]          # the note under each frame's centre
    step = np.where(np.arange(n_notes) == 0, 0,
                    np.where(np.array(notes) > np.roll(notes, 1), 1, 2))
    return frames, step[centre].astype(np.int64)


def _standardise(splits: List[VectorSplit]) -> None:
    """Scale features by the training split's per-feature mean and deviation (in place)."""
    train = np.concatenate(splits[0].features)
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    for s in splits:
        s.features = [((f - mean) / std).astype(np.float32) for f in s.features]


def load_speech(*, n_train: int = 2000, n_valid: int = 200, n_test: int = 200, sample_rate: int = 8000,
                n_mels: int = 24, seed: int = 0) -> VectorTaskData:
    """Generated melodies of 4-8 noisy tones (60-200 ms each), as log-mel frames; each frame is
    labelled first / up / down: its note's pitch against the previous note's."""
    _check_sizes(n_train=n_train, n_valid=n_valid, n_test=n_test, seed=seed)
    splits = []
    for name, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        rng = _rng("speech", seed, name)
        pairs = [_melody(rng, sample_rate, n_mels) for _ in range(n)]
        splits.append(VectorSplit([p[0] for p in pairs], [p[1] for p in pairs]))
    _standardise(splits)
    return VectorTaskData("speech", n_mels, SPEECH_LABELS, True, *splits,
                          description="melodies of noisy tones, log-mel frames labelled by pitch step",
                          info={"sample_rate": sample_rate, "frame_ms": 25.0, "hop_ms": 10.0})


# -- graph: node labels from the neighbours' colours -------------------------------------------------
GRAPH_COLOURS = ("red", "green", "blue", "yellow")


def _graph(rng: np.random.Generator, noise_dims: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = int(rng.integers(10, 31))
    # a random spanning tree (every node has a neighbour) plus about n/2 extra edges
    edges = {(int(rng.integers(i)), i) for i in range(1, n)}
    for _ in range(n // 2):
        i, j = (int(v) for v in rng.integers(n, size=2))
        if i != j:
            edges.add((min(i, j), max(i, j)))
    e = np.array(sorted(edges), dtype=np.int64)
    colour = rng.integers(len(GRAPH_COLOURS), size=n)
    height = rng.random(n).astype(np.float32)
    # label: the colour of the highest neighbour (not the node itself)
    best = np.full(n, -1.0)
    label = np.zeros(n, dtype=np.int64)
    for i, j in np.concatenate([e, e[:, ::-1]]):
        if height[j] > best[i]:
            best[i], label[i] = height[j], colour[j]
    x = np.concatenate([np.eye(len(GRAPH_COLOURS), dtype=np.float32)[colour], height[:, None],
                        rng.standard_normal((n, noise_dims)).astype(np.float32) * 0.5], axis=1)
    return x, label.astype(np.int64), e


def load_graph(*, n_train: int = 3000, n_valid: int = 300, n_test: int = 300, noise_dims: int = 4,
               seed: int = 0) -> VectorTaskData:
    """Random connected graphs of 10-30 nodes; a node's features are its colour (one-hot), a
    height in [0, 1) and noise; its label is the colour of its highest neighbour (not its own)."""
    _check_sizes(n_train=n_train, n_valid=n_valid, n_test=n_test, noise_dims=noise_dims, seed=seed)
    splits = []
    for name, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        rng = _rng("graph", seed, name)
        g = [_graph(rng, noise_dims) for _ in range(n)]
        splits.append(VectorSplit([x for x, _, _ in g], [y for _, y, _ in g], [e for _, _, e in g]))
    return VectorTaskData("graph", len(GRAPH_COLOURS) + 1 + noise_dims, GRAPH_COLOURS, True, *splits,
                          description="node labels: the colour of the highest neighbour")


VECTOR_TASKS = {"digits": load_digits, "speech": load_speech, "graph": load_graph}


def load_vector_task(name: str, **options) -> VectorTaskData:
    if name not in VECTOR_TASKS:
        raise ValueError(f"unknown vector task {name!r}; known: {', '.join(VECTOR_TASKS)}")
    return VECTOR_TASKS[name](**options)
