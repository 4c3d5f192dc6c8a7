"""search.topk (beam search's candidate selection): the k largest, best first, ties in index
order, as a stable sort; masked rows; bad k."""
import numpy as np
import pytest

from _shared import f32, make_rng
from cyformer._engine import search


def ref_topk(x, k):
    # stable sort of -x: the k largest, best first, equal values in index order
    idx = np.argsort(-x.astype(np.float64), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx


@pytest.mark.parametrize("rows,n,k", [(1, 1, 1), (3, 50, 8), (4, 1000, 10), (2, 17, 17), (5, 33, 1)])
def test_topk_matches_stable_sort(rows, n, k):
    rng = make_rng("topk", rows, n, k)
    x = f32(np.round(rng.standard_normal((rows, n)) * 3))  # rounded: many ties
    if n > 4:
        x[0, ::3] = -np.inf
    want_v, want_i = ref_topk(x, k)
    for nt in (1, 2):
        got_v, got_i = search.topk(x, k, nt)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_v, want_v)


def test_topk_all_masked_row_still_returns_indices():
    x = np.full((1, 6), -np.inf, np.float32)
    v, i = search.topk(x, 3)
    np.testing.assert_array_equal(i, [[0, 1, 2]])
    assert np.isneginf(v).all()


@pytest.mark.parametrize("k", [0, 7])
def test_topk_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        search.topk(np.zeros((2, 6), np.float32), k)


@pytest.mark.parametrize("rows,segments,seg,k", [(1, 1, 1, 1), (3, 4, 50, 8), (2, 4, 1000, 8), (2, 3, 7, 21),
                                                  (5, 2, 33, 1)])
def test_topk_with_segment_offsets_equals_the_written_sums(rows, segments, seg, k):
    # beam search: each beam's running score added to its segment of log-probabilities
    rng = make_rng("topk-offsets", rows, segments, seg, k)
    x = f32(np.round(rng.standard_normal((rows, segments * seg)) * 3) - 0.1)
    off = f32(np.round(rng.standard_normal((rows, segments)) * 2))
    if seg > 4:
        x[0, ::3] = -np.inf
    sums = (x.reshape(rows, segments, seg) + off[:, :, None]).reshape(rows, -1)
    want_v, want_i = ref_topk(sums, k)
    for nt in (1, 2):
        got_v, got_i = search.topk(x, k, nt, offsets=off)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_v, want_v)


@pytest.mark.parametrize("shape", [(2, 4), (3, 3), (2, 0)])
def test_topk_bad_offsets(shape):
    with pytest.raises(ValueError, match="offsets must be"):
        search.topk(np.zeros((2, 6), np.float32), 2, offsets=np.zeros(shape, np.float32))
