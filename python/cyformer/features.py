"""Vector sets from raw inputs, NumPy only: speech frames, image patches, graph masks.

The lecture notes' inputs to self-attention are sets of vectors; these helpers make them:

* a waveform -> frames of ``frame_ms`` (25 ms) every ``hop_ms`` (10 ms), and their log-mel or
  log power spectra (``log_mel_spectrogram``, ``log_power_spectrogram``): [n_frames, F];
* images -> flattened non-overlapping patches in reading order (ViT's "16x16 words"):
  [B, n_patches, patch * patch * channels];
* graphs (edge lists or SciPy sparse adjacency) -> the boolean attention mask [B, T, T] where node
  i attends to node j only along an edge (and to itself), the form the attention kernel reads.

Conventions follow the field's tools so features computed elsewhere line up: frames are
Kaldi's ``snip_edges`` framing (no padding; a frame starts every hop and must fit), the window
is a periodic Hann window, the power spectrum is ``|rfft(frame * window, n_fft)|**2`` as
``torch.stft(center=False)`` gives it, and the mel filterbank is torchaudio's
``melscale_fbanks`` with the HTK mel scale and no area normalisation.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["frame_signal", "power_spectrogram", "log_power_spectrogram", "mel_filterbank",
           "log_mel_spectrogram", "image_patches", "adjacency_mask"]


# -- speech ----------------------------------------------------------------------------------------
def _samples(ms: float, sample_rate: int, name: str) -> int:
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0:
        raise ValueError(f"{name} must be a positive number of milliseconds, got {ms!r}")
    n = int(round(ms * sample_rate / 1000.0))
    if n < 1:
        raise ValueError(f"{name}={ms} ms is less than one sample at {sample_rate} Hz")
    return n


def _waveform(waveform) -> np.ndarray:
    w = np.asarray(waveform)
    if w.ndim != 1:
        raise ValueError(f"waveform must be one channel [samples], got shape {w.shape}")
    if w.dtype == np.bool_ or not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise TypeError(f"waveform must hold numbers, got dtype {w.dtype}")
    w = w.astype(np.float64, copy=False)
    if not np.isfinite(w).all():
        raise ValueError("waveform holds NaN or infinite samples")
    return w


def _sample_rate(sample_rate) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def frame_signal(waveform, sample_rate: int, *, frame_ms: float = 25.0, hop_ms: float = 10.0) -> np.ndarray:
    """Frames [n_frames, frame_length] (float64): frame t is samples ``t*hop : t*hop + frame_length``.

    ``n_frames = 1 + (len(waveform) - frame_length) // hop``; a waveform shorter than one frame
    raises ValueError (it has no frame to attend over).
    """
    sr = _sample_rate(sample_rate)
    w = _waveform(waveform)
    frame, hop = _samples(frame_ms, sr, "frame_ms"), _samples(hop_ms, sr, "hop_ms")
    if len(w) < frame:
        raise ValueError(f"waveform of {len(w)} samples is shorter than one {frame_ms} ms frame "
                         f"({frame} samples at {sr} Hz)")
    n = 1 + (len(w) - frame) // hop
    view = np.lib.stride_tricks.as_strided(w, shape=(n, frame), strides=(hop * w.strides[0], w.strides[0]),
                                           writeable=False)
    return view.copy()


def _n_fft(frame: int, n_fft: Optional[int]) -> int:
    if n_fft is None:
        return 1 << max(frame - 1, 1).bit_length()   # the next power of two >= frame
    if isinstance(n_fft, bool) or not isinstance(n_fft, (int, np.integer)) or n_fft < frame:
        raise ValueError(f"n_fft must be an integer >= the frame length ({frame}), got {n_fft!r}")
    return int(n_fft)


def power_spectrogram(waveform, sample_rate: int, *, frame_ms: float = 25.0, hop_ms: float = 10.0,
                      n_fft: Optional[int] = None) -> np.ndarray:
    """|FFT|^2 of Hann-windowed frames: [n_frames, n_fft // 2 + 1] (float64).

    ``n_fft`` defaults to the next power of two of the frame length (512 for 25 ms at 16 kHz).
    """
    frames = frame_signal(waveform, sample_rate, frame_ms=frame_ms, hop_ms=hop_ms)
    length = frames.shape[1]
    n_fft = _n_fft(length, n_fft)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)   # periodic Hann
    spec = np.fft.rfft(frames * window, n=n_fft, axis=1)
    return spec.real ** 2 + spec.imag ** 2


def log_power_spectrogram(waveform, sample_rate: int, *, frame_ms: float = 25.0, hop_ms: float = 10.0,
                          n_fft: Optional[int] = None, eps: float = 1e-10) -> np.ndarray:
    """log(power + eps): [n_frames, n_fft // 2 + 1] float32, the plain spectral features."""
    p = power_spectrogram(waveform, sample_rate, frame_ms=frame_ms, hop_ms=hop_ms, n_fft=n_fft)
    return np.log(p + eps).astype(np.float32)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, *, fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
    """Triangular HTK-mel filters [n_fft // 2 + 1, n_mels] (float64), peak 1 at each centre,
    as torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``."""
    sr = _sample_rate(sample_rate)
    if isinstance(n_mels, bool) or not isinstance(n_mels, (int, np.integer)) or n_mels < 1:
        raise ValueError(f"n_mels must be a positive integer, got {n_mels!r}")
    fmax = sr / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= sr / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2 = {sr / 2}, got fmin={fmin}, fmax={fmax}")
    freqs = np.linspace(0.0, sr // 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    slopes = edges[None, :] - freqs[:, None]                 # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(down, up))


def log_mel_spectrogram(waveform, sample_rate: int, *, n_mels: int = 40, frame_ms: float = 25.0,
                        hop_ms: float = 10.0, n_fft: Optional[int] = None, fmin: float = 0.0,
                        fmax: Optional[float] = None, eps: float = 1e-10) -> np.ndarray:
    """log(mel filterbank energies + eps): [n_frames, n_mels] float32, one vector per 10 ms."""
    p = power_spectrogram(waveform, sample_rate, frame_ms=frame_ms, hop_ms=hop_ms, n_fft=n_fft)
    n_fft = 2 * (p.shape[1] - 1)
    fb = mel_filterbank(n_mels, n_fft, sample_rate, fmin=fmin, fmax=fmax)
    return np.log(p @ fb + eps).astype(np.float32)


# -- images ----------------------------------------------------------------------------------------
def image_patches(images, patch_size: Union[int, Tuple[int, int]]) -> np.ndarray:
    """Non-overlapping patches in reading order, flattened (row, column, channel):
    images [B, H, W] or [B, H, W, C] (channels last) -> [B, (H/ph) * (W/pw), ph * pw * C] float32.

    H and W must be multiples of the patch size (crop or pad first): a partial patch would
    silently drop pixels.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be [B, H, W] or [B, H, W, C], got shape {x.shape}")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"images must hold numbers, got dtype {x.dtype}")
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, (int, np.integer)) else tuple(patch_size)
    for p in (ph, pw):
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
            raise ValueError(f"patch_size must be a positive integer or a pair of them, got {patch_size!r}")
    b, h, w, c = x.shape
    if h % ph or w % pw:
        raise ValueError(f"images of {h}x{w} pixels do not divide into {ph}x{pw} patches")
    x = x.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(x.reshape(b, (h // ph) * (w // pw), ph * pw * c), dtype=np.float32)


# -- graphs ----------------------------------------------------------------------------------------
def _edge_array(edges, n: int, b: int) -> np.ndarray:
    """(sources, targets) of example b's edges as an [E, 2] int64 array, checked against n nodes."""
    try:
        import scipy.sparse as sp
        if sp.issparse(edges):
            if edges.shape != (n, n):
                raise ValueError(f"graph {b}: adjacency of shape {edges.shape}, expected ({n}, {n})")
            coo = edges.tocoo()
            keep = coo.data != 0
            return np.stack([coo.row[keep], coo.col[keep]], axis=1).astype(np.int64)
    except ImportError:   # pragma: no cover - scipy is a dependency
        pass
    e = np.asarray(edges)
    if e.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if e.ndim != 2 or e.shape[1] != 2:
        raise ValueError(f"graph {b}: edges must be pairs (i, j), shape [E, 2], got shape {e.shape}")
    if e.dtype == np.bool_ or not np.issubdtype(e.dtype, np.integer):
        raise TypeError(f"graph {b}: edges must be integer node indices, got dtype {e.dtype}")
    if e.min() < 0 or e.max() >= n:
        bad = e.min() if e.min() < 0 else e.max()
        raise ValueError(f"graph {b}: edge endpoint {bad} is outside its {n} nodes")
    return e.astype(np.int64)


def adjacency_mask(edges: Sequence, n_nodes: Sequence[int], *, directed: bool = False,
                   self_loops: bool = True, max_nodes: Optional[int] = None) -> np.ndarray:
    """The attention mask of a batch of graphs: uint8 [B, T, T], ``mask[b, i, j] = 1`` when node i
    of graph b may attend to node j: an edge (i, j) (both ways unless ``directed``) or i == j
    (``self_loops``). ``edges[b]`` is an [E, 2] list/array of node pairs or an [n, n] SciPy sparse
    adjacency; ``n_nodes[b]`` its node count; T is ``max(n_nodes)`` (or ``max_nodes``).
    Rows and columns past a graph's nodes stay 0 (the kernel also bounds them by length).
    """
    counts = [int(n) for n in n_nodes]
    if len(edges) != len(counts):
        raise ValueError(f"{len(edges)} edge lists for {len(counts)} graphs")
    if any(n < 1 for n in counts):
        raise ValueError("every graph needs at least one node")
    t = max(counts, default=0) if max_nodes is None else int(max_nodes)
    if counts and max(counts) > t:
        raise ValueError(f"a graph has {max(counts)} nodes, more than max_nodes={t}")
    mask = np.zeros((len(counts), t, t), dtype=np.uint8)
    for b, (e, n) in enumerate(zip(edges, counts)):
        pairs = _edge_array(e, n, b)
        mask[b, pairs[:, 0], pairs[:, 1]] = 1
        if not directed:
            mask[b, pairs[:, 1], pairs[:, 0]] = 1
        if self_loops:
            idx = np.arange(n)
            mask[b, idx, idx] = 1
    return mask
