"""One threading policy for the whole engine.

cyformer parallelises with OpenMP inside its kernels (over rows, heads and sequences)
and calls BLAS single-threaded from each OpenMP thread, so cores are never
oversubscribed. ``set_num_threads(n)`` sets the OpenMP team size; while a cyformer
call runs, OpenBLAS (SciPy's, which the kernels call) is held at one thread through
threadpoolctl and restored afterwards, so the caller's own NumPy/SciPy settings are
left alone.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

from ._engine import runtime

_lock = threading.Lock()
_num_threads: Optional[int] = None
_controller = None


_cores: Optional[int] = None


def _available_cores() -> int:
    """Cores this process may run on, read once (every kernel call asks for the thread count;
    after ``os.sched_setaffinity``, call ``set_num_threads``)."""
    global _cores
    if _cores is None:
        try:
            _cores = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            _cores = max(1, os.cpu_count() or 1)
    return _cores


def default_num_threads() -> int:
    """OMP_NUM_THREADS when set, else the cores this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return _available_cores()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every kernel (OpenMP), with BLAS single-threaded inside them."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"num_threads must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    _num_threads = n


def get_num_threads() -> int:
    """Threads the kernels use (``set_num_threads``, else ``default_num_threads()``)."""
    return _num_threads if _num_threads is not None else default_num_threads()


def _get_controller():
    global _controller
    if _controller is None:
        with _lock:
            if _controller is None:
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError:  # pragma: no cover - declared dependency
                    _controller = False
                else:
                    _controller = ThreadpoolController()
    return _controller


_active = 0
_limiter = None


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """Hold BLAS at one thread while OpenMP threads each call it.

    Reference-counted, so calls from several Python threads (or nested calls) overlap
    safely: the first one in sets the limit, the last one out restores the original.
    """
    global _active, _limiter
    controller = _get_controller()
    if not controller:
        yield
        return
    with _lock:
        if _active == 0:
            _limiter = controller.limit(limits=1, user_api="blas")
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def blas_info() -> list:
    """threadpoolctl's view of the loaded BLAS libraries (version, core type, threads)."""
    controller = _get_controller()
    return controller.info() if controller else []


def openmp_enabled() -> bool:
    return runtime.openmp_enabled()
