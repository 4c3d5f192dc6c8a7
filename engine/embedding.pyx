# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Token embeddings scaled by sqrt(d_model) (or any ``scale``) plus positional encodings.

``embedding_forward(ids, positions, table, pos_table, scale, out)``:
``out[i] = table[ids[i]] * scale + pos_table[positions[i]]`` over packed tokens.
``pos_table`` is a learned table or a precomputed sinusoidal one (see
``sinusoidal_table``); ``None`` adds nothing. ``embedding_forward_int8`` and
``embedding_forward_bf16`` read a quantized table (int8 rows with a float32 scale each, or
bf16 rows) and dequantize the looked-up rows only, into the float32 activations. Ids and positions are range-checked
before the parallel loop, so a bad id raises instead of reading out of bounds.
"""
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, uint16_t
from libc.math cimport sin, cos, pow

cdef extern from "omp_compat.h" nogil:
    int cyf_row_team(int n_threads, long rows, long row_len)

import numpy as np


cdef extern from "embedding_rows.h" nogil:
    void cyf_embed_row_i8(const int8_t* q, float f, const float* p, float* o, int d)
    void cyf_embed_row_i8_packed(const int8_t* q, float f, const float* p, float* o, int d)
    void cyf_embed_row_bf16(const uint16_t* b, float f, const float* p, float* o, int d)


cdef const float* _check_lookup(const int32_t[::1] ids, const int32_t[::1] positions, Py_ssize_t vocab,
                                Py_ssize_t d, pos_table, float[:, ::1] out) except? NULL:
    """Shapes and ranges of a lookup (before any parallel loop, so a bad id raises instead of
    reading out of bounds); the position table's first row, or NULL without one (or empty)."""
    cdef Py_ssize_t n = ids.shape[0], i, bad = -1
    cdef int max_pos = 0
    cdef const float[:, ::1] pt
    cdef const float* pp = NULL
    cdef int32_t t
    if out.shape[0] != n or out.shape[1] != d:
        raise ValueError(f"out must be [{n}, {d}]")
    if pos_table is not None:
        pt = pos_table
        if pt.shape[1] != d:
            raise ValueError(f"pos_table has {pt.shape[1]} columns, expected {d}")
        max_pos = pt.shape[0]
        if positions.shape[0] != n:
            raise ValueError("positions must have one entry per id")
        pp = &pt[0, 0] if max_pos else NULL
    with nogil:
        for i in range(n):
            t = ids[i]
            if t < 0 or t >= vocab:
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"token id {ids[bad]} at packed position {bad} is outside [0, {vocab})")
    if pos_table is not None:
        with nogil:
            for i in range(n):
                if positions[i] < 0 or positions[i] >= max_pos:
                    bad = i
                    break
        if bad >= 0:
            raise ValueError(f"position {positions[bad]} is outside the table's [0, {max_pos}); "
                             f"the sequence is longer than max_len")
    return pp


def embedding_forward(const int32_t[::1] ids, const int32_t[::1] positions,
                      const float[:, ::1] table, pos_table, float scale,
                      float[:, ::1] out, int n_threads=1):
    """ids, positions: [N] int32; table: [V, d]; pos_table: [P, d] or None; out: [N, d]."""
    cdef Py_ssize_t n = ids.shape[0], i
    cdef int d = table.shape[1]
    cdef const float* pp = _check_lookup(ids, positions, table.shape[0], d, pos_table, out)
    if n == 0 or d == 0:
        return
    cdef const float* tp = &table[0, 0]
    cdef float* op = &out[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, d), schedule='static'):
            _embed_row(tp + <long>ids[i] * d, pp + <long>positions[i] * d if pp != NULL else NULL,
                       scale, op + i * d, d)


