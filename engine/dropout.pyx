# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Inverted dropout with a counter-based mask: no mask is stored.

Element (i, j) of a [N, F] array is kept when ``hash(seed, i * F + j + offset)`` clears
the threshold, and scaled by ``1 / (1 - p)``. The mask depends only on (seed, index), so
``dropout(grad, p, seed)`` in the backward pass multiplies the gradient by exactly the mask
the forward pass used, whatever the thread count.
"""
from cython.parallel cimport prange
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "dropout.h" nogil:
    void cyf_dropout_row(float* x, int n, uint64_t seed, uint64_t first, uint32_t threshold,
                         float inv_keep)


def dropout(float[:, :] x, float p, uint64_t seed, uint64_t offset=0, int n_threads=1):
    """x[N, F] <- x * mask / (1 - p) in place (forward and backward alike). Rows may be strided."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef int f = x.shape[1]
    cdef long ld
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0.0 or n == 0 or f == 0:
        return
    if f > 1 and x.strides[1] != sizeof(float):
        raise ValueError("rows of x must be contiguous")
    ld = x.strides[0] // sizeof(float)
    cdef uint32_t threshold = <uint32_t>min(<double>p * 4294967296.0, 4294967295.0)
    cdef float inv_keep = <float>(1.0 / (1.0 - <double>p))
    cdef float* xp = &x[0, 0]
    with nogil:
        for i in prange(n, num_threads=max(1, n_threads), schedule='static'):
            cyf_dropout_row(xp + i * ld, f, seed, offset + <uint64_t>i * f, threshold, inv_keep)
