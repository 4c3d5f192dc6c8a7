"""The engine's build metadata agrees with its sources, and its stubs with the compiled modules.

- setup.py's per-module ``depends`` (derived from the sources) is what the C compiler and
  Cython really read: a header change rebuilds exactly the modules that include it.
- The one activation table (engine/activation_table.h) is what the compiled ``ffn`` module,
  ``TransformerConfig`` and the kernels accept.
- Every ``python/cyformer/_engine/*.pyi`` stub declares exactly the compiled module's public
  functions, each with the compiled signature's parameters (names, order, kinds, defaults),
  and its public constants.
- MANIFEST.in ships every engine source (the sdist builds the wheel).
"""
import ast
import fnmatch
import importlib
import inspect
import os
import re
import runpy
import shutil
import subprocess
import sysconfig
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "engine")
STUBS = os.path.join(ROOT, "python", "cyformer", "_engine")
MODULES = sorted(f[:-4] for f in os.listdir(ENGINE) if f.endswith(".pyx"))


@pytest.fixture(scope="module")
def setup_py():
    """setup.py's globals, without running setup() (it only runs as __main__)."""
    pytest.importorskip("setuptools")
    return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="cyformer_setup")


def _compiler():
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    return cc if shutil.which(cc[0]) else None


def _compiler_headers(cc, c_file):
    """The engine headers a compile of c_file reads (``cc -MM``), as "engine/..." paths."""
    out = subprocess.run(cc + ["-MM", "-MG", "-I", ENGINE, "-I", sysconfig.get_paths()["include"], c_file],
                         capture_output=True, text=True, check=True).stdout
    deps = out.replace("\\\n", " ").split(":", 1)[1].split()
    found = set()
    for dep in deps:
        path = os.path.realpath(dep if os.path.isabs(dep) else os.path.join(ROOT, dep))
        if os.path.dirname(path) == os.path.realpath(ENGINE) and path.endswith(".h"):
            found.add(os.path.join("engine", os.path.basename(path)))
    return found


def test_every_engine_module_is_built(setup_py):
    assert sorted(setup_py["ENGINE_MODULES"]) == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_declared_header_depends_are_what_the_compiler_reads(name, setup_py, tmp_path):
    """The .h part of ``depends`` against ``cc -MM`` of what the module compiles.

    With an in-place build, that is the module's generated C (the headers Cython really
    emitted includes for); otherwise (a clean clone) a C file including the headers that the
    .pyx and its engine .pxd name in ``cdef extern from`` lines, so the compiler still checks
    every nested include.
    """
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler")
    declared = {d for d in setup_py["engine_depends"](name) if d.endswith(".h")}
    c_file = os.path.join(ENGINE, f"{name}.c")
    sources = [os.path.join(ENGINE, d[len("engine/"):]) for d in setup_py["engine_depends"](name)
               if d.endswith(".pxd")] + [os.path.join(ENGINE, f"{name}.pyx")]
    if not os.path.exists(c_file) or os.path.getmtime(c_file) < max(map(os.path.getmtime, sources)):
        direct = []
        for src in sources:
            with open(src) as f:
                direct += re.findall(r'^[ \t]*cdef[ \t]+extern[ \t]+from[ \t]+"([^"]+)"', f.read(), re.M)
        c_file = str(tmp_path / f"{name}_includes.c")
        with open(c_file, "w") as f:
            f.write("".join(f'#include "{h}"\n' for h in direct))
    assert declared == _compiler_headers(cc, c_file)


@pytest.mark.parametrize("name", MODULES)
def test_declared_pxd_depends_are_what_cython_reads(name, setup_py):
    deps_mod = pytest.importorskip("Cython.Build.Dependencies")
    cwd = os.getcwd()
    os.chdir(ENGINE)  # the tree resolves cimports from the engine folder, as cythonize does
    try:
        tree = deps_mod.create_dependency_tree(quiet=True)
        read = tree.all_dependencies(f"{name}.pyx")
    finally:
        os.chdir(cwd)
    engine_pxd = {os.path.join("engine", os.path.basename(p)) for p in read
                  if p.endswith(".pxd") and os.path.exists(os.path.join(ENGINE, os.path.basename(p)))
                  and os.path.dirname(os.path.abspath(os.path.join(ENGINE, p))) == ENGINE}
    declared = {d for d in setup_py["engine_depends"](name) if d.endswith(".pxd")}
    assert declared == engine_pxd


