"""Compiled Cython kernels (built from engine/); each module's API is in its ``.pyi`` stub next to it.

``linear_paths`` is the one Python module: it forces ``linear_forward`` onto one of its kernels
for the tests and benchmarks of each path.
"""
import importlib.machinery
import importlib.util
import os
import sys


def _load_cython_blas() -> None:
    """Load ``scipy.linalg.cython_blas`` (the kernels' BLAS) without ``scipy.linalg``'s
    package: importing that package loads all of SciPy's linear algebra, which no kernel
    uses (its cost is in bench/RESULTS.md, issue 10's memory). The extension itself needs only
    SciPy's BLAS library; its module is put where the kernels' Cython imports look for it.
    Any surprise (another SciPy layout, a frozen build) falls back to the plain import."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules:
        return
    try:
        import scipy

        folder = os.path.join(os.path.dirname(scipy.__file__), "linalg")
        suffixes = importlib.machinery.EXTENSION_SUFFIXES
        path = next(os.path.join(folder, "cython_blas" + s) for s in suffixes
                    if os.path.exists(os.path.join(folder, "cython_blas" + s)))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(name, None)
        import scipy.linalg.cython_blas  # noqa: F401


_load_cython_blas()
