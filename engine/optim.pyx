# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Optimizer updates over the flat parameter and gradient buffers: one loop over one array.

The updates follow PyTorch's ``torch.optim.Adam`` / ``AdamW`` / ``SGD`` (single-tensor
form) operation by operation, in float32, so a step here and a step there agree to float
rounding. ``sum_squares`` (for clipping by global norm) adds fixed 64k-element chunks in
double precision and then the chunks in order, so the norm does not depend on the thread
count.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt, pow

import numpy as np

cdef Py_ssize_t _CHUNK = 1 << 16


cdef inline void _check(str name, const float[::1] a, Py_ssize_t n) except *:
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, expected {n} (like params)")


def adam_update(float[::1] params, const float[::1] grads, float[::1] exp_avg, float[::1] exp_avg_sq,
                int step, float lr, float beta1=0.9, float beta2=0.999, float eps=1e-8,
                float weight_decay=0.0, bint decoupled=False, int n_threads=1):
    """One Adam step (``decoupled=True``: AdamW) on every entry; ``step`` counts from 1.

    Adam's weight decay is L2 (added to the gradient); AdamW's shrinks the weights by
    ``lr * weight_decay`` before the update.
    """
    cdef Py_ssize_t n = params.shape[0], i
    _check("grads", grads, n)
    _check("exp_avg", exp_avg, n)
    _check("exp_avg_sq", exp_avg_sq, n)
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got ({beta1}, {beta2})")
    if n == 0:
        return
    cdef float bc1 = <float>(1.0 - pow(<double>beta1, step))
    cdef float bc2 = <float>(1.0 - pow(<double>beta2, step))
    cdef float step_size = lr / bc1
    cdef float bc2_sqrt = <float>sqrt(<double>bc2)
    cdef float shrink = 1.0 - lr * weight_decay
    cdef float g, m, v
    with nogil:
        for i in prange(n, num_threads=max(1, n_threads), schedule='static'):
            g = grads[i]
            if weight_decay != 0.0:
                if decoupled:
                    params[i] = params[i] * shrink
                else:
                    g = g + weight_decay * params[i]
            m = exp_avg[i]
            m = m + (1.0 - beta1) * (g - m)
            v = exp_avg_sq[i] * beta2 + (1.0 - beta2) * g * g
            exp_avg[i] = m
            exp_avg_sq[i] = v
            params[i] = params[i] - step_size * (m / (<float>sqrt(v) / bc2_sqrt + eps))


def sgd_update(float[::1] params, const float[::1] grads, momentum_buffer, float lr,
               float momentum=0.0, float dampening=0.0, float weight_decay=0.0, bint nesterov=False,
               bint first_step=False, int n_threads=1):
    """One SGD step; with ``momentum`` > 0, ``momentum_buffer`` [n] carries the velocity
    (initialised to the gradient on ``first_step``, as PyTorch does)."""
    cdef Py_ssize_t n = params.shape[0], i
    cdef float[::1] buf
    cdef bint use_momentum = momentum != 0.0
    cdef float g, b
    _check("grads", grads, n)
    if use_momentum:
        if momentum_buffer is None:
            raise ValueError("momentum needs a momentum_buffer")
        buf = momentum_buffer
        _check("momentum_buffer", buf, n)
    if n == 0:
        return
    with nogil:
        for i in prange(n, num_threads=max(1, n_threads), schedule='static'):
            g = grads[i]
            if weight_decay != 0.0:
                g = g + weight_decay * params[i]
            if use_momentum:
                if first_step:
                    b = g
                else:
                    b = momentum * buf[i] + (1.0 - dampening) * g
                buf[i] = b
                if nesterov:
                    g = g + momentum * b
                else:
                    g = b
            params[i] = params[i] - lr * g


def sum_squares(const float[::1] x, int n_threads=1):
    """sum(x**2) in double precision, independent of the thread count."""
    cdef Py_ssize_t n = x.shape[0], c, i, n_chunks = (n + _CHUNK - 1) // _CHUNK
    partial = np.zeros(max(n_chunks, 1), dtype=np.float64)
    cdef double[::1] pv = partial
    cdef double acc
    if n == 0:
        return 0.0
    with nogil:
        for c in prange(n_chunks, num_threads=max(1, n_threads), schedule='static'):
            acc = 0.0
            for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
                acc = acc + <double>x[i] * x[i]
            pv[c] = acc
    acc = 0.0
    for c in range(n_chunks):
        acc += pv[c]
    return acc


def scale(float[::1] x, float alpha, int n_threads=1):
    """x *= alpha in place."""
    cdef Py_ssize_t n = x.shape[0], i
    with nogil:
        for i in prange(n, num_threads=max(1, n_threads), schedule='static'):
            x[i] = x[i] * alpha
