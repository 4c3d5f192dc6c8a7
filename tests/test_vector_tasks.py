"""cyformer.vector_tasks: the built-in image / speech / graph tasks are seeded, shaped as
documented, and their labels mean what the module says."""
import numpy as np
import pytest

from cyformer import vector_tasks as V


def test_digits_patches_and_split():
    pytest.importorskip("sklearn")
    d = V.load_digits()
    assert (d.n_features, d.n_labels, d.per_position) == (4, 10, False)
    assert (len(d.train), len(d.valid), len(d.test)) == (1257, 180, 360)
    assert all(f.shape == (16, 4) and f.dtype == np.float32 for f in d.test.features)
    from sklearn.datasets import load_digits
    images = load_digits().images / 16.0
    # every test image is one of the bundled ones, read patch by patch (top-left patch first)
    first = d.test.features[0]
    hit = np.flatnonzero(np.all(np.isclose(images[:, :2, :2].reshape(-1, 4), first[0]), axis=1)
                         & np.all(np.isclose(images[:, 6:, 6:].reshape(-1, 4), first[15]), axis=1))
    assert hit.size >= 1
    again = V.load_digits()
    np.testing.assert_array_equal(np.stack(again.test.features), np.stack(d.test.features))
    with pytest.raises(ValueError):
        V.load_digits(n_valid=1000, n_test=1000)


def test_speech_frames_and_labels():
    d = V.load_speech(n_train=20, n_valid=5, n_test=5)
    assert d.per_position and d.label_names == ("first", "up", "down") and d.n_features == 24
    for f, y in zip(d.train.features, d.train.labels):
        assert f.ndim == 2 and f.shape[1] == 24 and y.shape == (len(f),)
        assert y[0] == 0 and set(np.unique(y)) <= {0, 1, 2}
        # labels change only at note boundaries: runs of one label, and "first" only at the start
        first = np.flatnonzero(y == 0)
        assert (np.diff(first) == 1).all() and first[0] == 0
    np.testing.assert_array_equal(V.load_speech(n_train=20, n_valid=5, n_test=5).test.features[0],
                                  d.test.features[0])


def test_graph_labels_are_the_highest_neighbours_colour():
    d = V.load_graph(n_train=30, n_valid=3, n_test=3)
    assert d.per_position and d.n_features == 9
    for x, y, e in zip(d.train.features, d.train.labels, d.train.edges):
        n = len(x)
        assert 10 <= n <= 30 and e.min() >= 0 and e.max() < n
        neighbours = {i: set() for i in range(n)}
        for i, j in e.tolist():
            neighbours[i].add(j)
            neighbours[j].add(i)
        for i in range(n):
            assert neighbours[i], "connected: every node has a neighbour"
            top = max(neighbours[i], key=lambda j: x[j, 4])
            assert y[i] == x[top, :4].argmax()


def test_unknown_task_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown vector task"):
        V.load_vector_task("music")
    with pytest.raises(ValueError, match="n_train"):
        V.load_graph(n_train=-1)
