"""The attention pictures of vector-set inputs (image patches, speech frames, graph nodes)
are written as PNG files from a model's own attention weights; bad shapes are errors."""
import numpy as np
import pytest

from cyformer import Encoder, EncoderConfig
from cyformer.features import image_patches

pytest.importorskip("matplotlib")
from cyformer import plots  # noqa: E402


def _encoder(n_features, **kw):
    return Encoder(EncoderConfig(vocab_size=1, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=64,
                                 type_vocab_size=0, n_features=n_features, embedding_norm=False, **kw), seed=0)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_patch_frame_and_graph_pictures(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((8, 8))
    patches = image_patches(image[None], 2)[0]
    a = _encoder(4).attention([patches]).mean(axis=1)[0]
    assert _is_png(plots.plot_patch_attention(image, a, 2, str(tmp_path / "patches.png")))
    frames = rng.standard_normal((40, 6)).astype(np.float32)
    a = _encoder(6, attention_window=4).attention([frames]).mean(axis=1)[0]
    assert np.all(a[np.abs(np.subtract.outer(np.arange(40), np.arange(40))) > 4] == 0)
    assert _is_png(plots.plot_frame_attention(a, str(tmp_path / "frames.png"), window=4))
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [1, 3]])
    nodes = rng.standard_normal((4, 3)).astype(np.float32)
    a = _encoder(3, positional="none").attention([nodes], edges=[edges]).mean(axis=1)[0]
    assert a[0, 2] == 0 and a[0, 1] > 0
    assert _is_png(plots.plot_graph_attention(a, edges, str(tmp_path / "graph.png"), node_labels=[0, 1, 1, 2]))


def test_picture_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="16, 16"):
        plots.plot_patch_attention(np.zeros((8, 8)), np.zeros((4, 4)), 2, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="frames"):
        plots.plot_frame_attention(np.zeros((3, 4)), str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="layer"):
        _encoder(3).attention([np.zeros((2, 3), np.float32)], layer=5)
