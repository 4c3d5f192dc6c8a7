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


@pytest.mark.parametrize("rows,segments,seg,k", [(1, 1, 1, 1), (3, 4, 50, 8), (2, 4, 1000, 8), (2, 3, 7, 21),
                                                  (5, 2, 33, 1), (1, 4, 32000, 8), (2, 1, 17, 1)])
@pytest.mark.parametrize("banned", [(), (0,), (0, -1)], ids=["none", "first", "first_last"])
def test_fused_log_softmax_topk_equals_log_softmax_mask_then_topk(rows, segments, seg, k, banned):
    # beam search and greedy: log-softmax per segment, masked tokens -inf, running scores added,
    # in one pass: the same values and indices as the three steps written out (bitwise)
    from cyformer._engine.softmax import softmax_forward

    rng = make_rng("topk-log", rows, segments, seg, k, len(banned))
    banned = sorted({b % seg for b in banned})
    x = f32(rng.standard_normal((rows * segments, seg)) * 3)
    x[::2] = np.round(x[::2])              # ties
    x[-1, :] = -np.inf                     # a segment with no finite entry
    off = f32(np.round(rng.standard_normal((rows, segments)) * 2))
    logp = x.copy()
    softmax_forward(logp, log=True, n_threads=1)
    logp[:, banned] = -np.inf
    want_v, want_i = search.topk(logp.reshape(rows, -1), k, 1, offsets=off)
    ref_v, ref_i = ref_topk((logp.reshape(rows, segments, seg) + off[:, :, None]).reshape(rows, -1), k)
    np.testing.assert_array_equal(want_i, ref_i)
    before = x.copy()
    for nt in (1, 2):
        got_v, got_i = search.topk(x.reshape(rows, -1), k, nt, offsets=off, log_softmax=True, banned=banned)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(x, before)   # the logits are read, not written
    if segments == 1:   # without offsets: the whole row is one segment (greedy's argmax)
        got_v, got_i = search.topk(x, min(k, seg), 1, log_softmax=True, banned=banned)
        want_v, want_i = search.topk(logp, min(k, seg), 1)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_v, want_v)


def test_fused_topk_bad_banned():
    x = np.zeros((2, 6), np.float32)
    with pytest.raises(ValueError, match="banned is for log_softmax"):
        search.topk(x, 2, banned=[1])
    for bad in ([3], [-1], [0, 5]):   # segments of 3 columns
        with pytest.raises(ValueError, match=r"banned columns must be in \[0, 3\)"):
            search.topk(x, 2, offsets=np.zeros((2, 2), np.float32), log_softmax=True, banned=bad)
