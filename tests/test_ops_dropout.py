"""dropout.dropout: seeded, inverted (kept values scaled by 1 / (1 - p)), independent of the
thread count and of the row stride. Attention's dropout is in test_ops_attention.py."""
import numpy as np
import pytest

from cyformer._engine import dropout


def test_dropout_is_seeded_inverted_and_thread_independent():
    x = np.ones((300, 200), np.float32)
    a, b, c = x.copy(), x.copy(), x.copy()
    dropout.dropout(a, 0.25, seed=9, n_threads=1)
    dropout.dropout(b, 0.25, seed=9, n_threads=2)
    dropout.dropout(c, 0.25, seed=10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    kept = a != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(a[kept], 1 / 0.75, rtol=1e-6)
    assert abs(a.mean() - 1.0) < 0.02
    # strided rows: the mask depends on (row, column), not on the memory layout
    wide = np.ones((300, 250), np.float32)
    dropout.dropout(wide[:, 50:], 0.25, seed=9)
    np.testing.assert_array_equal(wide[:, 50:], a)
    assert (wide[:, :50] == 1).all()
    with pytest.raises(ValueError, match="probability"):
        dropout.dropout(x, 1.0, seed=0)
