# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Multi-head scaled dot-product attention, softmax(Q K^T * scale) V, over packed rows.

Layout: every sequence's queries (keys, values) are consecutive rows of a row-major
``[rows, n_heads * d_k]`` matrix; head ``h`` owns columns ``h*d_k:(h+1)*d_k``. Sequence
``b`` reads queries ``q_start[b] : q_start[b] + q_len[b]`` and keys/values
``k_start[b] : k_start[b] + k_len[b]``, so padding never enters a GEMM and a KV cache
``[batch, max_len, d]`` is just ``k_start[b] = b * max_len``.

Masks are bounds, not matrices. Query ``i`` sits at absolute position
``i + (k_len - q_len)`` (queries are the last ``q_len`` positions, as in incremental
decoding). ``causal`` keeps keys ``j <= pos``; ``window >= 0`` keeps ``|pos - j| <= window``.
Only the columns a block of rows can see are ever multiplied. An optional dense
``mask[b or 0, i, j]`` (nonzero = may attend, as in ``F.scaled_dot_product_attention``)
adds arbitrary structure. A query that can see no key gets a zero output.
"""
from cython.parallel cimport prange, parallel
from libc.math cimport INFINITY
from libc.stdlib cimport malloc, free
from libc.stdint cimport int32_t, uint8_t
from _common cimport sgemm_rm

cdef extern from "vecmath.h" nogil:
    int cyf_softmax_range(float* x, int lo, int hi, int width)
    int cyf_attend_row(const float* q, const float* k, long ldk, const float* v, long ldv,
                       float* out, int lo, int hi, int d_k, float scale, const uint8_t* mask,
                       float* scores)

import numpy as np

# Rows of queries multiplied at once; small enough that causal/window blocks skip
# most masked columns, large enough for an efficient GEMM.
cdef int _BLOCK_ROWS = 32
# Up to this many queries per sequence (incremental decoding) take the per-row path.
cdef int _ROW_PATH_MAX_Q = 4


cdef inline int _ld(const float[:, :] a) noexcept:
    return max(<int>(a.strides[0] // sizeof(float)), <int>a.shape[1], 1)


cdef inline bint _rows_contiguous(const float[:, :] a) noexcept:
    return a.shape[0] == 0 or a.shape[1] <= 1 or a.strides[1] == sizeof(float)


cdef void _attend_one(const float* q, int ldq, const float* k, int ldk, const float* v, int ldv,
                      float* out, int ldo, int lq, int lk, int d_k, float scale,
                      bint causal, int window, const uint8_t* mask, int ldm,
                      float* probs, int ldp, float* scores, int block) noexcept nogil:
    # One (sequence, head): q [lq, d_k], k/v [lk, d_k], out [lq, d_k];
    # mask [lq, ldm] or NULL; probs [lq, ldp] or NULL; scores is scratch [block, lk].
    cdef int shift = lk - lq
    cdef int r0, r1, i, j, lo, hi, row_lo, row_hi, width
    cdef float* srow
    if lq <= _ROW_PATH_MAX_Q:
        for i in range(lq):
            row_lo = 0
            row_hi = lk
            if causal:
                row_hi = min(row_hi, i + shift + 1)
            if window >= 0:
                row_lo = max(row_lo, i + shift - window)
                row_hi = min(row_hi, i + shift + window + 1)
            cyf_attend_row(q + i * ldq, k, ldk, v, ldv, out + i * ldo, row_lo, row_hi, d_k, scale,
                           mask + i * ldm if mask != NULL else NULL, scores)
            if probs != NULL:
                for j in range(lk):
                    probs[i * ldp + j] = 0.0
                for j in range(row_lo, row_hi):
                    probs[i * ldp + j] = scores[j - row_lo]
        return
    r0 = -block
    while r0 + block < lq:
        r0 = r0 + block
        r1 = min(lq, r0 + block)
        lo = 0
        hi = lk
        if causal:
            hi = min(hi, r1 - 1 + shift + 1)
        if window >= 0:
            lo = max(lo, r0 + shift - window)
            hi = min(hi, r1 - 1 + shift + window + 1)
        if probs != NULL:
            for i in range(r0, r1):
                for j in range(lk):
                    probs[i * ldp + j] = 0.0
        if hi <= lo:
            for i in range(r0, r1):
                for j in range(d_k):
                    out[i * ldo + j] = 0.0
            continue
        width = hi - lo
        # scores[r1 - r0, width] = scale * Q[r0:r1] K[lo:hi]^T
        sgemm_rm(False, True, r1 - r0, width, d_k, scale, q + r0 * ldq, ldq,
                 k + lo * ldk, ldk, 0.0, scores, width)
        for i in range(r0, r1):
            srow = scores + (i - r0) * width
            row_lo = lo
            row_hi = hi
            if causal:
                row_hi = min(row_hi, i + shift + 1)
            if window >= 0:
                row_lo = max(row_lo, i + shift - window)
                row_hi = min(row_hi, i + shift + window + 1)
            row_hi = max(row_hi, row_lo)
            if mask != NULL:
                for j in range(row_lo, row_hi):
                    if mask[i * ldm + j] == 0:
                        srow[j - lo] = -INFINITY
            # softmax over the visible columns; the rest of the block row becomes 0
            cyf_softmax_range(srow, row_lo - lo, row_hi - lo, width)
            if probs != NULL:
                for j in range(width):
                    probs[i * ldp + lo + j] = srow[j]
        # out[r0:r1] = P[r1 - r0, width] V[lo:hi]
        sgemm_rm(False, False, r1 - r0, d_k, width, 1.0, scores, width,
                 v + lo * ldv, ldv, 0.0, out + r0 * ldo, ldo)


def attention_forward(const float[:, :] q, const float[:, :] k, const float[:, :] v,
                      float[:, :] out,
                      const int32_t[::1] q_start, const int32_t[::1] q_len,
                      const int32_t[::1] k_start, const int32_t[::1] k_len,
                      int n_heads, float scale=-1.0, bint causal=False, int window=-1,
                      mask=None, probs=None, int n_threads=1):
    """Multi-head attention over packed sequences; see the module docstring.

    q, out: [Nq, d]; k, v: [Nk, d] (row-strided views allowed); d = n_heads * d_k.
    mask: optional uint8/bool [B or 1, Tq, Tk] with Tq >= max(q_len), Tk >= max(k_len).
    probs: optional float32 [B, n_heads, Tq, Tk] receiving the attention weights
    (zero where masked). ``scale`` defaults to 1/sqrt(d_k).
    """
    cdef Py_ssize_t batch = q_start.shape[0]
    cdef int d = q.shape[1]
    cdef int d_k, b, h, item, n_items, lq, lk
    cdef const uint8_t[:, :, ::1] mask_v
    cdef float[:, :, :, ::1] probs_v
    cdef const uint8_t* mask_ptr = NULL
    cdef float* probs_ptr = NULL
    cdef long mask_bstride = 0, ldm = 0, probs_bstride = 0, probs_hstride = 0, ldp = 0
    cdef int max_lq = 0, max_lk = 0, block
    cdef float* scores
    cdef int ldq, ldk, ldv, ldo
    cdef int failed[1]
    if n_heads <= 0 or d % n_heads:
        raise ValueError(f"d={d} is not divisible by n_heads={n_heads}")
    d_k = d // n_heads
    if k.shape[1] != d or v.shape[1] != d or out.shape[1] != d:
        raise ValueError("q, k, v and out must have the same number of columns")
    if k.shape[0] != v.shape[0]:
        raise ValueError("k and v must have the same number of rows")
    if out.shape[0] != q.shape[0]:
        raise ValueError("out must have as many rows as q")
    if q_len.shape[0] != batch or k_start.shape[0] != batch or k_len.shape[0] != batch:
        raise ValueError("q_start, q_len, k_start and k_len must have one entry per sequence")
    for b in range(batch):
        lq = q_len[b]
        lk = k_len[b]
        if lq < 0 or lk < 0 or q_start[b] < 0 or k_start[b] < 0:
            raise ValueError("negative start or length")
        if <long>q_start[b] + lq > q.shape[0] or <long>k_start[b] + lk > k.shape[0]:
            raise ValueError(f"sequence {b} runs past the end of q or k")
        max_lq = max(max_lq, lq)
        max_lk = max(max_lk, lk)
    if not (_rows_contiguous(q) and _rows_contiguous(k) and _rows_contiguous(v)
            and _rows_contiguous(out)):
        raise ValueError("rows of q, k, v and out must be contiguous")
    if scale < 0:
        scale = 1.0 / (<float>d_k) ** 0.5
    if mask is not None:
        mask_arr = np.ascontiguousarray(mask).view(np.uint8) if np.asarray(mask).dtype == np.bool_ \
            else np.ascontiguousarray(mask, dtype=np.uint8)
        if mask_arr.ndim == 2:
            mask_arr = mask_arr[None]
        if mask_arr.ndim != 3 or mask_arr.shape[0] not in (1, batch) \
                or mask_arr.shape[1] < max_lq or mask_arr.shape[2] < max_lk:
            raise ValueError(f"mask of shape {mask_arr.shape} does not cover "
                             f"[{batch}, {max_lq}, {max_lk}]")
        mask_v = mask_arr
        if mask_v.shape[0] * mask_v.shape[1] * mask_v.shape[2] > 0:
            mask_ptr = &mask_v[0, 0, 0]
        mask_bstride = 0 if mask_v.shape[0] == 1 else mask_v.shape[1] * mask_v.shape[2]
        ldm = mask_v.shape[2]
    if probs is not None:
        probs_v = probs
        if probs_v.shape[0] != batch or probs_v.shape[1] != n_heads \
                or probs_v.shape[2] < max_lq or probs_v.shape[3] < max_lk:
            raise ValueError("probs must be float32 [B, n_heads, Tq, Tk] covering every sequence")
        if probs_v.shape[0] * probs_v.shape[1] * probs_v.shape[2] * probs_v.shape[3] > 0:
            probs_ptr = &probs_v[0, 0, 0, 0]
        ldp = probs_v.shape[3]
        probs_hstride = probs_v.shape[2] * ldp
        probs_bstride = n_heads * probs_hstride
    if batch == 0 or q.shape[0] == 0:
        return
    ldq = _ld(q)
    ldo = _ld(out)
    ldk = _ld(k) if k.shape[0] else d
    ldv = _ld(v) if v.shape[0] else d
    block = _BLOCK_ROWS if (causal or window >= 0 or max_lq > 2 * _BLOCK_ROWS) else max(max_lq, 1)
    n_items = <int>batch * n_heads
    cdef const float* qp = &q[0, 0]
    cdef float* op = &out[0, 0]
    cdef const float* kp = &k[0, 0] if k.shape[0] else NULL
    cdef const float* vp = &v[0, 0] if v.shape[0] else NULL
    failed[0] = 0
    with nogil, parallel(num_threads=max(1, min(n_threads, n_items))):
        scores = <float*>malloc(sizeof(float) * block * max(max_lk, 1))
        if scores == NULL:
            failed[0] = 1
        else:
            for item in prange(n_items, schedule='dynamic'):
                b = item // n_heads
                h = item % n_heads
                lq = q_len[b]
                lk = k_len[b]
                if lq == 0:
                    continue
                if lk == 0:
                    _attend_one(qp, ldq, kp, ldk, vp, ldv, op + <long>q_start[b] * ldo + h * d_k, ldo,
                                lq, 0, d_k, scale, causal, window, NULL, 0,
                                probs_ptr + b * probs_bstride + h * probs_hstride if probs_ptr != NULL else NULL,
                                ldp, scores, block)
                    continue
                _attend_one(qp + <long>q_start[b] * ldq + h * d_k, ldq,
                            kp + <long>k_start[b] * ldk + h * d_k, ldk,
                            vp + <long>k_start[b] * ldv + h * d_k, ldv,
                            op + <long>q_start[b] * ldo + h * d_k, ldo,
                            lq, lk, d_k, scale, causal, window,
                            mask_ptr + b * mask_bstride if mask_ptr != NULL else NULL, ldm,
                            probs_ptr + b * probs_bstride + h * probs_hstride if probs_ptr != NULL else NULL,
                            ldp, scores, block)
            free(scores)
    if failed[0]:
        raise MemoryError("attention_forward: could not allocate the score scratch")
