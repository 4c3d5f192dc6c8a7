# cython: language_level=3
"""What the compiled engine was built with: OpenMP or not, and how many threads it sees."""
from _common cimport CYFORMER_HAVE_OPENMP, omp_get_max_threads


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CYFORMER_HAVE_OPENMP)


def openmp_max_threads():
    """OpenMP's default team size (OMP_NUM_THREADS, else the number of processors)."""
    return omp_get_max_threads()
