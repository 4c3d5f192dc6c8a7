# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Row-wise softmax and log-softmax over [N, V] (vocabulary distributions), in place."""
from cython.parallel cimport prange
from libc.math cimport expf, logf, INFINITY


cdef void _softmax_row(float* x, int v, bint log) noexcept nogil:
    cdef int j
    cdef float m = -INFINITY
    cdef double s = 0.0
    cdef float lse
    for j in range(v):
        if x[j] > m:
            m = x[j]
    if m == -INFINITY:
        # Every entry is -inf: no mass to distribute; keep -inf (log) / 0 (prob).
        for j in range(v):
            x[j] = -INFINITY if log else 0.0
        return
    if log:
        for j in range(v):
            s = s + expf(x[j] - m)
        # (x - m) - log(s): subtracting m first keeps the precision of large logits.
        lse = <float>logf(<float>s)
        for j in range(v):
            x[j] = (x[j] - m) - lse
    else:
        for j in range(v):
            x[j] = expf(x[j] - m)
            s = s + x[j]
        for j in range(v):
            x[j] = <float>(x[j] / s)


def softmax_forward(float[:, ::1] x, bint log=False, int n_threads=1):
    """x[N, V] <- softmax(x) (or log_softmax with ``log=True``) along V."""
    cdef int n = x.shape[0], v = x.shape[1], i
    if n == 0 or v == 0:
        return
    cdef float* xp = &x[0, 0]
    with nogil:
        for i in prange(n, num_threads=max(1, n_threads), schedule='static'):
            _softmax_row(xp + <long>i * v, v, log)
