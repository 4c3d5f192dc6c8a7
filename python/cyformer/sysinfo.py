"""What cyformer runs on: engine build, threads, the BLAS the kernels call, the CPU.

Everything here gathers information and returns plain dicts, lists and strings; the
``cyformer info`` command only prints ``format_info(info())``. Nothing here changes any
setting. Reading /proc/cpuinfo or threadpoolctl may fail on other systems: each function
then returns "unknown" or an empty value rather than raising.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Optional

from ._version import __version__

# Flags worth knowing for a float32 GEMM/attention engine, in the order printed.
_X86_FEATURES = ["sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                 "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
_ARM_FEATURES = ["asimd", "fphp", "asimdhp", "sve", "sve2", "bf16", "i8mm"]

CORETYPE_NOTE = ("forcing a core type can cost speed on CPUs where OpenBLAS would pick a better "
                 "kernel (e.g. Haswell kernels on an AVX-512 CPU); unset it to let OpenBLAS choose")


def _cpuinfo_lines() -> List[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:  # not Linux, or no /proc
        return []


def cpu_name() -> str:
    """The CPU model ("model name" in /proc/cpuinfo), else what platform knows, else "unknown"."""
    for line in _cpuinfo_lines():
        if line.startswith("model name") or line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_features() -> List[str]:
    """The vector-ISA features of the first CPU that matter here (avx2, fma, avx512f, ...)."""
    for line in _cpuinfo_lines():
        key = line.split(":", 1)[0].strip()
        if key in ("flags", "Features") and ":" in line:
            flags = set(line.split(":", 1)[1].split())
            keep = _X86_FEATURES if key == "flags" else _ARM_FEATURES
            return [k for k in keep if k in flags]
    return []


def _threadpool_info() -> List[dict]:
    # The kernels reach BLAS through scipy.linalg.cython_blas; importing it loads SciPy's
    # BLAS, so threadpoolctl can see it even if nothing has called a kernel yet.
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        pass
    from .threads import blas_info
    try:
        return list(blas_info())
    except Exception:  # threadpoolctl inspects loaded libraries; never let that break `info`
        return []


def _under(filepath: str, prefix: str) -> bool:
    """True when a directory of ``filepath`` is named ``prefix`` or ``prefix.libs`` etc."""
    return any(part == prefix or part.startswith(prefix + ".") for part in Path(filepath).parent.parts)


def scipy_blas() -> Optional[dict]:
    """threadpoolctl's record of the BLAS that scipy.linalg.cython_blas calls (what cyformer uses).

    NumPy often loads an OpenBLAS of its own (``numpy.libs/libscipy_openblas64_*``, 64-bit
    integers); SciPy's lives under ``scipy.libs`` (or ``scipy/``). With a system SciPy the
    only BLAS not under numpy is taken.
    """
    libs = [lib for lib in _threadpool_info() if lib.get("user_api") == "blas"]
    for pick in (lambda lib: _under(lib.get("filepath") or "", "scipy"),
                 lambda lib: not _under(lib.get("filepath") or "", "numpy"),
                 lambda lib: True):
        found = [lib for lib in libs if pick(lib)]
        if found:
            return found[0]
    return None


def _default_architecture() -> Optional[str]:
    """The core type OpenBLAS picks for this CPU by itself: asked of a fresh interpreter with
    OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) removed, since the choice is made at load time."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from cyformer.sysinfo import scipy_blas; "
            "print((scipy_blas() or {}).get('architecture') or '')")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run([sys.executable, "-c", code, here], env=env, capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip()
    return name if out.returncode == 0 and name else None


def openblas_coretype(check_default: bool = True) -> Dict[str, object]:
    """OPENBLAS_CORETYPE, the core type OpenBLAS actually runs, and whether the variable took effect.

    OpenBLAS ignores a value it does not know (``Bogus``) and keeps its own choice; it is
    ``in_effect`` only when the running core type is the one named. With ``check_default``
    (and the variable set) the core type OpenBLAS would pick without it is read too.
    """
    value = os.environ.get("OPENBLAS_CORETYPE") or None
    lib = scipy_blas()
    running = (lib or {}).get("architecture")
    in_effect = bool(value and running and value.strip().lower() == str(running).lower())
    default = _default_architecture() if value and check_default else (running if not value else None)
    return {"forced": in_effect, "set": value is not None, "value": value, "in_effect": in_effect,
            "architecture": running, "default_architecture": default,
            "note": CORETYPE_NOTE if in_effect and default and default != running else None}


def blas_description() -> str:
    """One line: "openblas 0.3.30 core=Haswell" (+ " (OPENBLAS_CORETYPE=X)" when forced).

    bench/ parses the ``core=`` field, so keep that format.
    """
    lib = scipy_blas()
    if lib is None:
        return "unknown BLAS"
    env = os.environ.get("OPENBLAS_CORETYPE")
    forced = ""
    if env:
        ignored = env.strip().lower() != str(lib.get("architecture")).lower()
        forced = f" (OPENBLAS_CORETYPE={env}{', not a known core type: ignored' if ignored else ''})"
    return f"{lib.get('internal_api')} {lib.get('version')} core={lib.get('architecture')}{forced}"


def engine_info() -> Dict[str, object]:
    """The compiled engine: OpenMP or serial, thread counts, OpenMP runtime, where it is installed."""
    from . import threads
    from ._engine import attention, linear, runtime
    from .layers.linear import kernel_names, resolve_compute_type

    here = os.path.dirname(os.path.abspath(__file__))
    omp_libs = [lib.get("filepath") for lib in _threadpool_info() if lib.get("user_api") == "openmp"]
    # An installed wheel bundles its own libgomp (cyformer.libs/); show that one when present.
    ours = [p for p in omp_libs if p and _under(p, "cyformer")]
    return {
        "version": __version__,
        "location": here,
        "openmp": bool(threads.openmp_enabled()),
        "num_threads": threads.get_num_threads(),
        "cores_available": threads._available_cores(),
        "openmp_max_threads": runtime.openmp_max_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "openmp_runtime": ours or omp_libs,
        "openmp_wait": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ},
        # decoding steps shrink the team while other processes hold the cores (threads.StepGovernor)
        "adaptive_decoding_threads": threads._adaptive and threads._run_delay_ns() is not None,
        # GEMMs of decoding size (8-256 rows): cyformer's AVX2 panel kernel, else the skinny one
        "panel_gemm": linear.panel_kernel_available(),
        "panel_body": linear.panel_body(),
        # the kernel body of each compute type (one cpuid decision, _engine/quant)
        "compute_kernels": kernel_names(),
        "auto_compute_type": resolve_compute_type("auto"),
        # the tiles of attention over long keys: "avx512", "avx2-fma" (attention_tile.h) or "sgemm"
        "attention_tiles": attention.tile_kernels(),
        # one query row against its keys (decoding, short rows): "avx512" or "portable" (attention_row.h)
        "attention_rows": attention.row_kernels(),
    }