def test_depends_follow_nested_includes_and_skip_system_headers(setup_py):
    deps = setup_py["engine_depends"]
    # ffn.pyx names activation.h only; it includes the table, expf.h and vec.h
    assert {"engine/activation.h", "engine/activation_table.h", "engine/expf.h",
            "engine/vec.h"} <= set(deps("ffn"))
    # a module that includes no row kernel does not rebuild when one changes
    assert not any(d.endswith(("vec.h", "activation.h")) for d in deps("embedding"))
    assert deps("optim") == []
    for name in MODULES:
        assert all(os.path.exists(os.path.join(ROOT, d)) for d in deps(name))


def test_manifest_ships_every_engine_source():
    rules = []
    with open(os.path.join(ROOT, "MANIFEST.in")) as f:
        for line in f:
            words = line.split()
            if len(words) > 2 and words[0] == "recursive-include" and words[1] == "engine":
                rules += words[2:]
    for fname in os.listdir(ENGINE):
        if fname.endswith((".h", ".pxd", ".pyx")):
            assert any(fnmatch.fnmatch(fname, r) for r in rules), f"MANIFEST.in does not ship engine/{fname}"


# --- the activation table ---------------------------------------------------------------

def _table():
    """(kernels {name: code}, aliases {alias: kernel name}) parsed from activation_table.h."""
    with open(os.path.join(ENGINE, "activation_table.h")) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    kernels, enums, aliases = {}, {}, {}
    for enum, name, code in re.findall(r"CYF_ACTIVATION\(\s*(\w+)\s*,\s*(\w+)\s*,\s*(\d+)\s*\)", text):
        kernels[name] = int(code)
        enums[enum] = name
    for alias, enum in re.findall(r"CYF_ACTIVATION_ALIAS\(\s*(\w+)\s*,\s*(\w+)\s*\)", text):
        aliases[alias] = enums[enum]
    return kernels, aliases


def test_compiled_names_are_the_table():
    from cyformer._engine import ffn

    kernels, aliases = _table()
    expected = dict(kernels)
    expected.update({a: kernels[k] for a, k in aliases.items()})
    assert ffn.ACTIVATIONS == expected
    assert ffn.ACTIVATION_NAMES == tuple(kernels) + tuple(aliases)
    assert len(set(kernels.values())) == len(kernels)
    for name, code in expected.items():
        assert ffn.activation_code(name) == code


def test_config_accepts_exactly_the_table():
    from cyformer._engine import ffn
    from cyformer.config import ACTIVATIONS, TransformerConfig

    assert tuple(ACTIVATIONS) == ffn.ACTIVATION_NAMES
    for name in ffn.ACTIVATION_NAMES:  # identity and gelu_new included
        assert TransformerConfig(d_model=8, n_heads=2, d_ff=16, activation=name).activation == name
    for bad in ("tanh", "", "GELU"):
        with pytest.raises(ValueError):
            TransformerConfig(d_model=8, n_heads=2, d_ff=16, activation=bad)
        with pytest.raises(ValueError):
            ffn.activation_code(bad)


def test_codes_outside_the_table_are_rejected():
    from cyformer._engine import ffn

    x = np.zeros((2, 3), np.float32)
    valid = set(ffn.ACTIVATIONS.values())
    for code in (-1, max(valid) + 1, 1000):
        with pytest.raises(ValueError):
            ffn.bias_act_forward(x, None, code)
        with pytest.raises(ValueError):
            ffn.act_backward(x, x, code)


