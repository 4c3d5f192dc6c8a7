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
import time
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


def requested_num_threads() -> int:
    """``set_num_threads``'s count (else ``default_num_threads()``), without the governor's cap."""
    return _num_threads if _num_threads is not None else default_num_threads()


def get_num_threads() -> int:
    """Threads the kernels use (``set_num_threads``, else ``default_num_threads()``); inside a
    decoding loop (``governed()``), at most what the step governor chose for the current step."""
    n = requested_num_threads()
    cap = getattr(_governors, "cap", 0)
    return min(n, cap) if cap else n


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


def _run_delay_ns() -> Optional[int]:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU, summed
    (``run_delay``, the second field of Linux's ``/proc/self/task/*/schedstat``); None where
    the kernel does not expose it."""
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):   # a thread that just ended
            continue
    return total


class StepGovernor:
    """Chooses the team size of each decoding step from how long its threads wait for a CPU.

    A decoding step is a hundred or so short parallel regions, each ending when every team
    thread has done its share. On a quiet machine the full team is fastest; when another
    process keeps a core busy, a team thread that loses its core stalls every region for a
    scheduler time slice, and one thread beats two. No fixed OpenMP setting serves both
    (``bench/contention.py``: spinning briefly, or ``OMP_WAIT_POLICY=passive``, costs the
    quiet case 20-90%). So the governor measures: every ``WINDOW`` seconds of decoding at the
    full team it reads the time this process's threads spent runnable but off a CPU (the
    kernel's ``run_delay``); above ``THRESHOLD`` of the team's time, the team shrinks by that
    share (on two cores: to one thread). After ``retry`` seconds the full team is tried again;
    a failed try doubles ``retry`` (up to ``RETRY_MAX``), a good one resets it.

    Thread counts never change results: every kernel of a decoding step gives the same bits
    at any thread count (tested), so the governor changes only the speed. One per Python
    thread (``step_governor()``); ``set_adaptive(False)`` or ``CYFORMER_ADAPTIVE_THREADS=0``
    turns it off, and where ``/proc/self/task/*/schedstat`` is missing it does nothing.
    """

    WINDOW = 0.02         # seconds of decoding per measurement
    THRESHOLD = 0.15      # share of the team's time spent waiting for a CPU that counts as contended
    RETRY_MIN = 0.05      # seconds before the full team is tried again
    RETRY_MAX = 2.0

    __slots__ = ("requested", "team", "trial", "retry", "retry_at", "since", "delay")

    def __init__(self) -> None:
        self.requested = 0
        self.team = 0
        self.trial = False
        self.retry = self.RETRY_MIN
        self.retry_at = 0.0
        self.since = 0.0          # start of the measurement window (perf_counter)
        self.delay = None         # run_delay at its start

    def _restart(self, now: float) -> None:
        self.since = now
        self.delay = _run_delay_ns()

    def begin(self, num_threads: int, state=None) -> int:
        """The team size for this step (inside ``governed()``, also the cap of every other
        kernel call until the next step)."""
        if num_threads <= 1 or not _adaptive:
            return num_threads
        now = time.perf_counter()
        if num_threads != self.requested:          # first use, or set_num_threads changed
            self.requested = self.team = num_threads
            self.trial, self.retry = False, self.RETRY_MIN
            self._restart(now)
        elif self.team < num_threads and now >= self.retry_at:
            self.team, self.trial = num_threads, True   # try the full team again
            self._restart(now)
        elif now - self.since >= self.WINDOW:
            self._measure(now)
        if getattr(_governors, "cap", 0):
            _governors.cap = self.team
        return self.team

    def _measure(self, now: float) -> None:
        delay = _run_delay_ns()
        if delay is None or self.delay is None:
            self._restart(now)
            return
        waited = (delay - self.delay) * 1e-9 / ((now - self.since) * self.team)
        if self.team == self.requested:
            if waited > self.THRESHOLD:
                self.team = max(1, self.team - max(1, round(waited * self.team)))
                self.retry = min(2 * self.retry, self.RETRY_MAX) if self.trial else self.RETRY_MIN
                self.retry_at = now + self.retry
                self.trial = False
            elif self.trial:                      # the full team held up: the load has gone
                self.trial, self.retry = False, self.RETRY_MIN
        self._restart(now)


# CYFORMER_ADAPTIVE_THREADS=0 turns the governor off (benchmarks of the fixed team use it)
_adaptive = os.environ.get("CYFORMER_ADAPTIVE_THREADS", "1").strip() not in ("0", "false", "off", "no")
_governors = threading.local()


def step_governor() -> StepGovernor:
    """This Python thread's governor of decoding-step thread counts."""
    gov = getattr(_governors, "governor", None)
    if gov is None:
        gov = _governors.governor = StepGovernor()
    return gov


@contextmanager
def governed() -> Iterator[StepGovernor]:
    """A decoding loop: every kernel call in it (the encoder, softmax and top-k of each step)
    runs at most at the thread count the step governor chose for the current step."""
    gov = step_governor()
    outer = getattr(_governors, "cap", 0)
    _governors.cap = (gov.team if gov.requested == requested_num_threads() and gov.team else 1 << 30) \
        if _adaptive else 0
    try:
        yield gov
    finally:
        _governors.cap = outer


def set_adaptive(enabled: bool) -> None:
    """Turn the decoding-step thread governor on (default) or off (always the full team)."""
    global _adaptive
    if not isinstance(enabled, bool):
        raise TypeError("set_adaptive takes a bool")
    _adaptive = enabled