def embedding_forward_int8(const int32_t[::1] ids, const int32_t[::1] positions,
                           const int8_t[:, ::1] table, const float[::1] row_scale, pos_table,
                           float scale, float[:, ::1] out, int n_threads=1, bint packed=False):
    """``embedding_forward`` over an int8 table [V, d] with one float32 scale per row [V]:
    ``out[i] = table[ids[i]] * (row_scale[ids[i]] * scale) + pos_table[positions[i]]``, the
    two scales folded into one float32 (the product and the sum rounded separately).
    ``packed``: ``table`` is the [V, d] table (V = len(row_scale), d = out's width) as
    ``quant.pack_int8`` packs it for the int8 GEMM, so a tied output projection and the lookup
    read one copy."""
    cdef Py_ssize_t n = ids.shape[0], i
    cdef long v = row_scale.shape[0], ldp = 0
    cdef int d = out.shape[1] if packed else table.shape[1]
    if packed:
        ldp = ((d + 3) // 4) * 64
        if table.shape[0] != (v + 15) // 16 or (v and table.shape[1] != ldp):
            raise ValueError(f"packed table is [{table.shape[0]}, {table.shape[1]}], expected "
                             f"[{(v + 15) // 16}, {ldp}] for {v} rows of {d}")
    elif v != table.shape[0]:
        raise ValueError(f"row_scale must have one entry per table row ({table.shape[0]}), got {v}")
    cdef const float* pp = _check_lookup(ids, positions, v, d, pos_table, out)
    if n == 0 or d == 0:
        return
    cdef const int8_t* tp = &table[0, 0]
    cdef const float* sp = &row_scale[0]
    cdef float* op = &out[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, d), schedule='static'):
            if packed:   # row ids[i]: block ids[i] / 16, lane ids[i] % 16 (4 bytes per lane)
                cyf_embed_row_i8_packed(tp + (ids[i] // 16) * ldp + (ids[i] % 16) * 4, sp[ids[i]] * scale,
                                        pp + <long>positions[i] * d if pp != NULL else NULL, op + i * d, d)
            else:
                cyf_embed_row_i8(tp + <long>ids[i] * d, sp[ids[i]] * scale,
                                 pp + <long>positions[i] * d if pp != NULL else NULL, op + i * d, d)


def embedding_forward_bf16(const int32_t[::1] ids, const int32_t[::1] positions,
                           const uint16_t[:, ::1] table, pos_table, float scale,
                           float[:, ::1] out, int n_threads=1):
    """``embedding_forward`` over a bf16 table [V, d] (uint16 bits): ``out[i] =
    float(table[ids[i]]) * scale + pos_table[positions[i]]``."""
    cdef Py_ssize_t n = ids.shape[0], i
    cdef int d = table.shape[1]
    cdef const float* pp = _check_lookup(ids, positions, table.shape[0], d, pos_table, out)
    if n == 0 or d == 0:
        return
    cdef const uint16_t* tp = &table[0, 0]
    cdef float* op = &out[0, 0]
    with nogil:
        for i in prange(n, num_threads=cyf_row_team(n_threads, n, d), schedule='static'):
            cyf_embed_row_bf16(tp + <long>ids[i] * d, scale,
                               pp + <long>positions[i] * d if pp != NULL else NULL, op + i * d, d)


cdef void _embed_row(const float* e, const float* p, float scale, float* o, int d) noexcept nogil:
    cdef int j
    if p != NULL:
        for j in range(d):
            o[j] = e[j] * scale + p[j]
    else:
        for j in range(d):
            o[j] = e[j] * scale


def embedding_backward(const int32_t[::1] ids, const int32_t[::1] positions, const float[:, ::1] dout,
                       float scale, float[:, ::1] dtable, dpos_table=None, int skip_id=-1,
                       int n_threads=1):
    """Gradients of ``embedding_forward``: ``dtable[ids[i]] += scale * dout[i]`` and, for a
    learned positional table, ``dpos_table[positions[i]] += dout[i]``.

    Tokens equal to ``skip_id`` add nothing to ``dtable`` (``nn.Embedding(padding_idx=...)``).
    Threads split the model dimension, each adding its columns for every token in order, so
    repeated ids never race and sums do not depend on the thread count.
    """
    cdef Py_ssize_t n = ids.shape[0], i
    cdef int d = dtable.shape[1], vocab = dtable.shape[0], t, nt, c0, c1, chunk
    cdef float[:, ::1] dp
    cdef float* dpp = NULL
    cdef int max_pos = 0
    if dout.shape[0] != n or dout.shape[1] != d:
        raise ValueError(f"dout must be [{n}, {d}]")
    if dpos_table is not None:
        dp = dpos_table
        if dp.shape[1] != d:
            raise ValueError(f"dpos_table has {dp.shape[1]} columns, expected {d}")
        if positions.shape[0] != n:
            raise ValueError("positions must have one entry per id")
        max_pos = dp.shape[0]
        if n and (np.min(positions) < 0 or np.max(positions) >= max_pos):
            raise ValueError(f"a position is outside the table's [0, {max_pos})")
        dpp = &dp[0, 0] if max_pos else NULL
    if n and (np.min(ids) < 0 or np.max(ids) >= vocab):
        raise ValueError(f"a token id is outside [0, {vocab})")
    if n == 0 or d == 0:
        return
    nt = max(1, min(n_threads, (d + 15) // 16))
    chunk = ((d + nt - 1) // nt + 15) // 16 * 16
    cdef const float* gp = &dout[0, 0]
    cdef float* tp = &dtable[0, 0]
    with nogil:
        for t in prange(nt, num_threads=nt, schedule='static'):
            c0 = min(d, chunk * t)
            c1 = min(d, chunk * (t + 1))
            for i in range(n):
                if ids[i] != skip_id:
                    _add_scaled(tp + <long>ids[i] * d, gp + i * d, scale, c0, c1)
                if dpp != NULL:
                    _add_scaled(dpp + <long>positions[i] * d, gp + i * d, 1.0, c0, c1)


cdef inline void _add_scaled(float* dst, const float* src, float scale, int c0, int c1) noexcept nogil:
    cdef int j
    for j in range(c0, c1):
        dst[j] += scale * src[j]


def sinusoidal_table(int n_positions, int d_model, layout="interleaved"):
    """Fixed positional encodings [n_positions, d_model] from the paper.

    PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
    ``layout="interleaved"`` places them as the paper does (sin, cos, sin, ...);
    ``"halves"`` puts every sine first and every cosine second, as Marian (and
    Hugging Face's MarianSinusoidalPositionalEmbedding) do.
    """
    cdef double[:, ::1] tab
    cdef int pos, i, half = (d_model + 1) // 2
    cdef double angle
    cdef bint interleaved
    if layout not in ("interleaved", "halves"):
        raise ValueError(f"layout must be 'interleaved' or 'halves', not {layout!r}")
    if n_positions < 0 or d_model <= 0:
        raise ValueError("n_positions must be >= 0 and d_model > 0")
    interleaved = layout == "interleaved"
    arr = np.zeros((n_positions, d_model), dtype=np.float64)
    tab = arr
    with nogil:
        for pos in range(n_positions):
            for i in range(half):
                angle = pos / pow(10000.0, (2.0 * i) / d_model)
                if interleaved:
                    tab[pos, 2 * i] = sin(angle)
                    if 2 * i + 1 < d_model:
                        tab[pos, 2 * i + 1] = cos(angle)
                else:
                    tab[pos, i] = sin(angle)
                    if half + i < d_model:
                        tab[pos, half + i] = cos(angle)
    return arr.astype(np.float32)
