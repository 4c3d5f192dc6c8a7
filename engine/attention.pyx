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
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from _common cimport sgemm_rm

cdef extern from "softmax.h" nogil:
    int cyf_softmax_range(float* x, int lo, int hi, int width)

cdef extern from "dropout.h" nogil:
    void cyf_dropout_row(float* x, int n, uint64_t seed, uint64_t first, uint32_t threshold,
                         float inv_keep)

cdef extern from "attention_row.h" nogil:
    int cyf_attend_row(const float* q, const float* k, long ldk, const float* v, long ldv,
                       float* out, int lo, int hi, int d_k, float scale, const uint8_t* mask,
                       float* scores, float* dropped, uint64_t seed, uint64_t first,
                       uint32_t threshold, float inv_keep)
    void cyf_attend_row_backward(const float* q, const float* k, long ldk, const float* v, long ldv,
                                 const float* dout, float* dq, float* dk, long lddk, float* dv, long lddv,
                                 int lo, int hi, int d_k, float scale, const uint8_t* mask,
                                 float* p, float* t, float* u, uint64_t seed, uint64_t first,
                                 uint32_t threshold, float inv_keep)

import numpy as np

# Rows of queries multiplied at once; small enough that causal/window blocks skip
# most masked columns, large enough for an efficient GEMM.
cdef int _BLOCK_ROWS = 32
# Up to this many queries per sequence (incremental decoding), or keys (short sequences in
# training), take the per-row path: a GEMM call per tiny block costs more than its arithmetic.
cdef int _ROW_PATH_MAX_Q = 4
cdef int _ROW_PATH_MAX_K = 16


