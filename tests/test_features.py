"""cyformer.features: frames, spectra and mel filters against torch.stft and direct loops;
image patches against torch's unfold; graph masks from edge lists and sparse adjacency."""
import numpy as np
import pytest
import scipy.sparse as sp

from cyformer import features as F


def _tone(sr=16000, seconds=0.3, hz=440.0, seed=0):
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    return np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(t.size)


def test_frames_are_25ms_every_10ms():
    w = np.arange(16000 * 0.1)                      # 1600 samples at 16 kHz
    fr = F.frame_signal(w, 16000)
    assert fr.shape == (1 + (1600 - 400) // 160, 400)
    for t in (0, 3, fr.shape[0] - 1):
        np.testing.assert_array_equal(fr[t], w[t * 160:t * 160 + 400])


def test_power_spectrogram_matches_torch_stft():
    torch = pytest.importorskip("torch")
    w = _tone()
    p = F.power_spectrogram(w, 16000, n_fft=400)
    ref = torch.stft(torch.from_numpy(w), n_fft=400, hop_length=160, win_length=400,
                     window=torch.hann_window(400, periodic=True, dtype=torch.float64), center=False,
                     return_complex=True).abs().pow(2).T.numpy()
    assert p.shape == ref.shape
    np.testing.assert_allclose(p, ref, rtol=1e-9, atol=1e-9)
    # the default n_fft (512 for 400 samples) zero-pads each windowed frame at its end, as Kaldi does
    padded = F.power_spectrogram(w, 16000)
    frames = F.frame_signal(w, 16000) * torch.hann_window(400, periodic=True, dtype=torch.float64).numpy()
    np.testing.assert_allclose(padded, np.abs(np.fft.fft(frames, 512, axis=1)[:, :257]) ** 2, rtol=1e-9, atol=1e-9)


def test_mel_filterbank_triangles_and_partition_of_unity():
    fb = F.mel_filterbank(40, 512, 16000)
    assert fb.shape == (257, 40) and (fb >= 0).all() and fb.max() <= 1.0 + 1e-12
    freqs = np.linspace(0, 8000, 257)
    centres = F._mel_to_hz(np.linspace(0, F._hz_to_mel(8000), 42))[1:-1]
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    # overlapping triangles whose feet are the neighbours' centres sum to one between the outer centres
    np.testing.assert_allclose(fb[inside].sum(axis=1), 1.0, atol=1e-12)
    # each filter's largest response is at the bin nearest its centre
    assert (np.abs(freqs[fb.argmax(axis=0)] - centres) <= 8000 / 256).all()


def test_log_mel_finds_the_tone():
    mel = F.log_mel_spectrogram(_tone(hz=1000.0), 16000, n_mels=40)
    assert mel.dtype == np.float32 and mel.shape[1] == 40
    centres = F._mel_to_hz(np.linspace(0, F._hz_to_mel(8000), 42))[1:-1]
    assert abs(centres[np.bincount(mel.argmax(axis=1)).argmax()] - 1000.0) < 100.0
    spec = F.log_power_spectrogram(_tone(), 16000)
    assert spec.shape[1] == 257 and np.isfinite(spec).all()


@pytest.mark.parametrize("bad, error", [
    (np.zeros(100), ValueError),                    # shorter than one frame
    (np.zeros((2, 1000)), ValueError),              # two channels
    (np.array(["a"] * 1000), TypeError),
    (np.full(1000, np.nan), ValueError),
])
def test_frames_bad_input(bad, error):
    with pytest.raises(error):
        F.frame_signal(bad, 16000)


def test_frames_bad_settings():
    with pytest.raises(ValueError, match="sample_rate"):
        F.frame_signal(np.zeros(1000), 0)
    with pytest.raises(ValueError, match="hop_ms"):
        F.frame_signal(np.zeros(1000), 16000, hop_ms=-1)
    with pytest.raises(ValueError, match="n_fft"):
        F.power_spectrogram(np.zeros(1000), 16000, n_fft=128)
    with pytest.raises(ValueError, match="fmax"):
        F.mel_filterbank(40, 512, 16000, fmax=9000)


def test_image_patches_match_torch_unfold():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8, 12, 2)).astype(np.float32)
    p = F.image_patches(x, 4)
    assert p.shape == (3, 2 * 3, 4 * 4 * 2)
    unf = torch.nn.functional.unfold(torch.from_numpy(x).permute(0, 3, 1, 2), 4, stride=4)  # [B, C*16, L]
    ref = unf.reshape(3, 2, 4, 4, 6).permute(0, 4, 2, 3, 1).reshape(3, 6, 32).numpy()
    np.testing.assert_array_equal(p, ref)
    gray = F.image_patches(x[..., 0], (4, 6))
    assert gray.shape == (3, 4, 24)
    np.testing.assert_array_equal(gray[0, 1], x[0, 0:4, 6:12, 0].ravel())


def test_image_patches_bad_input():
    with pytest.raises(ValueError, match="divide"):
        F.image_patches(np.zeros((1, 8, 8)), 3)
    with pytest.raises(ValueError, match="images must be"):
        F.image_patches(np.zeros((8, 8)), 4)
    with pytest.raises(ValueError, match="patch_size"):
        F.image_patches(np.zeros((1, 8, 8)), 0)


def test_adjacency_mask_from_edges_and_sparse():
    edges = [[(0, 1), (1, 2)], np.array([[0, 2]])]
    m = F.adjacency_mask(edges, [3, 4])
    assert m.shape == (2, 4, 4) and m.dtype == np.uint8
    expect0 = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(m[0, :3, :3], expect0)
    assert m[0, 3].sum() == 0 and m[0, :, 3].sum() == 0      # past the graph's nodes
    np.testing.assert_array_equal(m[1], [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
    directed = F.adjacency_mask([[(0, 1)]], [2], directed=True, self_loops=False)
    np.testing.assert_array_equal(directed[0], [[0, 1], [0, 0]])
    adj = sp.csr_matrix(expect0 - np.eye(3, dtype=int))
    np.testing.assert_array_equal(F.adjacency_mask([adj], [3])[0], expect0)
    assert F.adjacency_mask([[]], [2], max_nodes=5).shape == (1, 5, 5)


def test_adjacency_mask_bad_input():
    with pytest.raises(ValueError, match="outside its 3 nodes"):
        F.adjacency_mask([[(0, 3)]], [3])
    with pytest.raises(ValueError, match="shape"):
        F.adjacency_mask([[(0, 1, 2)]], [3])
    with pytest.raises(ValueError, match="2 edge lists for 1"):
        F.adjacency_mask([[], []], [3])
    with pytest.raises(ValueError, match="adjacency of shape"):
        F.adjacency_mask([sp.eye(2)], [3])
    with pytest.raises(TypeError):
        F.adjacency_mask([np.array([[0.5, 1.0]])], [3])