def info() -> Dict[str, object]:
    """Everything ``cyformer info`` prints, as one dict."""
    return {
        "cyformer": engine_info(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "machine": platform.machine()},
        "blas": {"description": blas_description(), "library": scipy_blas()},
        "openblas_coretype": openblas_coretype(),
        "cpu": {"name": cpu_name(), "features": cpu_features()},
    }


def format_info(data: Optional[Dict[str, object]] = None) -> List[str]:
    """The lines of ``cyformer info``."""
    d = info() if data is None else data
    eng, py, plat, blas, core, cpu = (d["cyformer"], d["python"], d["platform"], d["blas"],
                                      d["openblas_coretype"], d["cpu"])
    lines = [f"cyformer {eng['version']}  (Python {py['version']}, {plat['system']} {plat['machine']})",
             f"installed at: {eng['location']}"]
    env = f", OMP_NUM_THREADS={eng['omp_num_threads_env']}" if eng["omp_num_threads_env"] else ""
    lines.append(f"OpenMP: {'on' if eng['openmp'] else 'off (serial build)'}; threads: {eng['num_threads']} "
                 f"(cores available: {eng['cores_available']}{env})")
    for path in eng["openmp_runtime"]:
        lines.append(f"  OpenMP runtime: {path}")
    wait = eng.get("openmp_wait") or {}
    if wait:
        lines.append(f"  OpenMP wait: {', '.join(f'{k}={v}' for k, v in wait.items())} (from the environment)")
    if "adaptive_decoding_threads" in eng:
        lines.append("  decoding steps: " + (
            "fewer threads while other processes keep cores busy, the full team otherwise "
            "(CYFORMER_ADAPTIVE_THREADS=0: always the full team)" if eng["adaptive_decoding_threads"]
            else "always the full team (CYFORMER_ADAPTIVE_THREADS=0, or no /proc/self/task/*/schedstat)"))
    if "panel_gemm" in eng:
        body = {"avx512": "AVX-512 body", "avx2": "AVX2/FMA body"}.get(eng.get("panel_body"), "AVX2/FMA")
        lines.append("decoding GEMMs (8-256 rows): " + (f"panel kernel ({body})" if eng["panel_gemm"]
                                                        else "skinny kernel and BLAS (no AVX2/FMA)"))
    if "compute_kernels" in eng:
        lines.append(f"compute types (auto: {eng['auto_compute_type']}):")
        for ct, kernel in eng["compute_kernels"].items():
            lines.append(f"  {ct}: {kernel}")
    if "attention_tiles" in eng:
        lines.append("attention over long keys (tiled, online softmax): " + {
            "avx512": "AVX-512 tile kernels", "avx2-fma": "AVX2/FMA tile kernels"}.get(
            eng["attention_tiles"], "sgemm tiles (no AVX2/FMA)"))
    if "attention_rows" in eng:
        lines.append("attention rows (decoding's one query per head): " + (
            "AVX-512 body (head widths a multiple of 16, up to 128)" if eng["attention_rows"] == "avx512"
            else "portable body"))
    lib = blas["library"]
    lines.append(f"BLAS (scipy.linalg.cython_blas): {blas['description']}")
    if lib:
        lines.append(f"  library: {lib.get('filepath')}")
        lines.append(f"  core type: {lib.get('architecture')}; BLAS threads: {lib.get('num_threads')} "
                     f"(held at 1 while cyformer kernels run)")
    default = core.get("default_architecture")
    own = f"; without it OpenBLAS picks {default} on this CPU" if default else ""
    if core["in_effect"]:
        lines.append(f"  OPENBLAS_CORETYPE={core['value']} is set and in effect: OpenBLAS runs "
                     f"{core['architecture']} kernels{own}")
        if core["note"]:
            lines.append(f"  note: {core['note']} (`cyformer bench` shows the SGEMM rate)")
    elif core.get("set"):
        lines.append(f"  OPENBLAS_CORETYPE={core['value']} is set but not in effect: OpenBLAS does not know "
                     f"that core type and runs its own choice, {core['architecture']}")
    else:
        lines.append("  OPENBLAS_CORETYPE: not set (OpenBLAS picked its kernels for this CPU)")
    features = " ".join(cpu["features"]) or "unknown"
    lines.append(f"CPU: {cpu['name']}; features: {features}")
    return lines
