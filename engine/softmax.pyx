# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Row-wise softmax and log-softmax over [N, V] (vocabulary distributions), in place."""
from cython.parallel cimport prange
from libc.math cimport INFINITY

cdef extern from "omp_compat.h" nogil:
    int cyf_row_team(int n_threads, long rows, long row_len)


cdef extern from "softmax.h" nogil:
    void cyf_softmax_row(float* x, int n, int log)
    int cyf_log_stats(const float* x, int n, float* m, float* ls)

import numpy as np


def softmax_forward(float[:, ::1] x, bint log=False, int n_threads=1):
    """x[N, V] <- softmax(x) (or log_softmax with ``log=True``) along V."""
    cdef int n = x.shape[0], v = x.shape[1], i
    if n == 0 or v == 0:
        return
    cdef float* xp = &x[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, v), schedule='static'):
            cyf_softmax_row(xp + <long>i * v, v, log)


def log_softmax_stats(const float[:, ::1] x, int n_threads=1):
    """(m [N], ls [N]) float32 of x[N, V]'s rows, such that log_softmax(x)[i, j] is
    ``(x[i, j] - m[i]) - ls[i]`` bit for bit as ``softmax_forward(log=True)`` writes it
    (m = 0, ls = inf for a row with no finite entry, whose log-softmax is all -inf). x is
    not written: greedy decoding takes the argmax of the logits and scores only its pick."""
    cdef int n = x.shape[0], v = x.shape[1], i
    m_arr = np.zeros(n, dtype=np.float32)
    ls_arr = np.full(n, np.inf, dtype=np.float32)
    cdef float[::1] m = m_arr
    cdef float[::1] ls = ls_arr
    if n == 0 or v == 0:
        return m_arr, ls_arr
    cdef const float* xp = &x[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, v), schedule='static'):
            if not cyf_log_stats(xp + <long>i * v, v, &m[i], &ls[i]):
                m[i] = 0.0
                ls[i] = INFINITY
    return m_arr, ls_arr
