"""Build the Cython kernels in engine/ as cyformer._engine.*, with OpenMP when the compiler has it.

OpenMP is detected by compiling a tiny program, as scikit-learn does; without it the
build still succeeds, serial, with a warning. BLAS comes from scipy.linalg.cython_blas,
so nothing is linked beyond the OpenMP runtime.

Cython and the compiler probe run only when extensions are built (``build_ext``), not when
pip or ``python -m build`` asks for metadata or an sdist: the sdist ships the .pyx sources
(not generated C), so a wheel built from it is cythonized exactly once, from the same sources.

Environment: CYFORMER_BUILD_JOBS (parallel Cython and C jobs; default: the usable cores),
CYFORMER_NO_OPENMP (serial build), CYFORMER_NATIVE (-march=native: never for a wheel you ship).
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ENGINE_MODULES = ["linear", "attention", "norm", "ffn", "embedding", "softmax", "search", "runtime", "loss", "optim",
                  "dropout", "quant"]
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


def build_jobs():
    """Parallel Cython/C jobs: CYFORMER_BUILD_JOBS, else the cores this process may use."""
    env = os.environ.get("CYFORMER_BUILD_JOBS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            sys.exit(f"setup.py: CYFORMER_BUILD_JOBS must be an integer, got {env!r}")
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_stubs():
    """Warn about compiled modules without a type stub (python/cyformer/_engine/NAME.pyi).

    The wheel ships every _engine/*.pyi (package data in pyproject.toml), so a stub added
    next to the others is picked up with no change here; this only catches a forgotten one.
    """
    stub_dir = os.path.join(HERE, "python", "cyformer", "_engine")
    missing = [m for m in ENGINE_MODULES if not os.path.exists(os.path.join(stub_dir, m + ".pyi"))]
    if missing:
        warnings.warn("cyformer: no type stub for engine module(s) " + ", ".join(missing) +
                      f"; add {', '.join(m + '.pyi' for m in missing)} to {stub_dir} "
                      "(type checkers will treat them as Any)")


_EXTERN = re.compile(r'^[ \t]*cdef[ \t]+extern[ \t]+from[ \t]+"([^"]+)"', re.M)
_CIMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+cimport|cimport[ \t]+([\w.]+))", re.M)
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"', re.M)


def engine_depends(name):
    """The engine files extension NAME reads besides its .pyx, as sorted "engine/..." paths.

    Derived from the sources, so it cannot fall out of step with them: the headers named by
    the .pyx's ``cdef extern from "..."`` lines, the engine .pxd files it cimports (with the
    headers those name), and, transitively, each header's ``#include "..."`` of another engine
    header. System headers (<...>) and Cython's own .pxd (libc, cython.parallel) are not engine
    files and are left to the compiler. tests/test_engine_build.py checks the result against
    what the C compiler and Cython really read.
    """
    engine = os.path.join(HERE, "engine")
    seen, todo = set(), [f"{name}.pyx"]
    while todo:
        fname = todo.pop()
        with open(os.path.join(engine, fname)) as f:
            text = f.read()
        if fname.endswith((".pyx", ".pxd")):
            found = _EXTERN.findall(text)
            found += [(a or b) + ".pxd" for a, b in _CIMPORT.findall(text)]
        else:
            found = _INCLUDE.findall(text)
        for dep in found:
            if dep not in seen and os.path.exists(os.path.join(engine, dep)):
                seen.add(dep)
                todo.append(dep)
    return sorted(os.path.join("engine", dep) for dep in seen)


def extensions():
    """One extension per engine module, from its .pyx; BuildExt cythonizes them.

    ``depends`` lists exactly the headers and .pxd files the module reads, so a change to one
    rebuilds the modules that include it, and only those.
    """
    return [
        Extension(
            f"cyformer._engine.{name}",
            [os.path.join("engine", f"{name}.pyx")],
            include_dirs=["engine"],
            depends=engine_depends(name),
        )
        for name in ENGINE_MODULES
    ]


class BuildExt(build_ext):
    """Cythonize, probe OpenMP and compile in parallel, only when extensions are really built."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:  # `build_ext -j N` on the command line still wins
            self.parallel = build_jobs()

    def run(self):
        from Cython.Build import cythonize

        check_stubs()
        cflags, lflags = openmp_flags()
        # -Wno-psabi: GCC notes that 32-byte vectors change the calling convention of the
        # baseline clone of the row kernels' helpers (vec.h), which are all inlined (no ABI is
        # crossed).
        extra = ["-O3", "-fno-math-errno", "-Wno-psabi"] + cflags
        if os.environ.get("CYFORMER_NATIVE"):
            extra.append("-march=native")
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + extra
            ext.extra_link_args = list(ext.extra_link_args or []) + lflags
        jobs = self.parallel if isinstance(self.parallel, int) and self.parallel > 1 else None
        cythonized = cythonize(self.extensions, include_path=["engine"],
                               compiler_directives={"language_level": 3}, nthreads=jobs)
        # Take only the generated sources: the Extension objects themselves must stay the ones
        # setuptools' finalize_options prepared.
        sources = {ext.name: ext.sources for ext in cythonized}
        for ext in self.extensions:
            ext.sources = sources[ext.name]
        super().run()


if __name__ == "__main__":  # pip, build and `python setup.py` run it as __main__; the tests import it
    setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
