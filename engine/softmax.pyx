# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Row-wise softmax and log-softmax over [N, V] (vocabulary distributions), in place."""
from cython.parallel cimport prange

cdef extern from "omp_compat.h" nogil:
    int cyf_row_team(int n_threads, long rows, long row_len)


cdef extern from "softmax.h" nogil:
    void cyf_softmax_row(float* x, int n, int log)


def softmax_forward(float[:, ::1] x, bint log=False, int n_threads=1):
    """x[N, V] <- softmax(x) (or log_softmax with ``log=True``) along V."""
    cdef int n = x.shape[0], v = x.shape[1], i
    if n == 0 or v == 0:
        return
    cdef float* xp = &x[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, v), schedule='static'):
            cyf_softmax_row(xp + <long>i * v, v, log)
