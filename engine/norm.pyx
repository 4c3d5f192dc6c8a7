# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""LayerNorm over the last axis, with the residual add fused in.

``layer_norm_forward(x, residual, gamma, beta, out)``: when ``residual`` is given,
``x += residual (+ bias)`` first (so ``x`` carries the residual stream on), then
``out = (x - mean) * rstd * gamma + beta``. ``out`` may be ``x`` itself: post-LN is
``x = LN(x + sublayer(x))`` in one pass, pre-LN is ``x += sublayer; y = LN(x)``.
``mean`` and ``rstd`` ([N]) are saved when given, for the backward pass, and
``layer_norm_backward`` turns the output's gradient into the input's, gamma's and beta's.
"""
from cython.parallel cimport prange
from _common cimport CYFORMER_HAVE_OPENMP

cdef extern from "omp_compat.h" nogil:
    int cyf_row_team(int n_threads, long rows, long row_len)


cdef extern from "layer_norm.h" nogil:
    void cyf_layer_norm_row(float* x, const float* r, const float* bias, const float* gamma,
                            const float* beta, float* out, int d, float eps, float* mean_out,
                            float* rstd_out)
    void cyf_layer_norm_backward_row(const float* x, const float* dy, const float* gamma, float mean,
                                     float rstd, float* dx, int d, int accumulate)
    void cyf_layer_norm_param_grads(const float* x, const float* dy, const float* mean, const float* rstd,
                                    float* dgamma, float* dbeta, long n, int d, int c0, int c1)


def layer_norm_forward(float[:, ::1] x, residual, const float[::1] gamma, const float[::1] beta,
                       float[:, ::1] out, float eps=1e-5, mean=None, rstd=None, int n_threads=1,
                       bias=None):
    """x: [N, d] (updated to x + residual + bias), residual: [N, d] or None, bias: [d] or None."""
    cdef int n = x.shape[0], d = x.shape[1], i
    cdef const float[:, ::1] r
    cdef float[::1] mean_v, rstd_v
    cdef const float* rp = NULL
    cdef const float[::1] bv
    cdef const float* bp = NULL
    cdef float* mp = NULL
    cdef float* sp = NULL
    if gamma.shape[0] != d or beta.shape[0] != d:
        raise ValueError(f"gamma and beta must have {d} entries")
    if out.shape[0] != n or out.shape[1] != d:
        raise ValueError("out must have x's shape")
    if residual is not None:
        r = residual
        if r.shape[0] != n or r.shape[1] != d:
            raise ValueError("residual must have x's shape")
        if n:
            rp = &r[0, 0]
    if bias is not None:
        bv = bias
        if bv.shape[0] != d:
            raise ValueError(f"bias must have {d} entries")
        if d:
            bp = &bv[0]
    if (mean is None) != (rstd is None):
        raise ValueError("give both mean and rstd, or neither")
    if mean is not None:
        mean_v = mean
        rstd_v = rstd
        if mean_v.shape[0] != n or rstd_v.shape[0] != n:
            raise ValueError(f"mean and rstd must have {n} entries")
        if n:
            mp = &mean_v[0]
            sp = &rstd_v[0]
    if n == 0 or d == 0:
        return
    cdef float* xp = &x[0, 0]
    cdef float* op = &out[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, d), schedule='static'):
            cyf_layer_norm_row(xp + <long>i * d, rp + <long>i * d if rp != NULL else NULL, bp,
                            &gamma[0], &beta[0], op + <long>i * d, d, eps,
                            mp + i if mp != NULL else NULL, sp + i if sp != NULL else NULL)


def layer_norm_backward(const float[:, ::1] x, const float[::1] mean, const float[::1] rstd,
                        const float[::1] gamma, const float[:, ::1] dout, float[:, ::1] dx,
                        float[::1] dgamma, float[::1] dbeta, bint accumulate=False, int n_threads=1):
    """Gradients of ``out = LN(x)`` given ``dout`` [N, d].

    ``x`` is the LayerNorm's input (for a fused residual, the sum ``x + residual + bias``
    that the forward left in ``x``), ``mean``/``rstd`` [N] what the forward saved.
    ``dx`` is overwritten (or added to with ``accumulate``) and may be ``dout`` itself;
    ``dgamma``/``dbeta`` [d] are accumulated into. The residual's gradient is ``dx`` too.
    """
    cdef int n = x.shape[0], d = x.shape[1], i, t, nt, c0, c1
    if gamma.shape[0] != d or dgamma.shape[0] != d or dbeta.shape[0] != d:
        raise ValueError(f"gamma, dgamma and dbeta must have {d} entries")
    if mean.shape[0] != n or rstd.shape[0] != n:
        raise ValueError(f"mean and rstd must have {n} entries")
    for name, a in (("dout", dout), ("dx", dx)):
        if a.shape[0] != n or a.shape[1] != d:
            raise ValueError(f"{name} must have x's shape [{n}, {d}]")
    if n == 0 or d == 0:
        return
    nt = max(1, n_threads) if CYFORMER_HAVE_OPENMP else 1
    cdef const float* xp = &x[0, 0]
    cdef const float* gp = &dout[0, 0]
    cdef float* dxp = &dx[0, 0]
    with nogil:
        # dgamma/dbeta first: dx may overwrite dout. Columns split across threads in
        # multiples of 16, each thread summing its columns over all rows in row order, so
        # the result does not depend on the thread count.
        for t in prange(nt, num_threads=nt, schedule='static'):
            c0 = min(d, ((d + nt - 1) // nt + 15) // 16 * 16 * t)
            c1 = min(d, ((d + nt - 1) // nt + 15) // 16 * 16 * (t + 1))
            if c1 > c0:
                cyf_layer_norm_param_grads(xp, gp, &mean[0], &rstd[0], &dgamma[0], &dbeta[0],
                                           n, d, c0, c1)
        for i in prange(n, num_threads=nt, schedule='static'):
            cyf_layer_norm_backward_row(xp + <long>i * d, gp + <long>i * d, &gamma[0], mean[i], rstd[i],
                                        dxp + <long>i * d, d, accumulate)
