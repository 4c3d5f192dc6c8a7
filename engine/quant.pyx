# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Quantized linear layers: int8 weights with per-row scales (qgemm.h) and bf16 weights
(bgemm.h), out[M, N] (+)= x[M, K] @ W[N, K]^T + bias[N] with float32 x, out and bias.

int8: the activations are quantized per row at run time (symmetric, scale = max|x| / 127),
multiplied exactly in int32 and dequantized once per output. bf16: float32 accumulation.
The kernel body is chosen once from cpuid (``int8_path()`` / ``bf16_path()`` name it) and can
be forced for tests (``set_int8_path`` / ``set_bf16_path``). Threads split the output columns
(few rows, decoding) or the rows (many rows); each output is computed by one thread in one
fixed order, so results do not depend on the thread count (bitwise: the int8 sums are exact).
"""
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t

import numpy as np

from _common cimport CYFORMER_HAVE_OPENMP

cdef extern from "scratch.h" nogil:
    void* cyf_scratch_bytes(int slot, size_t nbytes)

cdef extern from "qgemm.h" nogil:
    int CYF_Q_PORTABLE, CYF_Q_AVX2, CYF_Q_AVXVNNI, CYF_Q_VNNI256, CYF_Q_VNNI512, CYF_Q_AMX
    int CYF_QA_MIN_ROWS
    int cyf_qa_status()
    int cyf_qa_selfcheck(int model)
    void cyf_qpa_gemm(int path, const uint8_t* xq, long ldq, const float* xs, int m0, int m1,
                      const int8_t* p, const float* ws, const int32_t* comp, const float* bias,
                      float* out, long ldo, int n0, int n1, int K, int accumulate, int32_t* raw,
                      long ldr)
    int cyf_q_shifted(int path)
    int cyf_q_supported(int path)
    int cyf_q_best()
    void cyf_q_quantize_row(const float* x, int K, uint8_t* q, float* scale, int shift)
    void cyf_q_compensation(const int8_t* w, long ldw, int N, int K, int32_t* comp)
    void cyf_q_gemm(int path, const uint8_t* xq, long ldq, const float* xs, int m0, int m1,
                    const int8_t* w, long ldw, const float* ws, const int32_t* comp,
                    const float* bias, float* out, long ldo, int n0, int n1, int K,
                    int accumulate, int32_t* raw, long ldr)
    int CYF_QP_COLS
    long cyf_qp_size(int N, int K)
    void cyf_qp_pack(const int8_t* w, long ldw, int N, int K, int8_t* p)
    void cyf_qp_unpack(const int8_t* p, int K, int n0, int n1, int8_t* w, long ldw)
    void cyf_qp_gemm(const uint8_t* xq, long ldq, const float* xs, int m0, int m1, const int8_t* p,
                     const float* ws, const int32_t* comp, const float* bias, float* out, long ldo,
                     int n0, int n1, int K, int accumulate, int32_t* raw, long ldr)

cdef extern from "amx.h" nogil:
    int CYF_AMX_OK, CYF_AMX_NO_CPU, CYF_AMX_NO_XCR0, CYF_AMX_NO_PERM, CYF_AMX_BAD_SELFCHECK, CYF_AMX_OFF
    int cyf_amx_emulate
    long cyf_amx_ops, cyf_amx_faults

cdef extern from "bgemm.h" nogil:
    int CYF_B_F32, CYF_B_AVX512BF16, CYF_B_AMX
    int CYF_BA_MIN_ROWS
    int cyf_ba_status()
    int cyf_ba_selfcheck(int model)
    long cyf_ba_size(int M, int K)
    void cyf_ba_pack(const float* x, long ldx, int M, int K, int b0, int b1, uint16_t* xp)
    void cyf_ba_gemm(const uint16_t* xp, int m0, int m1, const uint16_t* w, long ldw, const float* bias,
                     float* out, long ldo, int n0, int n1, int K, int accumulate)
    int cyf_b_supported(int path)
    int cyf_b_best()
    int cyf_b_packs(int path)
    void cyf_bf16_round_row(const float* x, int K, uint16_t* out)
    void cyf_b_gemm(int path, const void* x, long ldx, int m0, int m1, const uint16_t* w,
                    long ldw, const float* bias, float* out, long ldo, int n0, int n1, int K,
                    int accumulate)

# Paths by name, widest first, with the instruction sets each needs (for error messages).
INT8_PATHS = ("amx", "vnni512", "vnni256", "avxvnni", "avx2", "portable")
INT8_ISA = {"amx": "AMX int8 tiles (amx_tile, amx_int8) and AVX-512 VNNI",
            "vnni512": "AVX-512 VNNI (avx512f, avx512bw, avx512_vnni)",
            "vnni256": "AVX-512 VNNI on 256-bit registers (avx512vl, avx512_vnni)",
            "avxvnni": "AVX-VNNI (avx_vnni)", "avx2": "AVX2", "portable": "nothing"}
BF16_PATHS = ("amx", "avx512bf16", "f32")
BF16_ISA = {"amx": "AMX bf16 tiles (amx_tile, amx_bf16) and AVX-512 BF16",
            "avx512bf16": "AVX-512 BF16 (avx512f, avx512bw, avx512_bf16)", "f32": "nothing"}
# the fewest rows of a GEMM (int8: of one thread's share) that the AMX bodies run on the tiles
AMX_MIN_ROWS = CYF_QA_MIN_ROWS
# rows of a packed int8 block (pack_int8)
INT8_PACK_ROWS = 16
cdef dict _INT8_CODE = {"amx": CYF_Q_AMX, "vnni512": CYF_Q_VNNI512, "vnni256": CYF_Q_VNNI256, "avxvnni": CYF_Q_AVXVNNI,
                        "avx2": CYF_Q_AVX2, "portable": CYF_Q_PORTABLE}
cdef dict _BF16_CODE = {"amx": CYF_B_AMX, "avx512bf16": CYF_B_AVX512BF16, "f32": CYF_B_F32}

cdef int _int8_path = cyf_q_best()
cdef int _bf16_path = cyf_b_best()

# Below this many multiply-adds a GEMM is not worth a parallel region (as in linear.pyx).
cdef long _MIN_PARALLEL_WORK = 1 << 18
# From this many rows per thread, threads split the rows (each reads all the weights once);
# below, the columns (each streams its share of the weights: decoding is bound by them).
cdef int _SPLIT_ROWS = 32
cdef int _COL_ALIGN = 16
cdef int _ROW_ALIGN = 4
# Packed activation rows start 64 bytes apart.
cdef int _PACK_ALIGN = 64


def _name(dict codes, int code):
    for k, v in codes.items():
        if v == code:
            return k


def int8_path():
    """The int8 kernel body in use (``INT8_PATHS``)."""
    return _name(_INT8_CODE, _int8_path)


def bf16_path():
    """The bf16 kernel body in use (``BF16_PATHS``)."""
    return _name(_BF16_CODE, _bf16_path)


def int8_path_supported(str name):
    """Whether this CPU runs the int8 body ``name``."""
    if name not in _INT8_CODE:
        raise ValueError(f"int8 path must be one of {INT8_PATHS}, got {name!r}")
    return bool(cyf_q_supported(_INT8_CODE[name]))


def bf16_path_supported(str name):
    """Whether this CPU runs the bf16 body ``name``."""
    if name not in _BF16_CODE:
        raise ValueError(f"bf16 path must be one of {BF16_PATHS}, got {name!r}")
    return bool(cyf_b_supported(_BF16_CODE[name]))


def best_int8_path():
    """The body the run-time dispatch picks on this CPU."""
    return _name(_INT8_CODE, cyf_q_best())


def best_bf16_path():
    return _name(_BF16_CODE, cyf_b_best())


cdef int _forced(str kind, name, str best, supported, dict isa, dict codes) except -1:
    # the code of body `name` (None: `best`), ValueError naming the instruction set it lacks
    if name is None:
        name = best
    if not supported(name):
        if name == "amx" and supported("avx512bf16" if kind == "bf16" else "vnni512"):
            raise ValueError(f"{kind} path 'amx' needs {isa[name]}: {amx_status(kind)}")
        raise ValueError(f"{kind} path {name!r} needs {isa[name]}, which this CPU does not have")
    return codes[name]


_AMX_STATE = {CYF_AMX_OK: "available", CYF_AMX_NO_CPU: "this CPU has no AMX tiles",
              CYF_AMX_NO_XCR0: "the OS does not enable the tile state (XCR0)",
              CYF_AMX_NO_PERM: "the kernel did not grant the tile state (arch_prctl)",
              CYF_AMX_BAD_SELFCHECK: "the tiles failed cyformer's self-check; not used",
              CYF_AMX_OFF: "turned off by CYFORMER_AMX=0"}


def _amx_kind(str kind):
    """"int8" or "bf16" ("bfloat16", the compute type's name, is the same tiles)."""
    if kind == "bfloat16":
        return "bf16"
    if kind not in ("int8", "bf16"):
        raise ValueError(f"kind must be 'int8', 'bf16' or 'bfloat16', got {kind!r}")
    return kind


def amx_status(str kind="int8"):
    """Whether the AMX tiles of ``kind`` ("int8", or "bf16" alias "bfloat16") run here:
    "available", or why not (the CPU lacks them, the OS does not enable or grant their state,
    the hardware body failed its self-check against exact sums, or CYFORMER_AMX=0 turned them
    off)."""
    kind = _amx_kind(kind)
    return _AMX_STATE[cyf_qa_status() if kind == "int8" else cyf_ba_status()]


def set_amx_emulation(bint on):
    """Run the AMX bodies on cyformer's software model of the tiles (tests on CPUs without
    AMX: the same tile bodies, each tile operation done in C); returns the previous setting.
    Turning it off where the hardware lacks tiles moves an "amx" path back to the default."""
    global cyf_amx_emulate, _int8_path, _bf16_path
    old = bool(cyf_amx_emulate)
    cyf_amx_emulate = 1 if on else 0
    if not on:
        if _int8_path == CYF_Q_AMX and not cyf_q_supported(CYF_Q_AMX):
            _int8_path = cyf_q_best()
        if _bf16_path == CYF_B_AMX and not cyf_b_supported(CYF_B_AMX):
            _bf16_path = cyf_b_best()
    return old


def amx_model_counts():
    """(operations, faults) of the software model so far: a fault is a tile shape the
    hardware would reject."""
    return int(cyf_amx_ops), int(cyf_amx_faults)


def amx_selfcheck(str kind="int8", bint model=True):
    """Run the AMX body's self-check (exact sums of a 37 x 40 x 203 case with every tail) on
    the model or, where the CPU has tiles, on the hardware."""
    kind = _amx_kind(kind)
    if not (int8_path_supported("vnni512") if kind == "int8" else bf16_path_supported("avx512bf16")):
        raise ValueError(f"the AMX {kind} body needs {INT8_ISA['vnni512'] if kind == 'int8' else BF16_ISA['avx512bf16']}")
    if not model and amx_status(kind) != "available":
        raise ValueError(f"AMX {kind}: {amx_status(kind)}")
    return bool(cyf_qa_selfcheck(model) if kind == "int8" else cyf_ba_selfcheck(model))


def set_int8_path(name):
    """Force the int8 body ``name`` (None: the run-time choice); returns the previous name.
    ValueError naming the instruction set when this CPU lacks it."""
    global _int8_path
    old = int8_path()
    _int8_path = _forced("int8", name, best_int8_path(), int8_path_supported, INT8_ISA, _INT8_CODE)
    return old


def set_bf16_path(name):
    """Force the bf16 body ``name`` (None: the run-time choice); returns the previous name."""
    global _bf16_path
    old = bf16_path()
    _bf16_path = _forced("bf16", name, best_bf16_path(), bf16_path_supported, BF16_ISA, _BF16_CODE)
    return old


cdef inline int _split(int total, int parts, int t, int align) noexcept nogil:
    # Start of part t when splitting [0, total) into `parts` aligned chunks.
    cdef long chunk = (total + parts - 1) // parts
    chunk = ((chunk + align - 1) // align) * align
    cdef long start = chunk * t
    return <int>(start if start < total else total)


cdef inline long _ldf(const float[:, :] a, str name) except -1:
    # the row stride of a float32 matrix whose rows are contiguous
    if a.shape[1] > 1 and a.strides[1] != sizeof(float):
        raise ValueError(f"{name}: rows must be contiguous (inner stride {a.strides[1]})")
    if a.strides[0] % sizeof(float):
        raise ValueError(f"{name}: row stride is not a multiple of 4 bytes")
    if a.shape[0] > 1 and a.strides[0] < <Py_ssize_t>(a.shape[1] * sizeof(float)):
        raise ValueError(f"{name}: rows must not be reversed or overlap (row stride {a.strides[0]} "
                         f"bytes for rows of {a.shape[1]} floats)")
    return max(<long>(a.strides[0] // sizeof(float)), <long>a.shape[1], 1)


cdef const float* _bias_ptr(bias, int n) except? NULL:
    cdef const float[::1] b
    if bias is None:
        return NULL
    b = bias
    if b.shape[0] != n:
        raise ValueError(f"bias has {b.shape[0]} entries, expected {n}")
    return &b[0]


cdef int _team(int m, int n, int k, int n_threads) noexcept nogil:
    if n_threads <= 1 or not CYFORMER_HAVE_OPENMP or <long>m * n * k < _MIN_PARALLEL_WORK:
        return 1
    return n_threads


# --------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------

def quantize_rows(const float[:, :] x, bint shifted=False):
    """Per-row symmetric int8: (q [M, K], scale [M]) with scale = max|x[m]| / 127 and
    q = rint(x / scale) in [-127, 127]; ``shifted``: q + 128 as uint8 (the VNNI packing).
    Used for the weights (once) and, inside the kernels, for the activations."""
    cdef int m = x.shape[0], k = x.shape[1], i
    cdef long ldx = _ldf(x, "x") if m else 1
    q = np.empty((m, k), np.uint8 if shifted else np.int8)
    scale = np.empty(m, np.float32)
    cdef uint8_t[:, ::1] qv = q.view(np.uint8)
    cdef float[::1] sv = scale
    if m == 0:
        return q, scale
    with nogil:
        for i in range(m):
            cyf_q_quantize_row(&x[0, 0] + i * ldx, k, &qv[i, 0] if k else NULL, &sv[i], shifted)
    return q, scale


def int8_compensation(const int8_t[:, ::1] wq):
    """comp[n] = 128 * sum_k wq[n, k] (int32): the VNNI bodies' correction for the shifted
    activations, computed once with the weights."""
    cdef int n = wq.shape[0], k = wq.shape[1]
    comp = np.empty(n, np.int32)
    cdef int32_t[::1] cv = comp
    if n and k:
        with nogil:
            cyf_q_compensation(&wq[0, 0], k, n, k, &cv[0])
    elif n:
        comp[:] = 0
    return comp


cdef int _int8_nogil(int path, const float* x, long ldx, int m, int k, const int8_t* w, int n,
                     const float* ws, const int32_t* comp, const float* bias, float* out, long ldo,
                     int accumulate, int32_t* raw, int n_threads, const int8_t* packed=NULL) noexcept nogil:
    # Quantize the rows of x once (rows split between threads), then the GEMM; -1 when out of memory.
    cdef long ldq = ((k + _PACK_ALIGN - 1) // _PACK_ALIGN) * _PACK_ALIGN
    # this thread's buffer (scratch.h), kept between calls: no fresh pages for every GEMM
    cdef uint8_t* xq = <uint8_t*>cyf_scratch_bytes(0, <size_t>m * ldq + <size_t>m * sizeof(float) + 64)
    cdef float* xs
    cdef int t, i, team = _team(m, n, k, n_threads), shift = cyf_q_shifted(path)
    if xq == NULL:
        return -1
    xs = <float*>(xq + <size_t>m * ldq)
    if team > 1 and m >= 2 * team:
        for i in prange(m, num_threads=team, schedule='static'):
            cyf_q_quantize_row(x + i * ldx, k, xq + i * ldq, xs + i, shift)
    else:
        for i in range(m):
            cyf_q_quantize_row(x + i * ldx, k, xq + i * ldq, xs + i, shift)
    if packed != NULL:  # the weights in the outer-product layout (VNNI512 or AMX, shifted activations)
        if team == 1:
            cyf_qpa_gemm(path, xq, ldq, xs, 0, m, packed, ws, comp, bias, out, ldo, 0, n, k, accumulate, raw, n)
        elif m >= _SPLIT_ROWS * team:
            for t in prange(team, num_threads=team, schedule='static'):
                cyf_qpa_gemm(path, xq, ldq, xs, _split(m, team, t, _ROW_ALIGN), _split(m, team, t + 1, _ROW_ALIGN),
                             packed, ws, comp, bias, out, ldo, 0, n, k, accumulate, raw, n)
        else:
            for t in prange(team, num_threads=team, schedule='static'):
                cyf_qpa_gemm(path, xq, ldq, xs, 0, m, packed, ws, comp, bias, out, ldo,
                             _split(n, team, t, _COL_ALIGN), _split(n, team, t + 1, _COL_ALIGN),
                             k, accumulate, raw, n)
    elif team == 1:
        cyf_q_gemm(path, xq, ldq, xs, 0, m, w, k, ws, comp, bias, out, ldo, 0, n, k, accumulate, raw, n)
    elif m >= _SPLIT_ROWS * team:
        for t in prange(team, num_threads=team, schedule='static'):
            cyf_q_gemm(path, xq, ldq, xs, _split(m, team, t, _ROW_ALIGN), _split(m, team, t + 1, _ROW_ALIGN),
                       w, k, ws, comp, bias, out, ldo, 0, n, k, accumulate, raw, n)
    else:
        for t in prange(team, num_threads=team, schedule='static'):
            cyf_q_gemm(path, xq, ldq, xs, 0, m, w, k, ws, comp, bias, out, ldo,
                       _split(n, team, t, _COL_ALIGN), _split(n, team, t + 1, _COL_ALIGN),
                       k, accumulate, raw, n)
    return 0


cdef _check_int8(const float[:, :] x, const int8_t[:, ::1] weight, const float[::1] w_scale, w_comp):
    cdef int k = x.shape[1], n = weight.shape[0]
    cdef const int32_t[::1] cv
    if weight.shape[1] != k:
        raise ValueError(f"weight is [{weight.shape[0]}, {weight.shape[1]}], expected [N, {k}]")
    if w_scale.shape[0] != n:
        raise ValueError(f"weight scale has {w_scale.shape[0]} entries, expected {n}")
    if w_comp is not None:
        cv = w_comp
        if cv.shape[0] != n:
            raise ValueError(f"weight compensation has {cv.shape[0]} entries, expected {n}")


cdef bint _no_product(float[:, :] out, int m, int n, int k, bias, bint accumulate) except -1:
    # out must be [m, n]; True when there is no product to compute: M or N empty, or K empty
    # (out then gets 0, or keeps its values, plus the bias)
    if out.shape[0] != m or out.shape[1] != n:
        raise ValueError(f"out is [{out.shape[0]}, {out.shape[1]}], expected [{m}, {n}]")
    if m == 0 or n == 0:
        return True
    if k == 0:
        out_np = np.asarray(out)
        if not accumulate:
            out_np[...] = 0.0
        if bias is not None:
            out_np += np.asarray(bias, np.float32)
        return True
    return False


def int8_linear_forward(const float[:, :] x, const int8_t[:, ::1] weight, const float[::1] w_scale,
                        w_comp, bias, float[:, :] out, bint accumulate=False, int n_threads=1):
    """out[M, N] (+)= dequant(quant(x) @ weight^T) + bias: int8 ``weight`` [N, K] with
    ``w_scale`` [N] (float32) and ``w_comp`` = int8_compensation(weight) (None: computed
    here, which reads the weights twice). ``x`` and ``out`` may be row-strided views."""
    cdef int m = x.shape[0], k = x.shape[1], n = weight.shape[0], rc
    cdef const int32_t[::1] cv
    cdef const float* bias_ptr
    _check_int8(x, weight, w_scale, w_comp)
    bias_ptr = _bias_ptr(bias, n)
    if _no_product(out, m, n, k, bias, accumulate):
        return
    if w_comp is None:
        w_comp = int8_compensation(weight)
    cv = w_comp
    cdef long ldx = _ldf(x, "x"), ldo = _ldf(out, "out")
    cdef int path = _int8_path
    with nogil:
        rc = _int8_nogil(path, &x[0, 0], ldx, m, k, &weight[0, 0], n, &w_scale[0], &cv[0], bias_ptr,
                         &out[0, 0], ldo, accumulate, NULL, n_threads)
    if rc:
        raise MemoryError("int8 linear: cannot allocate the packed activations")


def int8_packs():
    """Whether the int8 body in use reads the weights packed (``pack_int8``): the
    outer-product VNNI512 body and the AMX tiles."""
    return _int8_path == CYF_Q_VNNI512 or _int8_path == CYF_Q_AMX


cdef int _packed_path():
    # the body that reads packed weights: the tiles when they are in use, else VNNI512
    return CYF_Q_AMX if _int8_path == CYF_Q_AMX else CYF_Q_VNNI512


def empty_packed_int8(int n, int k):
    """An uninitialised packed array for an [n, k] matrix (``pack_int8``'s shape, 64-byte
    aligned), to be filled block by block with ``pack_int8(rows, out=..., row0=...)``."""
    cdef long nblocks = (n + CYF_QP_COLS - 1) // CYF_QP_COLS, size = cyf_qp_size(n, k)
    raw = np.empty(size + 64, np.int8)
    cdef long off = (64 - <long>(raw.ctypes.data % 64)) % 64
    return raw[off:off + size].reshape(nblocks, size // nblocks if nblocks else 0)


def pack_int8(const int8_t[:, ::1] wq, out=None, int row0=0):
    """The [N, K] int8 weights in the VNNI512 outer-product layout: [ceil(N / 16),
    ceil(K / 4) * 64] int8, 64-byte aligned (blocks of 16 output rows, 4 bytes of k per lane,
    zeros past N and K; ``unpack_int8`` inverts it). ``out`` (``empty_packed_int8`` of a
    larger matrix): ``wq`` is its rows from ``row0`` on (a multiple of 16; fewer than 16
    rows in the last block only at the matrix's end), written in place."""
    cdef int n = wq.shape[0], k = wq.shape[1]
    cdef long nblocks = (n + CYF_QP_COLS - 1) // CYF_QP_COLS, size = cyf_qp_size(n, k)
    cdef int8_t[:, ::1] pv
    if out is None:
        if row0:
            raise ValueError("row0 needs out")
        packed = empty_packed_int8(n, k)
    else:
        packed = out
        pv = packed
        if row0 < 0 or row0 % CYF_QP_COLS or pv.shape[0] < row0 // CYF_QP_COLS + nblocks \
                or (nblocks and pv.shape[1] != size // nblocks):
            raise ValueError(f"rows {row0}:{row0 + n} of {k} do not fit the packed array "
                             f"[{pv.shape[0]}, {pv.shape[1]}] (row0 a multiple of {CYF_QP_COLS})")
    pv = packed
    if size:
        with nogil:
            cyf_qp_pack(&wq[0, 0] if k else NULL, k, n, k, &pv[row0 // CYF_QP_COLS, 0])
    return packed


def unpack_int8(const int8_t[:, ::1] packed, int n, int k, int n0=0, n1=None, rows=None):
    """Rows n0:n1 (default all n) of the [n, k] matrix that ``pack_int8`` packed; ``rows``
    (int64 ids, each in [0, n)): those rows instead, in that order (a lookup into a packed
    table)."""
    cdef int hi = n if n1 is None else n1
    cdef const int64_t[::1] ids
    cdef Py_ssize_t i, count
    cdef int8_t[:, ::1] ov
    _check_packed(packed, n, k)
    if rows is not None:
        ids = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        count = ids.shape[0]
        if count and (np.min(ids) < 0 or np.max(ids) >= n):
            raise ValueError(f"row ids must be in [0, {n})")
        out = np.empty((count, k), np.int8)
        ov = out
        if count and k:
            with nogil:
                for i in range(count):
                    cyf_qp_unpack(&packed[0, 0], k, <int>ids[i], <int>ids[i] + 1, &ov[i, 0], k)
        return out
    if not 0 <= n0 <= hi <= n:
        raise ValueError(f"rows {n0}:{hi} outside [0, {n}]")
    out = np.empty((hi - n0, k), np.int8)
    ov = out
    if hi > n0 and k:
        with nogil:
            cyf_qp_unpack(&packed[0, 0], k, n0, hi, &ov[0, 0], k)
    return out


cdef _check_packed(const int8_t[:, ::1] packed, int n, int k):
    cdef long nblocks = (n + CYF_QP_COLS - 1) // CYF_QP_COLS
    cdef long width = ((k + 3) // 4) * 64
    if packed.shape[0] != nblocks or (nblocks and packed.shape[1] != width):
        raise ValueError(f"packed weights are [{packed.shape[0]}, {packed.shape[1]}], expected "
                         f"[{nblocks}, {width}] for an [{n}, {k}] matrix")
    if nblocks and width and (<size_t>&packed[0, 0]) % 64:
        raise ValueError("packed weights must start on a 64-byte boundary (pack_int8 aligns them)")


def int8_packed_linear_forward(const float[:, :] x, const int8_t[:, ::1] packed, const float[::1] w_scale,
                               const int32_t[::1] w_comp, bias, float[:, :] out, bint accumulate=False,
                               int n_threads=1):
    """As ``int8_linear_forward`` with the weights packed by ``pack_int8`` (N = len(w_scale));
    needs the VNNI512 body's instruction sets (``int8_path_supported("vnni512")``). With the
    AMX body in use the tiles take the GEMMs of ``AMX_MIN_ROWS`` rows (per thread) and more."""
    cdef int m = x.shape[0], k = x.shape[1], n = w_scale.shape[0], rc, path = _packed_path()
    cdef const float* bias_ptr
    if not cyf_q_supported(CYF_Q_VNNI512):
        raise ValueError(f"packed int8 weights need {INT8_ISA['vnni512']}, which this CPU does not have")
    _check_packed(packed, n, k)
    if w_comp.shape[0] != n:
        raise ValueError(f"weight compensation has {w_comp.shape[0]} entries, expected {n}")
    bias_ptr = _bias_ptr(bias, n)
    if _no_product(out, m, n, k, bias, accumulate):
        return
    cdef long ldx = _ldf(x, "x"), ldo = _ldf(out, "out")
    with nogil:
        rc = _int8_nogil(path, &x[0, 0], ldx, m, k, NULL, n, &w_scale[0], &w_comp[0], bias_ptr,
                         &out[0, 0], ldo, accumulate, NULL, n_threads, &packed[0, 0])
    if rc:
        raise MemoryError("int8 linear: cannot allocate the packed activations")


def int8_accumulators(const float[:, :] x, const int8_t[:, ::1] weight, w_comp=None, int n_threads=1,
                      bint packed=False):
    """The exact int32 sums sum_k quant(x)[m, k] * weight[n, k] [M, N] as the current body
    computes them (tests compare them with NumPy's integer product); ``packed``: the body
    that reads ``pack_int8(weight)`` (the AMX tiles when they are in use, else VNNI512)."""
    cdef int m = x.shape[0], k = x.shape[1], n = weight.shape[0], rc
    cdef const int8_t[:, ::1] pv
    cdef const int32_t[::1] cv
    ones = np.ones(n, np.float32)
    _check_int8(x, weight, ones, w_comp)
    raw = np.zeros((m, n), np.int32)
    cdef int32_t[:, ::1] rv = raw
    cdef float[:, ::1] dummy = np.zeros((1, 1), np.float32)
    if m == 0 or n == 0 or k == 0:
        return raw
    if w_comp is None:
        w_comp = int8_compensation(weight)
    cv = w_comp
    cdef long ldx = _ldf(x, "x")
    cdef int path = _int8_path
    cdef const float[::1] onev = ones
    cdef const int8_t* pp = NULL
    if packed:
        if not cyf_q_supported(CYF_Q_VNNI512):
            raise ValueError(f"packed int8 weights need {INT8_ISA['vnni512']}, which this CPU does not have")
        pv = pack_int8(weight)
        pp = &pv[0, 0]
        path = _packed_path()
    with nogil:
        rc = _int8_nogil(path, &x[0, 0], ldx, m, k, &weight[0, 0], n, &onev[0], &cv[0], NULL,
                         &dummy[0, 0], 0, False, &rv[0, 0], n_threads, pp)
    if rc:
        raise MemoryError("int8 linear: cannot allocate the packed activations")
    return raw


# --------------------------------------------------------------------------------------
# bf16
# --------------------------------------------------------------------------------------

def to_bfloat16(a):
    """float32 array -> its bf16 bits as uint16 (round to nearest even, NaN kept)."""
    src = np.ascontiguousarray(a, dtype=np.float32)
    flat = src.reshape(-1)
    dst = np.empty(flat.shape[0], np.uint16)
    cdef const float[::1] sv = flat
    cdef uint16_t[::1] dv = dst
    if flat.shape[0]:
        with nogil:
            cyf_bf16_round_row(&sv[0], <int>sv.shape[0], &dv[0])
    return dst.reshape(src.shape)


def from_bfloat16(a):
    """bf16 bits (uint16) -> float32 (exact)."""
    u = np.ascontiguousarray(a, dtype=np.uint16)
    return (u.astype(np.uint32) << 16).view(np.float32)


cdef inline void _bf16_part(bint tiles, int path, const void* xp, long ldp, int m0, int m1,
                            const uint16_t* w, int k, const float* bias, float* out, long ldo,
                            int n0, int n1, int accumulate) noexcept nogil:
    # rows m0:m1, columns n0:n1: on the tiles (xp packed in pairs of k) or on body `path`
    if tiles:
        cyf_ba_gemm(<const uint16_t*>xp, m0, m1, w, k, bias, out, ldo, n0, n1, k, accumulate)
    else:
        cyf_b_gemm(path, xp, ldp, m0, m1, w, k, bias, out, ldo, n0, n1, k, accumulate)


cdef int _bf16_nogil(int path, const float* x, long ldx, int m, int k, const uint16_t* w, int n,
                     const float* bias, float* out, long ldo, int accumulate,
                     int n_threads) noexcept nogil:
    cdef int t, i, team = _team(m, n, k, n_threads), nblk
    # AMX: the tiles from CYF_BA_MIN_ROWS rows, rows split between threads at their blocks of 16
    cdef bint tiles = path == CYF_B_AMX and m >= CYF_BA_MIN_ROWS and k > 0
    cdef int row_align = 16 if tiles else _ROW_ALIGN
    cdef const void* xp = x
    cdef long ldp = ldx
    cdef uint16_t* xb = NULL
    if tiles:  # the activations in pairs of k (cyf_ba_pack), once per call
        xb = <uint16_t*>cyf_scratch_bytes(0, <size_t>cyf_ba_size(m, k) * sizeof(uint16_t))
        if xb == NULL:
            return -1
        nblk = (m + 15) // 16
        if team > 1 and nblk >= 2 * team:
            for t in prange(team, num_threads=team, schedule='static'):
                cyf_ba_pack(x, ldx, m, k, _split(nblk, team, t, 1), _split(nblk, team, t + 1, 1), xb)
        else:
            cyf_ba_pack(x, ldx, m, k, 0, nblk, xb)
        xp = xb
    elif cyf_b_packs(path):  # the activations rounded to bf16 once per call
        ldp = ((k + 31) // 32) * 32
        xb = <uint16_t*>cyf_scratch_bytes(0, <size_t>m * ldp * sizeof(uint16_t))
        if xb == NULL:
            return -1
        for i in range(m):
            cyf_bf16_round_row(x + i * ldx, k, xb + i * ldp)
        xp = xb
    if team == 1:
        _bf16_part(tiles, path, xp, ldp, 0, m, w, k, bias, out, ldo, 0, n, accumulate)
    elif m >= _SPLIT_ROWS * team:
        for t in prange(team, num_threads=team, schedule='static'):
            _bf16_part(tiles, path, xp, ldp, _split(m, team, t, row_align), _split(m, team, t + 1, row_align),
                       w, k, bias, out, ldo, 0, n, accumulate)
    else:
        for t in prange(team, num_threads=team, schedule='static'):
            _bf16_part(tiles, path, xp, ldp, 0, m, w, k, bias, out, ldo,
                       _split(n, team, t, _COL_ALIGN), _split(n, team, t + 1, _COL_ALIGN), accumulate)
    return 0


def bf16_linear_forward(const float[:, :] x, const uint16_t[:, ::1] weight, bias, float[:, :] out,
                        bint accumulate=False, int n_threads=1):
    """out[M, N] (+)= x @ weight^T + bias with ``weight`` [N, K] as bf16 bits (uint16,
    ``to_bfloat16``), float32 accumulation. ``x`` and ``out`` may be row-strided views."""
    cdef int m = x.shape[0], k = x.shape[1], n = weight.shape[0], rc
    cdef const float* bias_ptr
    if weight.shape[1] != k:
        raise ValueError(f"weight is [{weight.shape[0]}, {weight.shape[1]}], expected [N, {k}]")
    if out.shape[0] != m or out.shape[1] != n:
        raise ValueError(f"out is [{out.shape[0]}, {out.shape[1]}], expected [{m}, {n}]")
    bias_ptr = _bias_ptr(bias, n)
    if m == 0 or n == 0:
        return
    cdef long ldx = _ldf(x, "x"), ldo = _ldf(out, "out")
    cdef int path = _bf16_path
    with nogil:
        rc = _bf16_nogil(path, &x[0, 0], ldx, m, k, &weight[0, 0] if k else NULL, n, bias_ptr,
                         &out[0, 0], ldo, accumulate, n_threads)
    if rc:
        raise MemoryError("bf16 linear: cannot allocate the packed activations")
