# Type stub for the compiled module built from engine/runtime.pyx (tests/test_engine_build.py checks the two agree).

def openmp_enabled() -> bool:
    """True when the kernels were compiled with OpenMP."""

def openmp_max_threads() -> int:
    """OpenMP's default team size (OMP_NUM_THREADS, else the number of processors)."""
