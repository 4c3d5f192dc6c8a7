"""Smoke test of an installed cyformer wheel; run by .ci/wheel_smoke.sh as ``python - REPO VENV < this``.

Fed on stdin from an empty working directory, so nothing of the source tree is importable:
every check below is about what the wheel installed. Exits non-zero (an AssertionError or
SystemExit with a message) on the first failure.
"""
import ast
import glob
import importlib
import os
import shutil
import sys
import sysconfig
import warnings

import numpy as np

repo, venv = (os.path.realpath(p) for p in sys.argv[1:3])


def check(ok, message):
    if not ok:
        sys.exit(f"wheel_smoke: FAIL: {message}")


# No compiler reachable: nothing below could have been built here.
for tool in ("gcc", "cc", "c++", "g++", "clang", "ld", (sysconfig.get_config_var("CC") or "gcc").split()[0]):
    check(shutil.which(tool) is None, f"{tool} is on PATH ({shutil.which(tool)}); the smoke test must run without a compiler")

import cyformer  # noqa: E402
from cyformer import sysinfo  # noqa: E402

site = os.path.realpath(sysconfig.get_paths()["platlib"])
where = os.path.realpath(cyformer.__file__)
check(where.startswith(site + os.sep), f"cyformer was imported from {where}, not the venv's site-packages {site}")
check(not where.startswith(repo + os.sep), f"cyformer was imported from the source tree ({where})")
check(sys.prefix == venv or os.path.realpath(sys.prefix) == venv, f"running in {sys.prefix}, not the fresh venv {venv}")
print(f"cyformer {cyformer.__version__} from {os.path.dirname(where)}")

# Every compiled module imports from site-packages, and has its stub next to it.
pkg = os.path.dirname(where)
compiled = sorted(os.path.basename(p).split(".")[0] for p in glob.glob(os.path.join(pkg, "_engine", "*.so")))
check(compiled, "no compiled modules in cyformer/_engine/")
check(os.path.exists(os.path.join(pkg, "py.typed")), "cyformer/py.typed is not installed")
for name in compiled:
    mod = importlib.import_module(f"cyformer._engine.{name}")
    check(os.path.realpath(mod.__file__).startswith(site + os.sep), f"cyformer._engine.{name} not from site-packages")
    stub = os.path.join(pkg, "_engine", f"{name}.pyi")
    # A missing or drifted stub (a kernel added or removed without its stub) is reported, and
    # fatal only with CYFORMER_STRICT_STUBS: the stubs are written by hand next to the .pyx
    # files and may lag a commit behind.
    if not os.path.exists(stub):
        check(not os.environ.get("CYFORMER_STRICT_STUBS"), f"no type stub installed for cyformer._engine.{name}")
        warnings.warn(f"no type stub installed for cyformer._engine.{name}")
        continue
    tree = ast.parse(open(stub).read())
    declared = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    declared |= {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                 for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and not isinstance(v, type(os))}
    if public - declared or declared - public:
        message = (f"stub {name}.pyi is out of step with the module: missing {sorted(public - declared)}, "
                   f"extra {sorted(declared - public)}")
        check(not os.environ.get("CYFORMER_STRICT_STUBS"), message)
        warnings.warn(message)
print(f"engine modules: {', '.join(compiled)}")

info = sysinfo.info()
eng = info["cyformer"]
if eng["openmp"]:
    # The wheel's own libgomp (auditwheel puts it in cyformer.libs/) is the one in use.
    check(any("cyformer.libs" in p for p in eng["openmp_runtime"]),
          f"the OpenMP runtime in use is not the bundled one: {eng['openmp_runtime']}")
check(info["blas"]["library"] is not None, "threadpoolctl sees no BLAS after loading scipy.linalg.cython_blas")
print(f"OpenMP: {eng['openmp']} via {eng['openmp_runtime']}; BLAS: {info['blas']['description']}")

# A small seeded model: forward and beam search, shapes and values.
config = cyformer.TransformerConfig(src_vocab_size=50, d_model=32, n_heads=4, d_ff=64,
                                    n_encoder_layers=2, n_decoder_layers=2, max_len=40)
model = cyformer.Transformer(config, seed=0)
src = [[5, 17, 42, 8, 2], [9, 11, 2]]
tgt_in = [[1, 33, 7], [1, 12]]
cyformer.set_num_threads(1)
logits1 = np.array(model.forward(src, tgt_in), copy=True)
cyformer.set_num_threads(2)
logits = model.forward(src, tgt_in)
check(logits.shape == (2, 3, 50), f"forward gave shape {logits.shape}, expected (2, 3, 50)")
check(logits.dtype == np.float32, f"forward gave dtype {logits.dtype}, expected float32")
check(bool(np.isfinite(logits).all()), "forward gave non-finite logits")
check(bool(np.all(logits[1, 2] == 0)), "logits past the second target's length are not zero")
check(float(np.abs(logits[0]).max()) > 0, "forward gave all-zero logits")
# Thread count must not change results beyond float rounding (DESIGN.md, section 3).
check(np.allclose(logits1, logits, rtol=1e-5, atol=1e-5),
      f"1 and 2 threads disagree: max |diff| {np.abs(logits1 - logits).max():.3g}")
again = cyformer.Transformer(config, seed=0).forward(src, tgt_in)
check(np.array_equal(again, logits), "the same seed gave different weights/logits")

results = model.generate(src, beam_size=4, max_length=10)
check(len(results) == 2, f"generate returned {len(results)} results for 2 sources")
for i, r in enumerate(results):
    check(len(r.sequences) >= 1, f"source {i}: no hypothesis")
    seq = list(r.sequences[0])
    check(1 <= len(seq) <= 10, f"source {i}: {len(seq)} tokens, expected 1..10 (max_length=10)")
    check(all(isinstance(t, (int, np.integer)) and 0 <= t < 50 for t in seq), f"source {i}: token out of range: {seq}")
    check(r.scores is not None and all(np.isfinite(s) for s in r.scores), f"source {i}: scores {r.scores}")
    print(f"beam search, source {i}: {seq} score {r.scores[0]:.4f}")
print("wheel smoke test: OK")