cdef inline int _ld(const float[:, :] a) noexcept:
    return max(<int>(a.strides[0] // sizeof(float)), <int>a.shape[1], 1)


cdef inline bint _rows_contiguous(const float[:, :] a) noexcept:
    # each row contiguous, and rows neither reversed nor overlapping (a row stride below the
    # row length, e.g. x[::-1] or np.broadcast_to, would make _ld read past the buffer)
    if a.shape[0] > 1 and a.strides[0] < <Py_ssize_t>(a.shape[1] * sizeof(float)):
        return False
    return a.shape[0] == 0 or a.shape[1] <= 1 or a.strides[1] == sizeof(float)


cdef struct Dropout:
    # Attention-weight dropout: weight (query row r of the packed batch, head h, key j) is
    # kept when hash(seed, ((r * n_heads + h) << 32) + j) >= threshold. threshold == 0: off.
    uint64_t seed
    uint32_t threshold
    float inv_keep
    uint64_t row_base    # (q_start[b] * n_heads + h) << 32 for this (sequence, head)
    uint64_t row_step    # n_heads << 32: one query row further


cdef inline void _bounds(int i, int shift, int lk, bint causal, int window, int* lo, int* hi) noexcept nogil:
    # Visible keys [lo, hi) of query i (absolute position i + shift).
    lo[0] = 0
    hi[0] = lk
    if causal:
        hi[0] = min(hi[0], i + shift + 1)
    if window >= 0:
        lo[0] = max(lo[0], i + shift - window)
        hi[0] = min(hi[0], i + shift + window + 1)
    hi[0] = max(hi[0], lo[0])


cdef inline void _block_bounds(int r0, int r1, int shift, int lk, bint causal, int window,
                               int* lo, int* hi) noexcept nogil:
    # Keys any of the queries r0..r1-1 can see: [lo, hi).
    lo[0] = 0
    hi[0] = lk
    if causal:
        hi[0] = min(hi[0], r1 - 1 + shift + 1)
    if window >= 0:
        lo[0] = max(lo[0], r0 + shift - window)
        hi[0] = min(hi[0], r1 - 1 + shift + window + 1)


cdef void _block_probs(const float* q, int ldq, const float* k, int ldk, int r0, int r1,
                       int lo, int hi, int shift, int d_k, float scale, bint causal, int window,
                       const uint8_t* mask, int ldm, float* scores) noexcept nogil:
    # scores[r1 - r0, hi - lo] <- softmax rows of scale * Q[r0:r1] K[lo:hi]^T under the masks
    # (zero where a query cannot see a key).
    cdef int width = hi - lo, i, j, row_lo, row_hi
    cdef float* srow
    sgemm_rm(False, True, r1 - r0, width, d_k, scale, q + r0 * ldq, ldq,
             k + lo * ldk, ldk, 0.0, scores, width)
    for i in range(r0, r1):
        srow = scores + (i - r0) * width
        _bounds(i, shift, hi, causal, window, &row_lo, &row_hi)  # hi clips as lk would
        row_lo = max(row_lo, lo)
        row_hi = max(row_hi, row_lo)
        if mask != NULL:
            for j in range(row_lo, row_hi):
                if mask[i * ldm + j] == 0:
                    srow[j - lo] = -INFINITY
        cyf_softmax_range(srow, row_lo - lo, row_hi - lo, width)


cdef inline void _drop_block(float* p, int r0, int r1, int lo, int width, Dropout* drop) noexcept nogil:
    # Apply the dropout mask of rows r0..r1-1, keys lo..lo+width-1, to p [r1 - r0, width].
    cdef int i
    for i in range(r0, r1):
        cyf_dropout_row(p + (i - r0) * width, width, drop.seed,
                        drop.row_base + <uint64_t>i * drop.row_step + <uint64_t>lo,
                        drop.threshold, drop.inv_keep)


cdef void _attend_one(const float* q, int ldq, const float* k, int ldk, const float* v, int ldv,
                      float* out, int ldo, int lq, int lk, int d_k, float scale,
                      bint causal, int window, const uint8_t* mask, int ldm,
                      float* probs, int ldp, float* scores, int block, Dropout* drop) noexcept nogil:
    # One (sequence, head): q [lq, d_k], k/v [lk, d_k], out [lq, d_k];
    # mask [lq, ldm] or NULL; probs [lq, ldp] or NULL; scores is scratch [block, lk].
    cdef int shift = lk - lq
    cdef int r0, r1, i, j, lo, hi, row_lo, row_hi, width
    cdef float* srow
    if lq <= _ROW_PATH_MAX_Q or lk <= _ROW_PATH_MAX_K:
        for i in range(lq):
            _bounds(i, shift, lk, causal, window, &row_lo, &row_hi)
            cyf_attend_row(q + i * ldq, k, ldk, v, ldv, out + i * ldo, row_lo, row_hi, d_k, scale,
                           mask + i * ldm if mask != NULL else NULL, scores, scores + lk,
                           drop.seed, drop.row_base + <uint64_t>i * drop.row_step,
                           drop.threshold, drop.inv_keep)
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
        _block_bounds(r0, r1, shift, lk, causal, window, &lo, &hi)
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
        _block_probs(q, ldq, k, ldk, r0, r1, lo, hi, shift, d_k, scale, causal, window, mask, ldm, scores)
        if probs != NULL:
            for i in range(r0, r1):
                for j in range(width):
                    probs[i * ldp + lo + j] = scores[(i - r0) * width + j]
        if drop.threshold:
            _drop_block(scores, r0, r1, lo, width, drop)
        # out[r0:r1] = P[r1 - r0, width] V[lo:hi]
        sgemm_rm(False, False, r1 - r0, d_k, width, 1.0, scores, width,
                 v + lo * ldv, ldv, 0.0, out + r0 * ldo, ldo)


cdef inline Dropout _for_item(Dropout drop, int q_start, int n_heads, int h) noexcept nogil:
    # the stream of one (sequence, head): rows are numbered in the packed batch
    drop.row_base = (<uint64_t>q_start * n_heads + h) << 32
    drop.row_step = (<uint64_t>n_heads) << 32
    return drop


cdef inline void _set_dropout(Dropout* drop, float p, uint64_t seed) noexcept:
    drop.seed = seed
    drop.threshold = 0
    drop.inv_keep = 1.0
    drop.row_base = 0
    drop.row_step = 0
    if p > 0:
        drop.threshold = <uint32_t>min(<double>p * 4294967296.0, 4294967295.0)
        drop.inv_keep = <float>(1.0 / (1.0 - <double>p))


cdef class _Problem:
    """Validated shapes, strides and pointers shared by the forward and backward passes."""
    cdef int batch, n_heads, d, d_k, max_lq, max_lk, ldm
    cdef long mask_bstride
    cdef const uint8_t* mask_ptr
    cdef object mask_arr
    cdef float scale

    def __init__(self, const float[:, :] q, const float[:, :] k, const float[:, :] v,
                 const int32_t[::1] q_start, const int32_t[::1] q_len,
                 const int32_t[::1] k_start, const int32_t[::1] k_len,
                 int n_heads, float scale, mask):
        cdef Py_ssize_t b
        cdef const uint8_t[:, :, ::1] mask_v
        cdef int lq, lk
        self.batch = q_start.shape[0]
        self.n_heads = n_heads
        self.d = q.shape[1]
        self.mask_ptr = NULL
        self.mask_bstride = 0
        self.ldm = 0
        if n_heads <= 0 or self.d % n_heads:
            raise ValueError(f"d={self.d} is not divisible by n_heads={n_heads}")
        self.d_k = self.d // n_heads
        if k.shape[1] != self.d or v.shape[1] != self.d:
            raise ValueError("q, k and v must have the same number of columns")
        if k.shape[0] != v.shape[0]:
            raise ValueError("k and v must have the same number of rows")
        if q_len.shape[0] != self.batch or k_start.shape[0] != self.batch or k_len.shape[0] != self.batch:
            raise ValueError("q_start, q_len, k_start and k_len must have one entry per sequence")
        self.max_lq = 0
        self.max_lk = 0
        for b in range(self.batch):
            lq = q_len[b]
            lk = k_len[b]
            if lq < 0 or lk < 0 or q_start[b] < 0 or k_start[b] < 0:
                raise ValueError("negative start or length")
            if <long>q_start[b] + lq > q.shape[0] or <long>k_start[b] + lk > k.shape[0]:
                raise ValueError(f"sequence {b} runs past the end of q or k")
            self.max_lq = max(self.max_lq, lq)
            self.max_lk = max(self.max_lk, lk)
        if not (_rows_contiguous(q) and _rows_contiguous(k) and _rows_contiguous(v)):
            raise ValueError("rows of q, k and v must be contiguous")
        self.scale = scale if scale >= 0 else 1.0 / (<float>self.d_k) ** 0.5
        if mask is not None:
            mask_arr = np.ascontiguousarray(mask).view(np.uint8) if np.asarray(mask).dtype == np.bool_ \
                else np.ascontiguousarray(mask, dtype=np.uint8)
            if mask_arr.ndim == 2:
                mask_arr = mask_arr[None]
            if mask_arr.ndim != 3 or mask_arr.shape[0] not in (1, self.batch) \
                    or mask_arr.shape[1] < self.max_lq or mask_arr.shape[2] < self.max_lk:
                raise ValueError(f"mask of shape {mask_arr.shape} does not cover "
                                 f"[{self.batch}, {self.max_lq}, {self.max_lk}]")
            self.mask_arr = mask_arr  # keeps the buffer alive while the kernel reads it
            mask_v = mask_arr
            if mask_v.shape[0] * mask_v.shape[1] * mask_v.shape[2] > 0:
                self.mask_ptr = &mask_v[0, 0, 0]
            self.mask_bstride = 0 if mask_v.shape[0] == 1 else mask_v.shape[1] * mask_v.shape[2]
            self.ldm = mask_v.shape[2]

    cdef int clamp_window(self, int window) noexcept:
        # a window wider than any sequence restricts nothing; clamping keeps i + w + 1 in int
        return -1 if window < 0 or window >= self.max_lq + self.max_lk else window

    cdef inline const uint8_t* mask_of(self, int b) noexcept nogil:
        return self.mask_ptr + b * self.mask_bstride if self.mask_ptr != NULL else NULL


cdef inline void _check_out(float[:, :] out, const float[:, :] q, int d, str name) except *:
    if out.shape[0] != q.shape[0] or out.shape[1] != d:
        raise ValueError(f"{name} must have as many rows as q and {d} columns: [{q.shape[0]}, {d}]")
    if not _rows_contiguous(out):
        raise ValueError(f"rows of {name} must be contiguous")


def attention_forward(const float[:, :] q, const float[:, :] k, const float[:, :] v,
                      float[:, :] out,
                      const int32_t[::1] q_start, const int32_t[::1] q_len,
                      const int32_t[::1] k_start, const int32_t[::1] k_len,
                      int n_heads, float scale=-1.0, bint causal=False, int window=-1,
                      mask=None, probs=None, float dropout=0.0, uint64_t seed=0, int n_threads=1):
    """Multi-head attention over packed sequences; see the module docstring.

    q, out: [Nq, d]; k, v: [Nk, d] (row-strided views allowed); d = n_heads * d_k.
    mask: optional uint8/bool [B or 1, Tq, Tk] with Tq >= max(q_len), Tk >= max(k_len).
    probs: optional float32 [B, n_heads, Tq, Tk] receiving the attention weights
    (zero where masked; before dropout). ``scale`` defaults to 1/sqrt(d_k).
    ``dropout`` > 0 drops attention weights (inverted dropout) with a mask that is a
    function of ``seed`` and the (query row, head, key) position, so
    ``attention_backward`` with the same seed regenerates it.
    """
    cdef _Problem pb = _Problem(q, k, v, q_start, q_len, k_start, k_len, n_heads, scale, mask)
    cdef int d = pb.d, d_k = pb.d_k
    cdef int b, h, item, n_items, lq, lk, block
    cdef float[:, :, :, ::1] probs_v
    cdef float* probs_ptr = NULL
    cdef long probs_bstride = 0, probs_hstride = 0, ldp = 0
    cdef float* scores
    cdef int ldq, ldk, ldv, ldo
    cdef int failed[1]
    cdef Dropout drop, mine
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    _set_dropout(&drop, dropout, seed)
    window = pb.clamp_window(window)
    _check_out(out, q, d, "out")
    if probs is not None:
        probs_v = probs
        if probs_v.shape[0] != pb.batch or probs_v.shape[1] != n_heads \
                or probs_v.shape[2] < pb.max_lq or probs_v.shape[3] < pb.max_lk:
            raise ValueError("probs must be float32 [B, n_heads, Tq, Tk] covering every sequence")
        if probs_v.shape[0] * probs_v.shape[1] * probs_v.shape[2] * probs_v.shape[3] > 0:
            probs_ptr = &probs_v[0, 0, 0, 0]
        ldp = probs_v.shape[3]
        probs_hstride = probs_v.shape[2] * ldp
        probs_bstride = n_heads * probs_hstride
    if pb.batch == 0 or q.shape[0] == 0:
        return
    ldq = _ld(q)
    ldo = _ld(out)
    ldk = _ld(k) if k.shape[0] else d
    ldv = _ld(v) if v.shape[0] else d
    block = _BLOCK_ROWS if (causal or window >= 0 or pb.max_lq > 2 * _BLOCK_ROWS or drop.threshold) \
        else max(pb.max_lq, 1)
    n_items = pb.batch * n_heads
    cdef const float* qp = &q[0, 0]
    cdef float* op = &out[0, 0]
    cdef const float* kp = &k[0, 0] if k.shape[0] else NULL
    cdef const float* vp = &v[0, 0] if v.shape[0] else NULL
    failed[0] = 0
    with nogil, parallel(num_threads=max(1, min(n_threads, n_items))):
        scores = <float*>malloc(sizeof(float) * (block + 2) * max(pb.max_lk, 1))
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
                mine = _for_item(drop, q_start[b], n_heads, h)
                if lk == 0:
                    _attend_one(qp, ldq, kp, ldk, vp, ldv, op + <long>q_start[b] * ldo + h * d_k, ldo,
                                lq, 0, d_k, pb.scale, causal, window, NULL, 0,
                                probs_ptr + b * probs_bstride + h * probs_hstride if probs_ptr != NULL else NULL,
                                ldp, scores, block, &mine)
                    continue
                _attend_one(qp + <long>q_start[b] * ldq + h * d_k, ldq,
                            kp + <long>k_start[b] * ldk + h * d_k, ldk,
                            vp + <long>k_start[b] * ldv + h * d_k, ldv,
                            op + <long>q_start[b] * ldo + h * d_k, ldo,
                            lq, lk, d_k, pb.scale, causal, window, pb.mask_of(b), pb.ldm,
                            probs_ptr + b * probs_bstride + h * probs_hstride if probs_ptr != NULL else NULL,
                            ldp, scores, block, &mine)
            free(scores)
    if failed[0]:
        raise MemoryError("attention_forward: could not allocate the score scratch")


cdef void _attend_one_backward(const float* q, int ldq, const float* k, int ldk, const float* v, int ldv,
                               const float* dout, int ldd, float* dq, int lddq, float* dk, int lddk,
                               float* dv, int lddv, int lq, int lk, int d_k, float scale,
                               bint causal, int window, const uint8_t* mask, int ldm,
                               float* p, float* t, int block, Dropout* drop) noexcept nogil:
    # One (sequence, head), recomputing the weights block by block instead of storing them
    # (memory O(block * lk), not O(lq * lk)). p, t: scratch [block, lk].
    #   P = softmax(scale Q K^T) (masked); Pd = dropout(P)
    #   dV += Pd^T dO;  dPd = dO V^T;  dP = dropout(dPd);  dS = P * (dP - rowsum(P * dP))
    #   dQ = scale dS K;  dK += scale dS^T Q
    cdef int shift = lk - lq
    cdef int r0, r1, i, j, lo, hi, width
    cdef float dot
    cdef float* prow
    cdef float* trow
    for i in range(lk):
        for j in range(d_k):
            dk[i * lddk + j] = 0.0
            dv[i * lddv + j] = 0.0
    if lq <= _ROW_PATH_MAX_Q or lk <= _ROW_PATH_MAX_K:
        for i in range(lq):
            _bounds(i, shift, lk, causal, window, &lo, &hi)
            cyf_attend_row_backward(q + i * ldq, k, ldk, v, ldv, dout + i * ldd, dq + i * lddq, dk, lddk,
                                    dv, lddv, lo, hi, d_k, scale, mask + i * ldm if mask != NULL else NULL,
                                    p, p + lk, p + 2 * lk, drop.seed,
                                    drop.row_base + <uint64_t>i * drop.row_step, drop.threshold, drop.inv_keep)
        return
    r0 = -block
    while r0 + block < lq:
        r0 = r0 + block
        r1 = min(lq, r0 + block)
        _block_bounds(r0, r1, shift, lk, causal, window, &lo, &hi)
        if hi <= lo:
            for i in range(r0, r1):
                for j in range(d_k):
                    dq[i * lddq + j] = 0.0
            continue
        width = hi - lo
        _block_probs(q, ldq, k, ldk, r0, r1, lo, hi, shift, d_k, scale, causal, window, mask, ldm, p)
        if drop.threshold:
            for i in range((r1 - r0) * width):
                t[i] = p[i]
            _drop_block(t, r0, r1, lo, width, drop)
            sgemm_rm(True, False, width, d_k, r1 - r0, 1.0, t, width, dout + r0 * ldd, ldd, 1.0,
                     dv + lo * lddv, lddv)
        else:
            sgemm_rm(True, False, width, d_k, r1 - r0, 1.0, p, width, dout + r0 * ldd, ldd, 1.0,
                     dv + lo * lddv, lddv)
        sgemm_rm(False, True, r1 - r0, width, d_k, 1.0, dout + r0 * ldd, ldd, v + lo * ldv, ldv, 0.0,
                 t, width)
        if drop.threshold:
            _drop_block(t, r0, r1, lo, width, drop)
        for i in range(r1 - r0):
            prow = p + i * width
            trow = t + i * width
            dot = 0.0
            for j in range(width):
                dot = dot + prow[j] * trow[j]
            for j in range(width):
                trow[j] = prow[j] * (trow[j] - dot)
        sgemm_rm(False, False, r1 - r0, d_k, width, scale, t, width, k + lo * ldk, ldk, 0.0,
                 dq + r0 * lddq, lddq)
        sgemm_rm(True, False, width, d_k, r1 - r0, scale, t, width, q + r0 * ldq, ldq, 1.0,
                 dk + lo * lddk, lddk)


cdef bint _ranges_overlap(const int32_t[::1] start, const int32_t[::1] length):
    order = np.argsort(np.asarray(start), kind="stable")
    cdef long end = -1
    cdef Py_ssize_t i, b
    for i in range(order.shape[0]):
        b = order[i]
        if length[b] == 0:
            continue
        if start[b] < end:
            return True
        end = start[b] + length[b]
    return False


def attention_backward(const float[:, :] q, const float[:, :] k, const float[:, :] v,
                       const float[:, :] dout, float[:, :] dq, float[:, :] dk, float[:, :] dv,
                       const int32_t[::1] q_start, const int32_t[::1] q_len,
                       const int32_t[::1] k_start, const int32_t[::1] k_len,
                       int n_heads, float scale=-1.0, bint causal=False, int window=-1,
                       mask=None, float dropout=0.0, uint64_t seed=0, int n_threads=1):
    """Gradients of ``attention_forward`` (same arguments) given ``dout`` [Nq, d].

    ``dq`` [Nq, d] and ``dk``, ``dv`` [Nk, d] are overwritten on the rows the sequences
    cover (row-strided views allowed: the column blocks of a fused Q/K/V gradient). The
    weights are recomputed from q and k, and the dropout mask from ``seed``. Sequences must
    not share query or key rows (each row's gradient has one writer).
    """
    cdef _Problem pb = _Problem(q, k, v, q_start, q_len, k_start, k_len, n_heads, scale, mask)
    cdef int d = pb.d, d_k = pb.d_k
    cdef int b, h, item, n_items, lq, lk, block = _BLOCK_ROWS
    cdef float* scratch
    cdef int failed[1]
    cdef Dropout drop, mine
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    _set_dropout(&drop, dropout, seed)
    window = pb.clamp_window(window)
    _check_out(dq, q, d, "dq")
    if dout.shape[0] != q.shape[0] or dout.shape[1] != d or not _rows_contiguous(dout):
        raise ValueError(f"dout must be [{q.shape[0]}, {d}] with contiguous rows")
    for name, g in (("dk", dk), ("dv", dv)):
        if g.shape[0] != k.shape[0] or g.shape[1] != d or not _rows_contiguous(g):
            raise ValueError(f"{name} must be [{k.shape[0]}, {d}] with contiguous rows, like k")
    if _ranges_overlap(q_start, q_len) or _ranges_overlap(k_start, k_len):
        raise ValueError("attention_backward: sequences share query or key rows")
    if pb.batch == 0:
        return
    cdef int ldq = _ld(q) if q.shape[0] else d, ldd = _ld(dout) if q.shape[0] else d
    cdef int lddq = _ld(dq) if q.shape[0] else d
    cdef int ldk = _ld(k) if k.shape[0] else d, ldv = _ld(v) if v.shape[0] else d
    cdef int lddk = _ld(dk) if k.shape[0] else d, lddv = _ld(dv) if k.shape[0] else d
    n_items = pb.batch * n_heads
    # no query rows: every item takes the lq == 0 branch, which only zeroes dk and dv
    cdef const float* qp = &q[0, 0] if q.shape[0] else NULL
    cdef const float* dop = &dout[0, 0] if q.shape[0] else NULL
    cdef float* dqp = &dq[0, 0] if q.shape[0] else NULL
    cdef const float* kp = &k[0, 0] if k.shape[0] else NULL
    cdef const float* vp = &v[0, 0] if k.shape[0] else NULL
    cdef float* dkp = &dk[0, 0] if k.shape[0] else NULL
    cdef float* dvp = &dv[0, 0] if k.shape[0] else NULL
    failed[0] = 0
    with nogil, parallel(num_threads=max(1, min(n_threads, n_items))):
        scratch = <float*>malloc(sizeof(float) * (2 * block + 3) * max(pb.max_lk, 1))
        if scratch == NULL:
            failed[0] = 1
        else:
            for item in prange(n_items, schedule='dynamic'):
                b = item // n_heads
                h = item % n_heads
                lq = q_len[b]
                lk = k_len[b]
                if lq == 0:
                    if lk > 0:  # keys no query sees: zero gradients
                        _zero_block(dkp + <long>k_start[b] * lddk + h * d_k, lddk, lk, d_k)
                        _zero_block(dvp + <long>k_start[b] * lddv + h * d_k, lddv, lk, d_k)
                    continue
                mine = _for_item(drop, q_start[b], n_heads, h)
                if lk == 0:
                    _zero_block(dqp + <long>q_start[b] * lddq + h * d_k, lddq, lq, d_k)
                    continue
                _attend_one_backward(qp + <long>q_start[b] * ldq + h * d_k, ldq,
                                     kp + <long>k_start[b] * ldk + h * d_k, ldk,
                                     vp + <long>k_start[b] * ldv + h * d_k, ldv,
                                     dop + <long>q_start[b] * ldd + h * d_k, ldd,
                                     dqp + <long>q_start[b] * lddq + h * d_k, lddq,
                                     dkp + <long>k_start[b] * lddk + h * d_k, lddk,
                                     dvp + <long>k_start[b] * lddv + h * d_k, lddv,
                                     lq, lk, d_k, pb.scale, causal, window, pb.mask_of(b), pb.ldm,
                                     scratch, scratch + (block + 3) * max(pb.max_lk, 1), block, &mine)
            free(scratch)
    if failed[0]:
        raise MemoryError("attention_backward: could not allocate the score scratch")


cdef inline void _zero_block(float* a, int lda, int rows, int cols) noexcept nogil:
    cdef int i, j
    for i in range(rows):
        for j in range(cols):
            a[i * lda + j] = 0.0
