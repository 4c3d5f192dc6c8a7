# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Beam-search bookkeeping that would be slow in NumPy: top-k over long score rows.

``topk(scores, k)`` returns, per row of ``scores`` [R, N], the ``k`` largest values and
their column indices, best first; equal values keep the lower index first (so results
are deterministic and match a stable sort). It scans each row once, skipping 16-value
chunks whose maximum cannot enter the current top k, and allocates only its outputs.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.math cimport INFINITY

import numpy as np


cdef inline void _insert(float* val, int64_t* idx, int k, float v, int64_t j) noexcept nogil:
    # val[0:k] sorted descending; place v after every entry >= v (ties: earlier index first)
    cdef int p = k - 1
    while p > 0 and val[p - 1] < v:
        val[p] = val[p - 1]
        idx[p] = idx[p - 1]
        p -= 1
    val[p] = v
    idx[p] = j


cdef void _topk_row(const float* row, long n, int k, float* val, int64_t* idx) noexcept nogil:
    cdef long j, c, end
    cdef int filled = 0
    cdef float m, thr
    for c in range(k):
        val[c] = -INFINITY
        idx[c] = -1
    # the first k entries fill the list, so every slot holds a real index even if all are -inf
    for j in range(min(<long>k, n)):
        _insert(val, idx, filled + 1, row[j], j)
        filled += 1
    j = min(<long>k, n)
    while j < n:
        end = min(j + 16, n)
        thr = val[k - 1]
        m = -INFINITY
        for c in range(j, end):
            if row[c] > m:
                m = row[c]
        if m > thr:
            for c in range(j, end):
                if row[c] > val[k - 1]:
                    _insert(val, idx, k, row[c], c)
        j = end


def topk(const float[:, ::1] scores, int k, int n_threads=1):
    """(values [R, k] float32, indices [R, k] int64) of each row's k largest, best first."""
    cdef Py_ssize_t rows = scores.shape[0], n = scores.shape[1], r
    if k < 1 or k > n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    values = np.empty((rows, k), dtype=np.float32)
    indices = np.empty((rows, k), dtype=np.int64)
    cdef float[:, ::1] vv = values
    cdef int64_t[:, ::1] iv = indices
    if rows == 0:
        return values, indices
    with nogil:
        for r in prange(rows, num_threads=max(1, n_threads), schedule='static'):
            _topk_row(&scores[r, 0], n, k, &vv[r, 0], &iv[r, 0])
    return values, indices
