"""Build the Cython kernels in engine/ as cyformer._engine.*, with OpenMP when the compiler has it.

OpenMP is detected by compiling a tiny program, as scikit-learn does; without it the
build still succeeds, serial, with a warning. BLAS comes from scipy.linalg.cython_blas,
so nothing is linked beyond the OpenMP runtime.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ENGINE_MODULES = ["linear", "attention", "norm", "ffn", "embedding", "softmax", "search", "runtime", "loss", "optim",
                  "dropout"]
HERE = os.path.dirname(os.path.abspath(__file__))


def openmp_flags():
    """Compile and link flags for OpenMP, or ([], []) when the compiler lacks it."""
    if os.environ.get("CYFORMER_NO_OPENMP"):
        return [], []
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    src = "#include <omp.h>\nint main(void){\n#pragma omp parallel\n{}\nreturn omp_get_max_threads() < 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "omp.c")
        with open(path, "w") as f:
            f.write(src)
        for flag in ("-fopenmp", "-qopenmp", "-openmp"):
            try:
                rc = subprocess.run(cc + [flag, path, "-o", os.path.join(tmp, "a.out")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
            except OSError:
                break
            if rc == 0:
                return [flag], [flag]
    warnings.warn("cyformer: the C compiler does not support OpenMP; building serial kernels "
                  "(set CC to a compiler with OpenMP for parallel kernels)")
    return [], []


def extensions():
    from Cython.Build import cythonize

    cflags, lflags = openmp_flags()
    extra = ["-O3", "-fno-math-errno"] + cflags
    if os.environ.get("CYFORMER_NATIVE"):
        extra.append("-march=native")
    exts = [
        Extension(
            f"cyformer._engine.{name}",
            [os.path.join("engine", f"{name}.pyx")],
            include_dirs=["engine"],
            extra_compile_args=extra,
            extra_link_args=lflags,
        )
        for name in ENGINE_MODULES
    ]
    return cythonize(exts, include_path=["engine"], compiler_directives={"language_level": 3},
                     nthreads=int(os.environ.get("CYFORMER_BUILD_JOBS", "0")) or None)


setup(ext_modules=extensions())
