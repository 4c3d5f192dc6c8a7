# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Position-wise feed-forward pieces: bias + activation, fused, in place.

The FFN is ``linear2(act(linear1(x)))``; the GEMMs live in ``linear``. This module
adds the bias of the first projection and applies the activation in one pass over
``[N, d_ff]``. ``ACTIVATIONS`` maps every accepted name (PyTorch's and Hugging Face's,
aliases included) to its kernel code and ``ACTIVATION_NAMES`` lists them, both read from
the one table in ``engine/activation_table.h`` (config.py accepts exactly these names).
"""
from cython.parallel cimport prange

cdef extern from "omp_compat.h" nogil:
    int cyf_row_team(int n_threads, long rows, long row_len)

cdef extern from "activation.h" nogil:
    ctypedef struct cyf_activation_name:
        const char* name
        int code
    const cyf_activation_name* cyf_activation_names
    const int CYF_N_ACTIVATION_NAMES
    enum: CYF_IDENTITY
    int cyf_activation_valid(int code)
    void cyf_bias_act_row(float* row, const float* bias, int n, int code)
    void cyf_act_backward_row(float* dh, const float* pre, int n, int code)
    void cyf_bias_act_save_row(float* pre, const float* bias, float* out, int n, int code)


# Read from the C table (engine/activation_table.h), the one list of names and codes.
ACTIVATIONS = {cyf_activation_names[i].name.decode("ascii"): cyf_activation_names[i].code
               for i in range(CYF_N_ACTIVATION_NAMES)}
ACTIVATION_NAMES = tuple(ACTIVATIONS)


def activation_code(name):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


cdef int _code(act) except -1:
    """An activation's code from its name (or the code itself), checked."""
    cdef int code = activation_code(act) if isinstance(act, str) else act
    if not cyf_activation_valid(code):
        raise ValueError(f"unknown activation code {code}")
    return code


def bias_act_forward(float[:, :] x, bias, act="identity", int n_threads=1):
    """x[N, F] = act(x + bias[F]) in place; bias may be None. Rows may be strided."""
    cdef int n = x.shape[0], f = x.shape[1], i, j
    cdef int code = _code(act)
    cdef const float[::1] b
    cdef const float* bp = NULL
    cdef long ld
    if bias is not None:
        b = bias
        if b.shape[0] != f:
            raise ValueError(f"bias has {b.shape[0]} entries, expected {f}")
        if f:
            bp = &b[0]
    if n == 0 or f == 0 or (bp == NULL and code == CYF_IDENTITY):
        return
    if f > 1 and x.strides[1] != sizeof(float):
        raise ValueError("rows of x must be contiguous")
    ld = x.strides[0] // sizeof(float)
    cdef float* xp = &x[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, f), schedule='static'):
            cyf_bias_act_row(xp + i * ld, bp, f, code)


def bias_act_forward_save(float[:, ::1] pre, bias, act, float[:, ::1] out, int n_threads=1):
    """Training form: ``pre += bias`` (kept for the backward pass), ``out = act(pre)``."""
    cdef int n = pre.shape[0], f = pre.shape[1], i
    cdef int code = _code(act)
    cdef const float[::1] b
    cdef const float* bp = NULL
    if out.shape[0] != n or out.shape[1] != f:
        raise ValueError(f"out must be [{n}, {f}], like pre")
    if bias is not None:
        b = bias
        if b.shape[0] != f:
            raise ValueError(f"bias has {b.shape[0]} entries, expected {f}")
        if f:
            bp = &b[0]
    if n == 0 or f == 0:
        return
    cdef float* pp = &pre[0, 0]
    cdef float* op = &out[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, f), schedule='static'):
            cyf_bias_act_save_row(pp + <long>i * f, bp, op + <long>i * f, f, code)


def act_backward(float[:, ::1] dh, const float[:, ::1] pre, act, int n_threads=1):
    """``dh *= act'(pre)`` in place; ``pre`` is the activation's input (bias included)."""
    cdef int n = dh.shape[0], f = dh.shape[1], i
    cdef int code = _code(act)
    if pre.shape[0] != n or pre.shape[1] != f:
        raise ValueError(f"pre must be [{n}, {f}], like dh")
    if n == 0 or f == 0 or code == CYF_IDENTITY:
        return
    cdef float* dp = &dh[0, 0]
    cdef const float* pp = &pre[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, f), schedule='static'):
            cyf_act_backward_row(dp + <long>i * f, pp + <long>i * f, f, code)
