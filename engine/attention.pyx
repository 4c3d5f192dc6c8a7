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

Three paths, chosen per sequence from its lengths only (so never by the thread count):
* rows (decoding, or a handful of keys): one query row at a time (attention_row.h);
* blocks (short sequences, or when the weights are returned): 32 query rows whose scores
  over all their visible keys are one sgemm into a [32, keys] buffer, then softmax, then P V;
* tiles (at least ``_TILE_MIN_KEYS`` keys): FlashAttention. Blocks of ``_TILE_ROWS``
  queries meet tiles of ``_TILE_KEYS`` keys; each tile's scores ([rows, keys], kept in
  cache) are folded into a running max and sum per row (an online softmax) and multiplied
  into the output at once, so no score matrix beyond one tile exists and each K/V tile is
  read once per block of queries. The products run on attention_tile.h's register-tiled
  kernels over K packed once per chunk of ``_TILE_CHUNK`` queries (AVX-512 or AVX2/FMA,
  head widths divisible by 8), else as sgemm tiles. The backward recomputes each tile's
  probabilities from the row's log-sum-exp (saved by the forward through ``lse``, or found
  in a first pass). Tiles outside a causal or window band are never visited: a window
  costs O(length x window).
"""
from cython.parallel cimport prange, parallel
from libc.math cimport INFINITY, logf
from libc.string cimport memset

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from _common cimport sgemm_rm

cdef extern from "softmax.h" nogil:
    int cyf_softmax_range(float* x, int lo, int hi, int width, float* lse)
    float cyf_softmax_online(float* x, int lo, int hi, int width, float* m, float* l)
    void cyf_softmax_from_lse(float* x, int lo, int hi, int width, float lse)

cdef extern from "dropout.h" nogil:
    void cyf_dropout_row(float* x, int n, uint64_t seed, uint64_t first, uint32_t threshold,
                         float inv_keep)

cdef extern from "attention_row.h" nogil:
    int cyf_attend_row(const float* q, const float* k, long ldk, const float* v, long ldv,
                       float* out, int lo, int hi, int d_k, float scale, const uint8_t* mask,
                       float* scores, float* dropped, uint64_t seed, uint64_t first,
                       uint32_t threshold, float inv_keep, float* lse)
    int cyf_row_level()
    void cyf_row_cap(int level)
    void cyf_attend_row_backward(const float* q, const float* k, long ldk, const float* v, long ldv,
                                 const float* dout, float* dq, float* dk, long lddk, float* dv, long lddv,
                                 int lo, int hi, int d_k, float scale, const uint8_t* mask,
                                 float* p, float* t, float* u, uint64_t seed, uint64_t first,
                                 uint32_t threshold, float inv_keep)
    float cyf_attn_dot(const float* a, const float* b, int n)
    void cyf_attn_scale(float* x, int n, float a)
    void cyf_attn_ds(const float* p, float* t, int n, float dsum, float scale)

cdef extern from * nogil:
    void __builtin_prefetch(const void* p, int rw, int locality)

cdef extern from "scratch.h" nogil:
    void* cyf_scratch_bytes(int slot, size_t nbytes)

cdef extern from "attention_tile.h" nogil:
    int CYF_TILE_PANEL
    int cyf_tile_ok()
    int cyf_tile_level()
    void cyf_tile_cap(int level)
    void cyf_tile_pack(const float* k, long ldk, int n, int d_k, float* kt)
    void cyf_tile_qk(const float* q, long ldq, int rows, const float* kt, int n_panels, int d_k, float scale,
                     float* s, int lds)
    void cyf_tile_pv(const float* p, int ldp, int rows, const float* v, long ldv, int n, int d_k,
                     float* o, long ldo)

import numpy as np

# Rows of queries multiplied at once; small enough that causal/window blocks skip
# most masked columns, large enough for an efficient GEMM.
cdef int _BLOCK_ROWS = 32
# Up to this many queries per sequence (incremental decoding), or keys (short sequences in
# training), take the per-row path: a GEMM call per tiny block costs more than its arithmetic.
cdef int _ROW_PATH_MAX_Q = 4
# keys (and values) of the next one-head lane prefetched while a lane runs (decoding)
cdef int _PREFETCH_KEYS = 64
cdef int _ROW_PATH_MAX_K = 16
# The tiled path: sequences with at least _TILE_MIN_KEYS keys (and more than
# _ROW_PATH_MAX_Q queries). A [_TILE_ROWS, _TILE_KEYS] score tile (and, in the backward, its
# dP twin and the Q, dO, K and V tiles of 64-wide heads) stays in L2; more query rows per
# block would read K and V fewer times, fewer would skip more of a causal or window band.
cdef int _TILE_ROWS = 64
cdef int _TILE_KEYS = 256
cdef int _TILE_MIN_KEYS = 256
# The forward's work unit on the tiled path: up to _TILE_CHUNK query rows of one (sequence,
# head), for which K is packed once (attention_tile.h); chunks balance the threads when
# there are fewer (sequence, head) pairs than threads, or an odd number.
cdef int _TILE_CHUNK = 512
# with attention_tile.h's kernels, the tiled path at any key count (_tile_config(short_keys=...))
cdef bint _SHORT_TILES = True
# The register-tiled kernels of attention_tile.h (else sgemm) when the CPU has them.
cdef bint _TILE_KERNELS = True


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
                       const uint8_t* mask, int ldm, float* scores, float* lse) noexcept nogil:
    # scores[r1 - r0, hi - lo] <- softmax rows of scale * Q[r0:r1] K[lo:hi]^T under the masks
    # (zero where a query cannot see a key); lse[r0:r1] (or NULL) <- the rows' log-sum-exp.
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
        cyf_softmax_range(srow, row_lo - lo, row_hi - lo, width, lse + i if lse != NULL else NULL)


cdef inline void _drop_block(float* p, int r0, int r1, int lo, int width, Dropout* drop) noexcept nogil:
    # Apply the dropout mask of rows r0..r1-1, keys lo..lo+width-1, to p [r1 - r0, width].
    _drop_block_ld(p, width, r0, r1, lo, width, drop)


cdef inline void _drop_block_ld(float* p, int ldp, int r0, int r1, int lo, int width, Dropout* drop) noexcept nogil:
    # the same on p [r1 - r0, width] with rows ldp floats apart
    cdef int i
    for i in range(r0, r1):
        cyf_dropout_row(p + (i - r0) * ldp, width, drop.seed,
                        drop.row_base + <uint64_t>i * drop.row_step + <uint64_t>lo,
                        drop.threshold, drop.inv_keep)


cdef void _attend_one(const float* q, int ldq, const float* k, int ldk, const float* v, int ldv,
                      float* out, int ldo, int lq, int lk, int d_k, float scale,
                      bint causal, int window, const uint8_t* mask, int ldm,
                      float* probs, int ldp, float* lse, float* scores, int block,
                      Dropout* drop) noexcept nogil:
    # One (sequence, head) on the row or block path: q [lq, d_k], k/v [lk, d_k], out [lq, d_k];
    # mask [lq, ldm] or NULL; probs [lq, ldp] or NULL; lse [lq] or NULL; scores is scratch
    # [block + 2, lk].
    cdef int shift = lk - lq
    cdef int r0, r1, i, j, lo, hi, row_lo, row_hi, width
    cdef float* srow
    if lq <= _ROW_PATH_MAX_Q or lk <= _ROW_PATH_MAX_K:
        for i in range(lq):
            _bounds(i, shift, lk, causal, window, &row_lo, &row_hi)
            cyf_attend_row(q + i * ldq, k, ldk, v, ldv, out + i * ldo, row_lo, row_hi, d_k, scale,
                           mask + i * ldm if mask != NULL else NULL, scores, scores + lk,
                           drop.seed, drop.row_base + <uint64_t>i * drop.row_step,
                           drop.threshold, drop.inv_keep, lse + i if lse != NULL else NULL)
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
                if lse != NULL:
                    lse[i] = -INFINITY
            continue
        width = hi - lo
        _block_probs(q, ldq, k, ldk, r0, r1, lo, hi, shift, d_k, scale, causal, window, mask, ldm, scores,
                     lse)
        if probs != NULL:
            for i in range(r0, r1):
                for j in range(width):
                    probs[i * ldp + lo + j] = scores[(i - r0) * width + j]
        if drop.threshold:
            _drop_block(scores, r0, r1, lo, width, drop)
        # out[r0:r1] = P[r1 - r0, width] V[lo:hi]
        sgemm_rm(False, False, r1 - r0, d_k, width, 1.0, scores, width,
                 v + lo * ldv, ldv, 0.0, out + r0 * ldo, ldo)


cdef struct Tiles:
    # One (sequence, head) on the tiled path: K (and for the backward V) packed in panels
    # from key kbase on (attention_tile.h), or NULL (sgemm tiles); tile width and row stride.
    const float* kt
    const float* vt
    int kbase
    int step
    int lds


cdef inline Tiles _tiles(const float* kt, const float* vt, int kbase) noexcept nogil:
    # returned by value: assigned inside prange, the struct is then private to each thread
    cdef Tiles tl
    tl.kt = kt
    tl.vt = vt
    tl.kbase = kbase
    tl.step = _TILE_KEYS
    if kt != NULL:  # whole panels
        tl.step = (_TILE_KEYS + CYF_TILE_PANEL - 1) // CYF_TILE_PANEL * CYF_TILE_PANEL
    tl.lds = tl.step
    return tl


cdef inline int _tile_end(const Tiles* tl, int j0, int hi) noexcept nogil:
    # the end of the tile starting at key j0: packed tiles end on a panel boundary
    if tl.kt != NULL:
        return min(hi, tl.kbase + (j0 - tl.kbase) // CYF_TILE_PANEL * CYF_TILE_PANEL + tl.step)
    return min(hi, j0 + tl.step)


cdef float* _tile_mul(const Tiles* tl, const float* a, int lda, const float* b, int ldb, const float* bt,
                      int rows, int j0, int j1, int d_k, float alpha, float* s) noexcept nogil:
    # alpha * A[rows, d_k] B[j0:j1]^T into a [rows, j1 - j0] tile (rows tl.lds floats apart)
    # in s; returns the tile's first element: from bt (B packed from key tl.kbase), whose
    # panels may start before j0, or by sgemm when bt is NULL.
    cdef int ja
    if bt != NULL:
        ja = tl.kbase + (j0 - tl.kbase) // CYF_TILE_PANEL * CYF_TILE_PANEL
        cyf_tile_qk(a, lda, rows, bt + <long>(ja - tl.kbase) * d_k,
                    (j1 - ja + CYF_TILE_PANEL - 1) // CYF_TILE_PANEL, d_k, alpha, s, tl.lds)
        return s + (j0 - ja)
    sgemm_rm(False, True, rows, j1 - j0, d_k, alpha, a, lda, b + j0 * ldb, ldb, 0.0, s, tl.lds)
    return s


cdef inline void _tile_pv(const Tiles* tl, const float* p, int rows, const float* v, int ldv, int n, int d_k,
                          float* o, int ldo) noexcept nogil:
    # o[rows, d_k] += p[rows, n] (rows tl.lds apart) v[n, d_k]
    if tl.kt != NULL:
        cyf_tile_pv(p, tl.lds, rows, v, ldv, n, d_k, o, ldo)
    else:
        sgemm_rm(False, False, rows, d_k, n, 1.0, p, tl.lds, v, ldv, 1.0, o, ldo)


cdef inline void _tile_ptv(const Tiles* tl, const float* p, int rows, int n, const float* x, int ldx, int d_k,
                           float* o, int ldo) noexcept nogil:
    # o[n, d_k] += p[rows, n]^T (rows tl.lds apart) x[rows, d_k]: by sgemm on every CPU (a
    # register-tiled kernel broadcasting down P's columns ran slower than OpenBLAS here)
    sgemm_rm(True, False, n, d_k, rows, 1.0, p, tl.lds, x, ldx, 1.0, o, ldo)


cdef bint _tile_visible(int r0, int r1, int j0, int j1, int shift, int lk, bint causal, int window,
                        const uint8_t* mask, int ldm, float* s, int lds, int* row_lo, int* row_hi) noexcept nogil:
    # The keys of tile [j0, j1) each query r0..r1-1 may see: row_lo/row_hi[i - r0], relative
    # to j0; the scores s (rows lds apart) get -inf where the dense mask hides a key. False
    # when no row sees any key of the tile.
    cdef int i, j, a, z
    cdef bint seen = False
    cdef float* srow
    for i in range(r0, r1):
        _bounds(i, shift, lk, causal, window, &a, &z)
        a = max(a, j0)
        z = max(min(z, j1), a)
        row_lo[i - r0] = a - j0
        row_hi[i - r0] = z - j0
        seen = seen or z > a
        if mask != NULL:
            srow = s + (i - r0) * lds
            for j in range(a, z):
                if mask[i * ldm + j] == 0:
                    srow[j - j0] = -INFINITY
    return seen


cdef void _tile_forward(const Tiles* tl, const float* q, int ldq, const float* k, int ldk,
                        const float* v, int ldv, float* out, int ldo, int r0, int r1, int lq, int lk, int d_k,
                        float scale, bint causal, int window, const uint8_t* mask, int ldm, float* lse,
                        float* s, float* m, float* l, int* row_lo, int* row_hi, Dropout* drop) noexcept nogil:
    # Query rows r0..r1-1 of one (sequence, head) on the tiled path (pointers as in _attend_one):
    # for each key tile, S = scale Q K^T (in s: [_TILE_ROWS, tl.lds]), online softmax into
    # the running max m and sum l ([_TILE_ROWS] each), out = alpha out + dropout(exp(S - m)) V;
    # out /= l at the end, lse = m + log l.
    cdef int shift = lk - lq, rows = r1 - r0, i, j, lo, hi, j0, j1, w
    cdef float alpha
    cdef float* st
    for i in range(rows):
        m[i] = -INFINITY
        l[i] = 0.0
        memset(out + (r0 + i) * ldo, 0, sizeof(float) * d_k)
    _block_bounds(r0, r1, shift, lk, causal, window, &lo, &hi)
    j0 = lo
    while j0 < hi:
        j1 = _tile_end(tl, j0, hi)
        w = j1 - j0
        st = _tile_mul(tl, q + r0 * ldq, ldq, k, ldk, tl.kt, rows, j0, j1, d_k, scale, s)
        if _tile_visible(r0, r1, j0, j1, shift, lk, causal, window, mask, ldm, st, tl.lds, row_lo, row_hi):
            for i in range(rows):
                alpha = cyf_softmax_online(st + i * tl.lds, row_lo[i], row_hi[i], w, &m[i], &l[i])
                if alpha != 1.0:
                    cyf_attn_scale(out + (r0 + i) * ldo, d_k, alpha)
            if drop.threshold:
                _drop_block_ld(st, tl.lds, r0, r1, j0, w, drop)
            _tile_pv(tl, st, rows, v + j0 * ldv, ldv, w, d_k, out + r0 * ldo, ldo)
        j0 = j1
    for i in range(rows):
        if l[i] > 0:
            cyf_attn_scale(out + (r0 + i) * ldo, d_k, 1.0 / l[i])
        if lse != NULL:
            lse[r0 + i] = m[i] + logf(l[i]) if l[i] > 0 else -INFINITY


cdef inline bint _tile_kernels(int d_k) noexcept nogil:
    # attention_tile.h's kernels for this head width on this CPU? (never the thread count)
    return _TILE_KERNELS and d_k % 8 == 0 and cyf_tile_ok()


cdef void _tile_stats(const Tiles* tl, const float* q, int ldq, const float* k, int ldk,
                      const float* v, int ldv, const float* dout, int ldd, int r0, int r1, int lq, int lk,
                      int d_k, float scale, bint causal, int window, const uint8_t* mask, int ldm,
                      float* s, float* t, float* rl, float* rd, float* m, int* row_lo, int* row_hi,
                      Dropout* drop) noexcept nogil:
    # The backward's first pass when the forward's lse was not saved: per query row, its
    # log-sum-exp (rl) and D = sum_j P_j dP_j = rowsum(dO * O) (rd), by the online softmax
    # over the key tiles (S = scale Q K^T into s, dP = dropout(dO V^T) into t).
    cdef int shift = lk - lq, rows = r1 - r0, i, lo, hi, j0, j1, w
    cdef float alpha
    cdef float* st
    cdef float* tt
    for i in range(rows):
        m[i] = -INFINITY
        rl[i] = 0.0
        rd[i] = 0.0
    _block_bounds(r0, r1, shift, lk, causal, window, &lo, &hi)
    j0 = lo
    while j0 < hi:
        j1 = _tile_end(tl, j0, hi)
        w = j1 - j0
        st = _tile_mul(tl, q + r0 * ldq, ldq, k, ldk, tl.kt, rows, j0, j1, d_k, scale, s)
        if _tile_visible(r0, r1, j0, j1, shift, lk, causal, window, mask, ldm, st, tl.lds, row_lo, row_hi):
            tt = _tile_mul(tl, dout + r0 * ldd, ldd, v, ldv, tl.vt, rows, j0, j1, d_k, 1.0, t)
            if drop.threshold:
                _drop_block_ld(tt, tl.lds, r0, r1, j0, w, drop)
            for i in range(rows):
                alpha = cyf_softmax_online(st + i * tl.lds, row_lo[i], row_hi[i], w, &m[i], &rl[i])
                rd[i] = rd[i] * alpha + cyf_attn_dot(st + i * tl.lds, tt + i * tl.lds, w)
        j0 = j1
    for i in range(rows):
        if rl[i] > 0:
            rd[i] = rd[i] / rl[i]
            rl[i] = m[i] + logf(rl[i])
        else:
            rd[i] = 0.0
            rl[i] = -INFINITY


cdef void _tile_backward(const Tiles* tl, const float* q, int ldq, const float* k, int ldk,
                         const float* v, int ldv, const float* dout, int ldd, const float* o, int ldo,
                         const float* lse, float* dq, int lddq, float* dk, int lddk, float* dv, int lddv,
                         int lq, int lk, int d_k, float scale, bint causal, int window,
                         const uint8_t* mask, int ldm, float* s, float* t, float* u, float* rl, float* rd,
                         float* m, int* row_lo, int* row_hi, Dropout* drop) noexcept nogil:
    # One (sequence, head) on the tiled path; dk, dv rows [0, lk) must be zero on entry.
    # o [lq, d_k] and lse [lq] are the forward's output and log-sum-exp, or NULL (then
    # _tile_stats finds lse and D). Per query block, per key tile (s, t, u: [_TILE_ROWS,
    # tl.lds]):
    #   P = exp(S - lse); Pd = dropout(P); dV += Pd^T dO; dP = dropout(dO V^T);
    #   dS = scale P * (dP - D); dQ += dS K; dK += dS^T Q
    cdef int shift = lk - lq, r0, r1, rows, i, j, lo, hi, j0, j1, w
    cdef float* st
    cdef float* tt
    cdef float* ut
    r0 = 0
    while r0 < lq:
        r1 = min(lq, r0 + _TILE_ROWS)
        rows = r1 - r0
        for i in range(r0, r1):
            for j in range(d_k):
                dq[i * lddq + j] = 0.0
        _block_bounds(r0, r1, shift, lk, causal, window, &lo, &hi)
        if hi > lo:
            if lse != NULL:
                for i in range(rows):
                    rl[i] = lse[r0 + i]
                    rd[i] = cyf_attn_dot(dout + (r0 + i) * ldd, o + (r0 + i) * ldo, d_k)
            else:
                _tile_stats(tl, q, ldq, k, ldk, v, ldv, dout, ldd, r0, r1, lq, lk, d_k, scale, causal, window,
                            mask, ldm, s, t, rl, rd, m, row_lo, row_hi, drop)
        j0 = lo
        while j0 < hi:
            j1 = _tile_end(tl, j0, hi)
            w = j1 - j0
            st = _tile_mul(tl, q + r0 * ldq, ldq, k, ldk, tl.kt, rows, j0, j1, d_k, scale, s)
            if _tile_visible(r0, r1, j0, j1, shift, lk, causal, window, mask, ldm, st, tl.lds, row_lo, row_hi):
                for i in range(rows):
                    cyf_softmax_from_lse(st + i * tl.lds, row_lo[i], row_hi[i], w, rl[i])
                ut = st
                if drop.threshold:
                    ut = u + (st - s)
                    for i in range(rows):
                        for j in range(w):
                            ut[i * tl.lds + j] = st[i * tl.lds + j]
                    _drop_block_ld(ut, tl.lds, r0, r1, j0, w, drop)
                _tile_ptv(tl, ut, rows, w, dout + r0 * ldd, ldd, d_k, dv + j0 * lddv, lddv)
                tt = _tile_mul(tl, dout + r0 * ldd, ldd, v, ldv, tl.vt, rows, j0, j1, d_k, 1.0, t)
                if drop.threshold:
                    _drop_block_ld(tt, tl.lds, r0, r1, j0, w, drop)
                for i in range(rows):
                    cyf_attn_ds(st + i * tl.lds, tt + i * tl.lds, w, rd[i], scale)
                _tile_pv(tl, tt, rows, k + j0 * ldk, ldk, w, d_k, dq + r0 * lddq, lddq)
                _tile_ptv(tl, tt, rows, w, q + r0 * ldq, ldq, d_k, dk + j0 * lddk, lddk)
            j0 = j1
        r0 = r1


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


def _tile_config(rows=None, keys=None, min_keys=None, chunk=None, kernels=None, level=None, short_keys=None):
    """(rows, keys, min_keys, chunk, kernels) of the tiled path, after setting those given
    (tests force the path, odd tile edges and the sgemm fallback on small inputs with it;
    bench/ tunes it). ``kernels``: whether attention_tile.h's kernels may be used (they
    are only where the CPU has AVX2 and FMA: see ``tile_kernels``); ``level``: the highest
    kernel set allowed (2: AVX-512, 1: AVX2/FMA); ``short_keys``: whether the tiled path (with its
    kernels) also takes sequences of fewer than ``min_keys`` keys. Not thread-safe: call it only while no
    attention call is running."""
    global _TILE_ROWS, _TILE_KEYS, _TILE_MIN_KEYS, _TILE_CHUNK, _TILE_KERNELS, _SHORT_TILES
    if short_keys is not None:
        _SHORT_TILES = bool(short_keys)
    if rows is not None:
        if not 1 <= rows <= 4096:
            raise ValueError("rows must be in [1, 4096]")
        _TILE_ROWS = rows
    if keys is not None:
        if not 1 <= keys <= 65536:
            raise ValueError("keys must be in [1, 65536]")
        _TILE_KEYS = keys
    if min_keys is not None:
        _TILE_MIN_KEYS = max(int(min_keys), 0)
    if chunk is not None:
        if not 1 <= chunk <= 1 << 20:
            raise ValueError("chunk must be in [1, 2**20]")
        _TILE_CHUNK = chunk
    if kernels is not None:
        _TILE_KERNELS = bool(kernels)
    if level is not None:
        if level not in (1, 2):
            raise ValueError("level must be 1 (AVX2/FMA) or 2 (AVX-512)")
        cyf_tile_cap(level)
    return _TILE_ROWS, _TILE_KEYS, _TILE_MIN_KEYS, _TILE_CHUNK, bool(_TILE_KERNELS), bool(_SHORT_TILES)


def row_kernels(level=None):
    """The body of the row path (one query row against a range of keys: decoding, short
    sequences) on this CPU: "avx512" (attention_row.h, for head widths a multiple of 16 up
    to 128) or "portable". ``level`` 0 forces the portable body and 2 allows AVX-512 again
    (tests). Not thread-safe: call it only while no attention call is running."""
    if level is not None:
        if level not in (0, 2):
            raise ValueError("level must be 0 (portable) or 2 (AVX-512 where the CPU has it)")
        cyf_row_cap(level)
    return "avx512" if cyf_row_level() == 2 else "portable"


def tile_kernels():
    """The kernels multiplying the tiles of long sequences on this CPU: "avx512" or
    "avx2-fma" (attention_tile.h, for head widths divisible by 8), or "sgemm"."""
    return {2: "avx512", 1: "avx2-fma"}.get(cyf_tile_level(), "sgemm")


cdef inline void _prefetch_rows(const float* x, long ld, int n, int width) noexcept nogil:
    # every 64-byte line of rows x[i, 0:width], i < n, into L2
    cdef int i, c
    for i in range(n):
        c = 0
        while c < width:
            __builtin_prefetch(x + i * ld + c, 0, 2)
            c = c + 16
        __builtin_prefetch(x + i * ld + width - 1, 0, 2)


cdef inline bint _tiled(int lq, int lk, bint kernels) noexcept nogil:
    # the tiled path for this sequence? (its lengths and whether attention_tile.h's kernels
    # run here: never the thread count, so the forward and the backward agree). With the
    # kernels the tiled path beats the row path's sgemm calls at any key count
    # (_SHORT_TILES); without them, only for long keys.
    return lq > _ROW_PATH_MAX_Q and lk > 0 and (lk >= _TILE_MIN_KEYS or (_SHORT_TILES and kernels))


cdef inline int _chunk_rows() noexcept nogil:
    # _TILE_CHUNK rounded up to whole blocks of _TILE_ROWS
    return max(1, (_TILE_CHUNK + _TILE_ROWS - 1) // _TILE_ROWS) * _TILE_ROWS


cdef float* _lse_arg(lse, int n_heads, Py_ssize_t n_rows) except? NULL:
    # the optional [n_heads, Nq] float32 log-sum-exp array: its data pointer, or NULL
    cdef float[:, ::1] lse_v
    if lse is None:
        return NULL
    lse_v = lse
    if lse_v.shape[0] != n_heads or lse_v.shape[1] != n_rows:
        raise ValueError(f"lse must be C-contiguous float32 [n_heads, Nq] = [{n_heads}, {n_rows}]")
    return &lse_v[0, 0] if n_heads * n_rows > 0 else NULL


def attention_forward(const float[:, :] q, const float[:, :] k, const float[:, :] v,
                      float[:, :] out,
                      const int32_t[::1] q_start, const int32_t[::1] q_len,
                      const int32_t[::1] k_start, const int32_t[::1] k_len,
                      int n_heads, float scale=-1.0, bint causal=False, int window=-1,
                      mask=None, probs=None, float dropout=0.0, uint64_t seed=0, int n_threads=1,
                      lse=None):
    """Multi-head attention over packed sequences; see the module docstring.

    q, out: [Nq, d]; k, v: [Nk, d] (row-strided views allowed); d = n_heads * d_k.
    mask: optional uint8/bool [B or 1, Tq, Tk] with Tq >= max(q_len), Tk >= max(k_len).
    probs: optional float32 [B, n_heads, Tq, Tk] receiving the attention weights
    (zero where masked; before dropout). ``scale`` defaults to 1/sqrt(d_k).
    ``dropout`` > 0 drops attention weights (inverted dropout) with a mask that is a
    function of ``seed`` and the (query row, head, key) position, so
    ``attention_backward`` with the same seed regenerates it.
    lse: optional C-contiguous float32 [n_heads, Nq] receiving each query row's
    log-sum-exp of its scaled scores, log(sum_j exp(scale q.k_j)) over the visible keys
    (-inf for a row that sees none); ``attention_backward(..., out=out, lse=lse)`` then
    skips recomputing it.
    """
    cdef _Problem pb = _Problem(q, k, v, q_start, q_len, k_start, k_len, n_heads, scale, mask)
    cdef int d = pb.d, d_k = pb.d_k
    cdef int b, h, unit, n_units, lq, lk, block, blk, nb, r0, c0, c1, lo, hi, mid, plo
    cdef float[:, :, :, ::1] probs_v
    cdef float* probs_ptr = NULL
    cdef float* lse_ptr
    cdef long probs_bstride = 0, probs_hstride = 0, ldp = 0, rows_scratch = 0, tile_scratch = 0
    cdef float* scores
    cdef float* tile_s
    cdef float* kt
    cdef float* lse_row
    cdef int* bounds
    cdef int chunk = _chunk_rows()
    cdef bint kernels = _tile_kernels(d_k)
    cdef long kt_scratch = 0
    cdef Tiles tl
    cdef int ldq, ldk, ldv, ldo
    cdef int failed[1]
    cdef Dropout drop, mine
    cdef const uint8_t* mask_b
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    _set_dropout(&drop, dropout, seed)
    window = pb.clamp_window(window)
    _check_out(out, q, d, "out")
    lse_ptr = _lse_arg(lse, n_heads, q.shape[0])
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
    # Work units: (sequence, head) on the row and block paths, (sequence, head, chunk of
    # queries) on the tiled path, whose query blocks are independent in the forward.
    # first[b]: the first unit of sequence b (units ordered by sequence, head, chunk).
    first_arr = np.zeros(pb.batch + 1, np.int32)
    cdef int32_t[::1] first = first_arr
    cdef int32_t[::1] n_blocks = np.zeros(pb.batch, np.int32)
    cdef long total = 0
    for b in range(pb.batch):
        lq = q_len[b]
        lk = k_len[b]
        n_blocks[b] = (lq + chunk - 1) // chunk if probs is None and _tiled(lq, lk, kernels) else 0
        if lq > 0 and n_blocks[b] == 0:
            rows_scratch = max(rows_scratch, (block + 2) * max(lk, 1))
        elif lq > 0:
            # a score tile of whole panels, m and l, and K of the chunk packed in panels
            tile_scratch = _TILE_ROWS * (_TILE_KEYS + CYF_TILE_PANEL) + 2 * _TILE_ROWS
            if kernels:
                kt_scratch = max(kt_scratch, <long>(lk + CYF_TILE_PANEL) * d_k)
        total += n_heads * max(n_blocks[b], 1)
        if total > 2147483647:
            raise ValueError("attention_forward: too many sequences x heads x blocks")
        first[b + 1] = <int32_t>total
    n_units = <int>total
    cdef const float* qp = &q[0, 0]
    cdef float* op = &out[0, 0]
    cdef const float* kp = &k[0, 0] if k.shape[0] else NULL
    cdef const float* vp = &v[0, 0] if v.shape[0] else NULL
    failed[0] = 0
    with nogil, parallel(num_threads=max(1, min(n_threads, n_units))):
        # this thread's buffers (scratch.h), kept between calls: no fresh pages per call
        scores = <float*>cyf_scratch_bytes(1, sizeof(float) * max(rows_scratch + tile_scratch + kt_scratch, 1))
        bounds = <int*>cyf_scratch_bytes(2, sizeof(int) * 2 * _TILE_ROWS)
        if scores == NULL or bounds == NULL:
            failed[0] = 1
        else:
            tile_s = scores + rows_scratch
            kt = tile_s + tile_scratch if kernels else NULL
            for unit in prange(n_units, schedule='dynamic'):
                # b: the last sequence with first[b] <= unit (binary search)
                lo = 0
                hi = pb.batch
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if first[mid] <= unit:
                        lo = mid
                    else:
                        hi = mid
                b = lo
                nb = max(n_blocks[b], 1)
                h = (unit - first[b]) // nb
                blk = (unit - first[b]) % nb
                lq = q_len[b]
                lk = k_len[b]
                if lq == 0:
                    continue
                if blk == 0 and h + 1 < n_heads and lk > 0:
                    # the next head's slices of this sequence's rows, into L2 while this head
                    # computes (rows are d floats apart: the prefetchers miss most of them)
                    _prefetch_rows(qp + <long>q_start[b] * ldq + (h + 1) * d_k, ldq, lq, d_k)
                    _prefetch_rows(kp + <long>k_start[b] * ldk + (h + 1) * d_k, ldk, lk, d_k)
                    _prefetch_rows(vp + <long>k_start[b] * ldv + (h + 1) * d_k, ldv, lk, d_k)
                    _prefetch_rows(op + <long>q_start[b] * ldo + (h + 1) * d_k, ldo, lq, d_k)
                elif n_heads == 1 and blk == 0 and lq <= _ROW_PATH_MAX_Q and b + 1 < pb.batch:
                    # decoding's one-head lanes: the next lane's keys and values (another
                    # block of the cache, which the prefetchers cannot guess) while this one runs
                    _prefetch_rows(kp + <long>k_start[b + 1] * ldk, ldk, min(k_len[b + 1], _PREFETCH_KEYS), d_k)
                    _prefetch_rows(vp + <long>k_start[b + 1] * ldv, ldv, min(k_len[b + 1], _PREFETCH_KEYS), d_k)
                mine = _for_item(drop, q_start[b], n_heads, h)
                lse_row = lse_ptr + <long>h * q.shape[0] + q_start[b] if lse_ptr != NULL else NULL
                mask_b = pb.mask_of(b) if lk > 0 else NULL
                if n_blocks[b] > 0:
                    c0 = blk * chunk
                    c1 = min(lq, c0 + chunk)
                    plo = 0
                    if kt != NULL:  # pack the keys the chunk can see, from a panel boundary
                        _block_bounds(c0, c1, lk - lq, lk, causal, window, &lo, &hi)
                        plo = max(lo, 0) // CYF_TILE_PANEL * CYF_TILE_PANEL
                        if hi > plo:
                            cyf_tile_pack(kp + (<long>k_start[b] + plo) * ldk + h * d_k, ldk, hi - plo, d_k, kt)
                    tl = _tiles(kt, NULL, plo)
                    r0 = c0
                    while r0 < c1:
                        _tile_forward(&tl, qp + <long>q_start[b] * ldq + h * d_k, ldq,
                                      kp + <long>k_start[b] * ldk + h * d_k, ldk,
                                      vp + <long>k_start[b] * ldv + h * d_k, ldv,
                                      op + <long>q_start[b] * ldo + h * d_k, ldo,
                                      r0, min(c1, r0 + _TILE_ROWS), lq, lk, d_k, pb.scale, causal, window,
                                      mask_b, pb.ldm, lse_row, tile_s,
                                      tile_s + _TILE_ROWS * (_TILE_KEYS + CYF_TILE_PANEL),
                                      tile_s + _TILE_ROWS * (_TILE_KEYS + CYF_TILE_PANEL) + _TILE_ROWS,
                                      bounds, bounds + _TILE_ROWS, &mine)
                        r0 = r0 + _TILE_ROWS
                    continue
                _attend_one(qp + <long>q_start[b] * ldq + h * d_k, ldq,
                            kp + <long>k_start[b] * ldk + h * d_k if lk > 0 else kp, ldk,
                            vp + <long>k_start[b] * ldv + h * d_k if lk > 0 else vp, ldv,
                            op + <long>q_start[b] * ldo + h * d_k, ldo,
                            lq, lk, d_k, pb.scale, causal, window, mask_b, pb.ldm,
                            probs_ptr + b * probs_bstride + h * probs_hstride if probs_ptr != NULL else NULL,
                            ldp, lse_row, scores, block, &mine)

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
        _block_probs(q, ldq, k, ldk, r0, r1, lo, hi, shift, d_k, scale, causal, window, mask, ldm, p, NULL)
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
                       mask=None, float dropout=0.0, uint64_t seed=0, int n_threads=1,
                       out=None, lse=None):
    """Gradients of ``attention_forward`` (same arguments) given ``dout`` [Nq, d].

    ``dq`` [Nq, d] and ``dk``, ``dv`` [Nk, d] are overwritten on the rows the sequences
    cover (row-strided views allowed: the column blocks of a fused Q/K/V gradient). The
    weights are recomputed from q and k, and the dropout mask from ``seed``. Sequences must
    not share query or key rows (each row's gradient has one writer). ``out`` [Nq, d] and
    ``lse`` [n_heads, Nq], the forward's output and log-sum-exp (given together, from a
    forward with the same arguments), spare long sequences a pass that recomputes them.
    """
    cdef _Problem pb = _Problem(q, k, v, q_start, q_len, k_start, k_len, n_heads, scale, mask)
    cdef int d = pb.d, d_k = pb.d_k
    cdef int b, h, item, n_items, lq, lk, block = _BLOCK_ROWS
    cdef long rows_scratch = 0, tile_scratch = 0, rows_lk = 1, kt_scratch = 0
    cdef long tile_len = _TILE_ROWS * (_TILE_KEYS + CYF_TILE_PANEL)
    cdef bint kernels = _tile_kernels(d_k)
    cdef Tiles tl
    cdef float* scratch
    cdef float* tiles
    cdef float* kt
    cdef float* vt
    cdef int* bounds
    cdef float* lse_ptr
    cdef const float[:, :] out_v
    cdef const float* outp = NULL
    cdef int ldo = d
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
    if (out is None) != (lse is None):
        raise ValueError("attention_backward: give the forward's out and lse together, or neither")
    lse_ptr = _lse_arg(lse, n_heads, q.shape[0])
    if out is not None:
        out_v = out
        if out_v.shape[0] != q.shape[0] or out_v.shape[1] != d or not _rows_contiguous(out_v):
            raise ValueError(f"out must be the forward's output, [{q.shape[0]}, {d}] with contiguous rows")
        if q.shape[0]:
            outp = &out_v[0, 0]
            ldo = _ld(out_v)
    if _ranges_overlap(q_start, q_len) or _ranges_overlap(k_start, k_len):
        raise ValueError("attention_backward: sequences share query or key rows")
    if pb.batch == 0:
        return
    for b in range(pb.batch):
        if q_len[b] > 0 and _tiled(q_len[b], k_len[b], kernels):
            # s, t, u tiles of whole panels, lse, D and m, and K and V packed in panels
            tile_scratch = 3 * tile_len + 3 * _TILE_ROWS
            if kernels:
                kt_scratch = max(kt_scratch, 2 * <long>(k_len[b] + CYF_TILE_PANEL) * d_k)
        elif q_len[b] > 0:
            rows_lk = max(rows_lk, k_len[b])
            rows_scratch = (2 * block + 3) * rows_lk
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
        scratch = <float*>cyf_scratch_bytes(1, sizeof(float) * max(rows_scratch + tile_scratch + kt_scratch, 1))
        bounds = <int*>cyf_scratch_bytes(2, sizeof(int) * 2 * _TILE_ROWS)
        if scratch == NULL or bounds == NULL:
            failed[0] = 1
        else:
            tiles = scratch + rows_scratch
            kt = tiles + tile_scratch if kernels else NULL
            vt = kt + kt_scratch // 2 if kernels else NULL
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
                if _tiled(lq, lk, kernels):
                    _zero_block(dkp + <long>k_start[b] * lddk + h * d_k, lddk, lk, d_k)
                    _zero_block(dvp + <long>k_start[b] * lddv + h * d_k, lddv, lk, d_k)
                    if kt != NULL:
                        cyf_tile_pack(kp + <long>k_start[b] * ldk + h * d_k, ldk, lk, d_k, kt)
                        cyf_tile_pack(vp + <long>k_start[b] * ldv + h * d_k, ldv, lk, d_k, vt)
                    tl = _tiles(kt, vt, 0)
                    _tile_backward(&tl, qp + <long>q_start[b] * ldq + h * d_k, ldq,
                                   kp + <long>k_start[b] * ldk + h * d_k, ldk,
                                   vp + <long>k_start[b] * ldv + h * d_k, ldv,
                                   dop + <long>q_start[b] * ldd + h * d_k, ldd,
                                   outp + <long>q_start[b] * ldo + h * d_k if outp != NULL else NULL, ldo,
                                   lse_ptr + <long>h * q.shape[0] + q_start[b] if lse_ptr != NULL else NULL,
                                   dqp + <long>q_start[b] * lddq + h * d_k, lddq,
                                   dkp + <long>k_start[b] * lddk + h * d_k, lddk,
                                   dvp + <long>k_start[b] * lddv + h * d_k, lddv,
                                   lq, lk, d_k, pb.scale, causal, window, pb.mask_of(b), pb.ldm,
                                   tiles, tiles + tile_len, tiles + 2 * tile_len, tiles + 3 * tile_len,
                                   tiles + 3 * tile_len + _TILE_ROWS, tiles + 3 * tile_len + 2 * _TILE_ROWS,
                                   bounds, bounds + _TILE_ROWS, &mine)
                    continue
                _attend_one_backward(qp + <long>q_start[b] * ldq + h * d_k, ldq,
                                     kp + <long>k_start[b] * ldk + h * d_k, ldk,
                                     vp + <long>k_start[b] * ldv + h * d_k, ldv,
                                     dop + <long>q_start[b] * ldd + h * d_k, ldd,
                                     dqp + <long>q_start[b] * lddq + h * d_k, lddq,
                                     dkp + <long>k_start[b] * lddk + h * d_k, lddk,
                                     dvp + <long>k_start[b] * lddv + h * d_k, lddv,
                                     lq, lk, d_k, pb.scale, causal, window, pb.mask_of(b), pb.ldm,
                                     scratch, scratch + (block + 3) * rows_lk, block, &mine)

    if failed[0]:
        raise MemoryError("attention_backward: could not allocate the score scratch")


cdef inline void _zero_block(float* a, int lda, int rows, int cols) noexcept nogil:
    cdef int i, j
    for i in range(rows):
        for j in range(cols):
            a[i * lda + j] = 0.0
