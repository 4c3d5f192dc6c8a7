# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Beam-search bookkeeping that would be slow in NumPy: top-k over long score rows.

``topk(scores, k)`` returns, per row of ``scores`` [R, N], the ``k`` largest values and
their column indices, best first; equal values keep the lower index first (so results
are deterministic and match a stable sort). It scans each row once, skipping 16-value
chunks whose maximum cannot enter the current top k, and allocates only its outputs.
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.math cimport INFINITY

import numpy as np


cdef extern from "softmax.h" nogil:
    int cyf_log_stats_ahead(const float* x, int n, float* m, float* ls, const float* ahead)


cdef extern from "topk.h" nogil:
    void cyf_topk_scan(const float* row, long base, long seg, int k, float* val, int64_t* idx,
                       int* filled, float m, float ls, float o, const int32_t* banned, int n_banned)


cdef void _topk_row(const float* row, long n, int k, float* val, int64_t* idx, const float* offset,
                    long seg, bint log_softmax, const int32_t* banned, int n_banned) noexcept nogil:
    # Entry j of segment s = j // seg counts as ((row[j] - m_s) - ls_s) + offset[s], -inf at the
    # banned columns of every segment (topk.h): with log_softmax, m_s and ls_s are segment s's
    # log-softmax statistics (cyf_log_stats, the arithmetic of softmax_forward(log=True)), so
    # the values are the written log-softmax plus the offset; without, m_s = ls_s = 0 and the
    # value is row[j] + offset[s] (one float addition, as NumPy's: x - 0 is x exactly).
    cdef long c, s0
    cdef int filled = 0
    cdef float m = 0.0, ls = 0.0, o = 0.0
    for c in range(k):
        val[c] = -INFINITY
        idx[c] = -1
    for s0 in range(n // seg):
        # the next segment (or the next row's first: rows are processed in order) is fetched
        # into L2 while this one's exps run
        if log_softmax and not cyf_log_stats_ahead(row + s0 * seg, <int>seg, &m, &ls, row + (s0 + 1) * seg):
            m = 0.0
            ls = INFINITY   # no finite entry: every value -inf, as the log-softmax writes
        if offset != NULL:
            o = offset[s0]
        cyf_topk_scan(row, s0 * seg, seg, k, val, idx, &filled, m, ls, o, banned, n_banned)


def topk(const float[:, ::1] scores, int k, int n_threads=1, offsets=None, bint log_softmax=False,
         banned=None):
    """(values [R, k] float32, indices [R, k] int64) of each row's k largest, best first.

    ``offsets`` [R, S] (float32): row r is S segments of N / S entries, and entry j of
    segment s counts as scores[r, j] + offsets[r, s] (beam search: the beams' running
    scores added to their log-probabilities without writing the sums).

    ``log_softmax=True``: each segment (the whole row without ``offsets``) first becomes
    its log-softmax, exactly as ``softmax_forward(log=True)`` writes it, and ``banned``
    (column indices within a segment) then -inf, without writing anything: beam search's
    log-softmax, masking and selection in one pass over the logits. ``scores`` is not
    modified."""
    cdef Py_ssize_t rows = scores.shape[0], n = scores.shape[1], r
    cdef const float[:, ::1] ov
    cdef const float* op = NULL
    cdef long seg = n, ldo = 0   # without offsets the row is one segment
    cdef int32_t[::1] bv
    cdef const int32_t* bp = NULL
    cdef int n_banned = 0
    if k < 1 or k > n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if banned is not None and not log_softmax:
        raise ValueError("banned is for log_softmax=True")
    if offsets is not None:
        ov = offsets
        if ov.shape[0] != rows or ov.shape[1] < 1 or n % ov.shape[1]:
            raise ValueError(f"offsets must be [{rows}, S] with S dividing {n}, got "
                             f"[{ov.shape[0]}, {ov.shape[1]}]")
        seg = n // ov.shape[1]
        ldo = ov.shape[1]
        if rows:
            op = &ov[0, 0]
    if log_softmax:
        if seg > 2147483647:
            raise ValueError("log_softmax segments must have fewer than 2**31 entries")
        bv = np.ascontiguousarray(np.asarray(banned if banned is not None else (), dtype=np.int64)
                                  .reshape(-1)).astype(np.int32)
        n_banned = bv.shape[0]
        if n_banned:
            if min(bv) < 0 or max(bv) >= seg:
                raise ValueError(f"banned columns must be in [0, {seg})")
            bp = &bv[0]
    values = np.empty((rows, k), dtype=np.float32)
    indices = np.empty((rows, k), dtype=np.int64)
    cdef float[:, ::1] vv = values
    cdef int64_t[:, ::1] iv = indices
    if rows == 0:
        return values, indices
    with nogil:
        for r in prange(rows, num_threads=max(1, n_threads), schedule='static'):
            _topk_row(&scores[r, 0], n, k, &vv[r, 0], &iv[r, 0], op + r * ldo if op != NULL else NULL, seg,
                      log_softmax, bp, n_banned)
    return values, indices