@pytest.mark.parametrize("name", ["swish", "gelu_new", "gelu_pytorch_tanh"])
def test_aliases_run_their_kernel_bit_for_bit(name):
    from cyformer._engine import ffn

    kernels, aliases = _table()
    rng = np.random.default_rng(0)
    pre = rng.standard_normal((5, 37)).astype(np.float32) * 3
    bias = rng.standard_normal(37).astype(np.float32)
    outs = []
    for act in (name, aliases[name], kernels[aliases[name]]):
        x = pre.copy()
        ffn.bias_act_forward(x, bias, act)
        dh = np.ones_like(pre)
        ffn.act_backward(dh, pre, act)
        outs.append((x, dh))
    for x, dh in outs[1:]:
        assert np.array_equal(x, outs[0][0]) and np.array_equal(dh, outs[0][1])


def test_identity_adds_the_bias_and_passes_gradients():
    from cyformer._engine import ffn

    rng = np.random.default_rng(1)
    pre = rng.standard_normal((4, 9)).astype(np.float32)
    bias = rng.standard_normal(9).astype(np.float32)
    x = pre.copy()
    ffn.bias_act_forward(x, bias, "identity")
    assert np.array_equal(x, pre + bias)
    out = np.empty_like(pre)
    saved = pre.copy()
    ffn.bias_act_forward_save(saved, bias, "identity", out)
    assert np.array_equal(out, pre + bias) and np.array_equal(saved, pre + bias)
    dh = rng.standard_normal((4, 9)).astype(np.float32)
    before = dh.copy()
    ffn.act_backward(dh, pre, "identity")
    assert np.array_equal(dh, before)


# --- stubs against the compiled modules ------------------------------------------------

_KINDS = {"posonlyargs": inspect.Parameter.POSITIONAL_ONLY, "args": inspect.Parameter.POSITIONAL_OR_KEYWORD,
          "kwonlyargs": inspect.Parameter.KEYWORD_ONLY}
_NO_DEFAULT = object()


def _stub(name):
    """(functions {name: [(param, kind, default)]}, constants {name}) declared by NAME.pyi."""
    with open(os.path.join(STUBS, f"{name}.pyi")) as f:
        tree = ast.parse(f.read())
    functions, constants = {}, set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            params = []
            positional = a.posonlyargs + a.args
            defaults = [_NO_DEFAULT] * (len(positional) - len(a.defaults)) + list(a.defaults)
            for arg, default in zip(positional, defaults):
                kind = _KINDS["posonlyargs" if arg in a.posonlyargs else "args"]
                params.append((arg.arg, kind, default))
            if a.vararg:
                params.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, _NO_DEFAULT))
            for arg, default in zip(a.kwonlyargs, a.kw_defaults):
                params.append((arg.arg, _KINDS["kwonlyargs"], _NO_DEFAULT if default is None else default))
            if a.kwarg:
                params.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, _NO_DEFAULT))
            functions[node.name] = params
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            constants.add(node.target.id)
        elif isinstance(node, ast.Assign):
            constants.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return functions, {c for c in constants if not c.startswith("_")}


def _compiled(name):
    """(functions {name: Signature}, constants {name}) of cyformer._engine.NAME."""
    mod = importlib.import_module(f"cyformer._engine.{name}")
    functions, constants = {}, set()
    for attr, value in vars(mod).items():
        if attr.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if callable(value):
            if getattr(value, "__module__", None) == mod.__name__:
                functions[attr] = inspect.signature(value)
        else:
            constants.add(attr)
    return functions, constants


@pytest.mark.parametrize("name", MODULES)
def test_stub_matches_compiled_module(name):
    stub_functions, stub_constants = _stub(name)
    functions, constants = _compiled(name)
    assert sorted(stub_functions) == sorted(functions), "public functions differ"
    assert stub_constants == constants, "public constants differ"
    for fname, signature in functions.items():
        compiled = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
        declared = stub_functions[fname]
        assert [(n, k) for n, k, _ in declared] == [(n, k) for n, k, _ in compiled], \
            f"{name}.{fname}: parameters differ"
        for (pname, _, d), (_, _, c) in zip(declared, compiled):
            if d is _NO_DEFAULT:
                assert c is inspect.Parameter.empty, f"{name}.{fname}({pname}): the stub has no default"
            elif isinstance(d, ast.Constant) and d.value is Ellipsis:
                assert c is not inspect.Parameter.empty, f"{name}.{fname}({pname}): no default compiled"
            else:
                assert ast.literal_eval(d) == c, f"{name}.{fname}({pname}): default differs"
