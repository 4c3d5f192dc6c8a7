# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Linear layers: row-major SGEMM over SciPy's BLAS for many rows, cyformer's own kernels for
the few rows of decoding (see the dispatch notes below), split across OpenMP threads.

Weights keep PyTorch's ``nn.Linear`` layout ``[out_features, in_features]``, so a
projection is ``out[M, N] = x[M, K] @ weight[N, K]^T + bias[N]``.

Threading: BLAS is called single-threaded from every OpenMP thread (the caller holds
BLAS at one thread, see ``cyformer.threads``). Many rows (training, encoder, batched
decoding) split by rows; few rows (step-wise decoding) split the output columns, so
each thread streams its own share of the weight matrix.
"""
from cython.parallel cimport prange
from _common cimport sgemm_rm, CYFORMER_HAVE_OPENMP

cdef extern from "skinny_gemm.h" nogil:
    void cyf_skinny_gemm(const float* x, long ldx, const float* w, long ldw, const float* bias,
                         float* out, long ldo, int M, int n0, int n1, int K, int accumulate)

cdef extern from "gemm_panel.h" nogil:
    int CYF_PANEL, CYF_PANEL_AVX2, CYF_PANEL_AVX512
    int cyf_panel_ok()
    int cyf_panel_avx512_ok()
    int cyf_panel_body()
    int cyf_panel_set_body(int body)
    void cyf_panel_pack(const float* x, long ldx, int M, int K, float* xt)
    void cyf_panel_gemm(const float* xt, int M, const float* w, long ldw, const float* bias,
                        float* out, long ldo, int n0, int n1, int K, int accumulate)
    float* cyf_scratch(size_t n)

# Which kernel multiplies, by the rows M of x (measured on Zen 3 with weights not in cache:
# bench/gemm_paths.py, bench/RESULTS.md; settable for benchmarking with set_skinny_rows and
# set_panel_rows):
# - 8 to 256 rows, while the packed rows fit in L2 (M x K <= _PANEL_MAX_PACK floats): the
#   panel kernel (gemm_panel.h, AVX2/FMA, when the CPU has it). BLAS packs the whole weight
#   matrix on every call, which at decoding sizes costs more than the product;
# - fewer rows, or no AVX2/FMA, up to _SKINNY_MAX_ROWS: the skinny dot-product kernel
#   (skinny_gemm.h), bound by reading the weights;
# - otherwise BLAS.
cdef int _SKINNY_MAX_ROWS = 48
cdef int _PANEL_MIN_ROWS = 8
cdef int _PANEL_MAX_ROWS = 256
# On several threads, from this many rows per thread each thread packs its own rows
# (otherwise the threads split the columns and every one runs all the rows).
cdef int _PANEL_SPLIT_ROWS = 64
# Floats of packed x the panel kernel re-reads for every block of 6 weight rows: 256 x 512
# floats are 512 KiB, Zen 3's L2. Past it (256 rows x K = 2048 is 2 MiB) BLAS was faster
# (bench/RESULTS.md).
cdef long _PANEL_MAX_PACK = 256 * 512

# Below this many multiply-adds a GEMM is not worth a parallel region.
cdef long _MIN_PARALLEL_WORK = 1 << 18
# Row chunks are multiples of this, matching OpenBLAS's register blocking.
cdef int _ROW_ALIGN = 16
cdef int _COL_ALIGN = 64


cdef inline void _linear_block(const float* x, int ldx, const float* w, int ldw,
                               const float* bias, float* out, int ldo,
                               int r0, int r1, int c0, int c1, int k,
                               bint accumulate) noexcept nogil:
    # out[r0:r1, c0:c1] (+)= x[r0:r1, :] @ w[c0:c1, :]^T (+ bias[c0:c1])
    cdef int i, j
    cdef float beta = 1.0 if accumulate else 0.0
    if r1 <= r0 or c1 <= c0:
        return
    if bias != NULL:
        if accumulate:
            for i in range(r0, r1):
                for j in range(c0, c1):
                    out[<long>i * ldo + j] += bias[j]
        else:
            for i in range(r0, r1):
                for j in range(c0, c1):
                    out[<long>i * ldo + j] = bias[j]
            beta = 1.0
    sgemm_rm(False, True, r1 - r0, c1 - c0, k, 1.0,
             x + <long>r0 * ldx, ldx, w + <long>c0 * ldw, ldw, beta, out + <long>r0 * ldo + c0, ldo)


cdef inline int _split(int total, int parts, int t, int align) noexcept nogil:
    # Start of part t when splitting [0, total) into `parts` aligned chunks.
    cdef long chunk = (total + parts - 1) // parts
    chunk = ((chunk + align - 1) // align) * align
    cdef long start = chunk * t
    return <int>(start if start < total else total)


cdef void _panel_rows(const float* x, int ldx, const float* w, int ldw, const float* bias,
                      float* out, int ldo, int r0, int r1, int n, int k,
                      bint accumulate) noexcept nogil:
    # out[r0:r1, :] by the panel kernel, packing these rows into this thread's scratch
    cdef float* xt
    if r1 <= r0:
        return
    xt = cyf_scratch(<size_t>((r1 - r0 + CYF_PANEL - 1) // CYF_PANEL) * CYF_PANEL * k)
    if xt == NULL:  # out of memory: BLAS needs no scratch
        _linear_block(x, ldx, w, ldw, bias, out, ldo, r0, r1, 0, n, k, accumulate)
        return
    cyf_panel_pack(x + <long>r0 * ldx, ldx, r1 - r0, k, xt)
    cyf_panel_gemm(xt, r1 - r0, w, ldw, bias, out + <long>r0 * ldo, ldo, 0, n, k, accumulate)


cdef void linear_nogil(const float* x, int ldx, const float* w, int ldw, const float* bias,
                       float* out, int ldo, int m, int n, int k, bint accumulate,
                       int n_threads) noexcept nogil:
    cdef int t
    cdef long work = <long>m * n * k
    cdef float* xt
    cdef bint parallel = n_threads > 1 and work >= _MIN_PARALLEL_WORK and CYFORMER_HAVE_OPENMP
    # The same rows and sizes take the panel kernel whatever the thread count, and both of
    # its splits keep each output's summation order: 1 and 2 threads give the same bits.
    if k > 0 and _PANEL_MIN_ROWS <= m <= _PANEL_MAX_ROWS and <long>m * k <= _PANEL_MAX_PACK \
            and cyf_panel_ok():
        if parallel and m >= _PANEL_SPLIT_ROWS * n_threads:
            # enough rows for each thread to pack its own share and sweep all the weights
            for t in prange(n_threads, num_threads=n_threads, schedule='static'):
                _panel_rows(x, ldx, w, ldw, bias, out, ldo, _split(m, n_threads, t, CYF_PANEL),
                            _split(m, n_threads, t + 1, CYF_PANEL), n, k, accumulate)
            return
        # x packed once (caller's thread), read by every thread's share of the columns
        xt = cyf_scratch(<size_t>((m + CYF_PANEL - 1) // CYF_PANEL) * CYF_PANEL * k)
        if xt != NULL:
            cyf_panel_pack(x, ldx, m, k, xt)
            if not parallel:
                cyf_panel_gemm(xt, m, w, ldw, bias, out, ldo, 0, n, k, accumulate)
            else:
                for t in prange(n_threads, num_threads=n_threads, schedule='static'):
                    cyf_panel_gemm(xt, m, w, ldw, bias, out, ldo,
                                   _split(n, n_threads, t, _COL_ALIGN), _split(n, n_threads, t + 1, _COL_ALIGN),
                                   k, accumulate)
            return
    if m <= _SKINNY_MAX_ROWS:
        if n_threads <= 1 or work < _MIN_PARALLEL_WORK or not CYFORMER_HAVE_OPENMP:
            cyf_skinny_gemm(x, ldx, w, ldw, bias, out, ldo, m, 0, n, k, accumulate)
        else:
            for t in prange(n_threads, num_threads=n_threads, schedule='static'):
                cyf_skinny_gemm(x, ldx, w, ldw, bias, out, ldo, m,
                                _split(n, n_threads, t, _COL_ALIGN), _split(n, n_threads, t + 1, _COL_ALIGN),
                                k, accumulate)
        return
    if n_threads <= 1 or work < _MIN_PARALLEL_WORK or not CYFORMER_HAVE_OPENMP:
        _linear_block(x, ldx, w, ldw, bias, out, ldo, 0, m, 0, n, k, accumulate)
        return
    if m >= 4 * _ROW_ALIGN * n_threads:
        for t in prange(n_threads, num_threads=n_threads, schedule='static'):
            _linear_block(x, ldx, w, ldw, bias, out, ldo,
                          _split(m, n_threads, t, _ROW_ALIGN), _split(m, n_threads, t + 1, _ROW_ALIGN),
                          0, n, k, accumulate)
    else:
        for t in prange(n_threads, num_threads=n_threads, schedule='static'):
            _linear_block(x, ldx, w, ldw, bias, out, ldo, 0, m,
                          _split(n, n_threads, t, _COL_ALIGN), _split(n, n_threads, t + 1, _COL_ALIGN),
                          k, accumulate)


cdef inline int _ld(const float[:, :] a, str name) except -1:
    if a.shape[0] > 1 and a.strides[1] != sizeof(float):
        raise ValueError(f"{name}: rows must be contiguous (inner stride {a.strides[1]})")
    if a.strides[0] % sizeof(float):
        raise ValueError(f"{name}: row stride is not a multiple of 4 bytes")
    if a.shape[1] > 1 and a.strides[1] != sizeof(float):
        raise ValueError(f"{name}: rows must be contiguous")
    if a.shape[0] > 1 and a.strides[0] < <Py_ssize_t>(a.shape[1] * sizeof(float)):
        raise ValueError(f"{name}: rows must not be reversed or overlap (row stride {a.strides[0]} "
                         f"bytes for rows of {a.shape[1]} floats)")
    return max(<int>(a.strides[0] // sizeof(float)), <int>a.shape[1], 1)


def linear_forward(const float[:, :] x, const float[:, ::1] weight, bias, float[:, :] out,
                   bint accumulate=False, int n_threads=1):
    """out[M, N] (+)= x[M, K] @ weight[N, K]^T + bias[N].

    ``x`` and ``out`` may be row-strided views (for example the K/V columns of a fused
    projection); rows must be contiguous. ``accumulate`` adds into ``out`` (residual).
    """
    cdef int m = x.shape[0], k = x.shape[1], n = weight.shape[0]
    cdef const float[::1] b
    cdef const float* bias_ptr = NULL
    if weight.shape[1] != k:
        raise ValueError(f"weight is [{weight.shape[0]}, {weight.shape[1]}], expected [N, {k}]")
    if out.shape[0] != m or out.shape[1] != n:
        raise ValueError(f"out is [{out.shape[0]}, {out.shape[1]}], expected [{m}, {n}]")
    if bias is not None:
        b = bias
        if b.shape[0] != n:
            raise ValueError(f"bias has {b.shape[0]} entries, expected {n}")
        bias_ptr = &b[0]
    if m == 0 or n == 0:
        return
    cdef int ldx = _ld(x, "x"), ldo = _ld(out, "out")
    with nogil:
        linear_nogil(&x[0, 0], ldx, &weight[0, 0], k, bias_ptr, &out[0, 0], ldo,
                     m, n, k, accumulate, n_threads)


def gemm(const float[:, :] a, const float[:, :] b, float[:, :] c, bint trans_a=False,
         bint trans_b=False, float alpha=1.0, float beta=0.0):
    """Row-major c = alpha * op(a) @ op(b) + beta * c, single-threaded BLAS (test/utility)."""
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    if (a.shape[1] if trans_a else a.shape[0]) != m:
        raise ValueError("a does not match c's rows")
    if (b.shape[1] if trans_b else b.shape[0]) != k or (b.shape[0] if trans_b else b.shape[1]) != n:
        raise ValueError("b does not match a and c")
    if m == 0 or n == 0:
        return
    cdef int lda = _ld(a, "a"), ldb = _ld(b, "b"), ldc = _ld(c, "c")
    with nogil:
        sgemm_rm(trans_a, trans_b, m, n, k, alpha, &a[0, 0], lda, &b[0, 0], ldb, beta,
                 &c[0, 0], ldc)


def set_panel_rows(int min_rows, int max_rows, long max_pack=-1):
    """Use the panel kernel for min_rows..max_rows rows (an empty range disables it) while the
    rows packed per call hold at most ``max_pack`` floats (unchanged when negative); returns
    the previous (min_rows, max_rows, max_pack)."""
    global _PANEL_MIN_ROWS, _PANEL_MAX_ROWS, _PANEL_MAX_PACK
    old = (_PANEL_MIN_ROWS, _PANEL_MAX_ROWS, _PANEL_MAX_PACK)
    _PANEL_MIN_ROWS, _PANEL_MAX_ROWS = min_rows, max_rows
    if max_pack >= 0:
        _PANEL_MAX_PACK = max_pack
    return old


def panel_kernel_available():
    """Whether this CPU runs the panel kernel (AVX2 and FMA on x86-64)."""
    return bool(cyf_panel_ok())


PANEL_BODIES = ("avx512", "avx2")


def panel_body():
    """The panel kernel's body in use: "avx512" (zmm, run-time choice where the CPU has
    AVX-512F and AVX-512VL) or "avx2"."""
    return "avx512" if cyf_panel_body() == CYF_PANEL_AVX512 else "avx2"


def set_panel_body(name):
    """Force the panel kernel's body ("avx512", "avx2"; None: the run-time choice); returns
    the previous name. ValueError when this CPU lacks it."""
    old = panel_body()
    if name is None:
        cyf_panel_set_body(-1)
        return old
    if name not in PANEL_BODIES:
        raise ValueError(f"panel body must be one of {PANEL_BODIES}, got {name!r}")
    if not cyf_panel_set_body(CYF_PANEL_AVX512 if name == "avx512" else CYF_PANEL_AVX2):
        raise ValueError(f"panel body {name!r} needs {'AVX-512F and AVX-512VL' if name == 'avx512' else 'AVX2 and FMA'}, "
                         f"which this CPU does not have")
    return old


def panel_body_supported(str name):
    """Whether this CPU runs the panel body ``name``."""
    if name not in PANEL_BODIES:
        raise ValueError(f"panel body must be one of {PANEL_BODIES}, got {name!r}")
    return bool(cyf_panel_avx512_ok() if name == "avx512" else cyf_panel_ok())


def set_skinny_rows(int rows):
    """Use the skinny kernel up to ``rows`` rows (0 disables it); returns the previous value."""
    global _SKINNY_MAX_ROWS
    old = _SKINNY_MAX_ROWS
    _SKINNY_MAX_ROWS = rows
    return old


cdef void linear_backward_nogil(const float* x, int ldx, const float* w, int ldw,
                                const float* dout, int ldd, float* dx, int lddx,
                                float* dw, float* db, int m, int n, int k,
                                bint accumulate_dx, int n_threads) noexcept nogil:
    # dx[M, K] (+)= dout[M, N] @ w[N, K]; dw[N, K] += dout^T @ x; db[N] += sum_rows(dout).
    # dx splits by rows and dw/db by output features, so no two threads write one element.
    cdef int t, r0, r1, c0, c1, i, j
    cdef float beta = 1.0 if accumulate_dx else 0.0
    if n_threads <= 1 or <long>m * n * k < _MIN_PARALLEL_WORK or not CYFORMER_HAVE_OPENMP:
        n_threads = 1
    for t in prange(n_threads, num_threads=n_threads, schedule='static'):
        if dx != NULL:
            r0 = _split(m, n_threads, t, _ROW_ALIGN)
            r1 = _split(m, n_threads, t + 1, _ROW_ALIGN)
            if r1 > r0:
                sgemm_rm(False, False, r1 - r0, k, n, 1.0, dout + <long>r0 * ldd, ldd, w, ldw, beta,
                         dx + <long>r0 * lddx, lddx)
        c0 = _split(n, n_threads, t, _ROW_ALIGN)
        c1 = _split(n, n_threads, t + 1, _ROW_ALIGN)
        if c1 > c0:
            if dw != NULL:
                sgemm_rm(True, False, c1 - c0, k, m, 1.0, dout + c0, ldd, x, ldx, 1.0,
                         dw + <long>c0 * k, k)
            if db != NULL:
                for i in range(m):
                    for j in range(c0, c1):
                        db[j] += dout[<long>i * ldd + j]


def linear_backward(const float[:, :] x, const float[:, ::1] weight, const float[:, :] dout,
                    dx, dweight, dbias, bint accumulate_dx=False, int n_threads=1):
    """Gradients of ``out = x @ weight^T + bias`` given ``dout`` [M, N].

    ``dx`` [M, K] is overwritten (or added to with ``accumulate_dx``); ``dweight`` [N, K]
    and ``dbias`` [N] are always accumulated into (one zero-grad per step, as in llm.c, lets
    tied weights sum). Any of the three may be None. Row-strided views are allowed for
    ``x``, ``dout`` and ``dx`` (the Q/K/V column blocks of a fused projection).
    """
    cdef int m = x.shape[0], k = x.shape[1], n = weight.shape[0]
    cdef float[:, :] dx_v
    cdef float[:, ::1] dw_v
    cdef float[::1] db_v
    cdef float* dx_ptr = NULL
    cdef float* dw_ptr = NULL
    cdef float* db_ptr = NULL
    cdef int lddx = k
    if weight.shape[1] != k:
        raise ValueError(f"weight is [{weight.shape[0]}, {weight.shape[1]}], expected [N, {k}]")
    if dout.shape[0] != m or dout.shape[1] != n:
        raise ValueError(f"dout is [{dout.shape[0]}, {dout.shape[1]}], expected [{m}, {n}]")
    if dx is not None:
        dx_v = dx
        if dx_v.shape[0] != m or dx_v.shape[1] != k:
            raise ValueError(f"dx is [{dx_v.shape[0]}, {dx_v.shape[1]}], expected [{m}, {k}]")
    if dweight is not None:
        dw_v = dweight
        if dw_v.shape[0] != n or dw_v.shape[1] != k:
            raise ValueError(f"dweight is [{dw_v.shape[0]}, {dw_v.shape[1]}], expected [{n}, {k}]")
    if dbias is not None:
        db_v = dbias
        if db_v.shape[0] != n:
            raise ValueError(f"dbias has {db_v.shape[0]} entries, expected {n}")
    if m == 0 or n == 0 or k == 0:
        if dx is not None and not accumulate_dx and m and k:
            dx_v[...] = 0.0
        return
    if dx is not None:
        lddx = _ld(dx_v, "dx")
        dx_ptr = &dx_v[0, 0]
    if dweight is not None:
        dw_ptr = &dw_v[0, 0]
    if dbias is not None:
        db_ptr = &db_v[0]
    cdef int ldx = _ld(x, "x"), ldd = _ld(dout, "dout")
    with nogil:
        linear_backward_nogil(&x[0, 0], ldx, &weight[0, 0], k, &dout[0, 0], ldd, dx_ptr, lddx,
                              dw_ptr, db_ptr, m, n, k, accumulate_dx, n_threads)
