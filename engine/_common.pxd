# cython: language_level=3
# Shared nogil helpers, header-only (every function is inline): the row-major SGEMM
# over SciPy's Fortran BLAS, and the OpenMP entry points that also build without OpenMP.
from scipy.linalg.cython_blas cimport sgemm

cdef extern from "omp_compat.h" nogil:
    int CYFORMER_HAVE_OPENMP
    int omp_get_max_threads()
    int omp_get_thread_num()
    int omp_get_num_procs()
    void omp_set_num_threads(int n)


cdef inline void sgemm_rm(bint trans_a, bint trans_b, int m, int n, int k,
                          float alpha, const float* a, int lda,
                          const float* b, int ldb,
                          float beta, float* c, int ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A) @ op(B) + beta * C.

    op(A) is [m, k] (A stored [k, m] when trans_a), op(B) is [k, n] (B stored [n, k]
    when trans_b). Row-major C is column-major C^T = op(B)^T op(A)^T, so the operands
    swap places and keep their transpose flags.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        # BLAS would scale C by beta; keep that meaning for empty reductions.
        _scale_rows(c, ldc, m, n, beta)
        return
    sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)


cdef inline void _scale_rows(float* c, int ldc, int m, int n, float beta) noexcept nogil:
    cdef int i, j
    for i in range(m):
        for j in range(n):
            c[i * ldc + j] = 0.0 if beta == 0.0 else c[i * ldc + j] * beta
