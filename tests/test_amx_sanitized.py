"""The AMX tile bodies: on the software model, built from engine/ with AddressSanitizer and UBSan
(tests/amx_harness.c): no access outside the buffers the kernels are given, exact sums, no tile
shape the hardware would reject (needs a source checkout, a C compiler with the sanitizers, and
the AVX-512 instructions of the bodies' stores); and the compiled hardware bodies, which make no
call while tiles are configured (needs objdump)."""
import os
import shutil
import subprocess

import pytest

from cyformer._engine import quant

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE = os.path.join(os.path.dirname(HERE), "engine")


def _compiler():
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


@pytest.mark.skipif(not os.path.exists(os.path.join(ENGINE, "amx.h")), reason="no engine/ sources here")
@pytest.mark.skipif(_compiler() is None, reason="no C compiler")
@pytest.mark.skipif(not (quant.int8_path_supported("vnni512") and quant.bf16_path_supported("avx512bf16")),
                    reason="the AMX model's stores need AVX-512 VNNI and AVX-512 BF16")
def test_amx_bodies_under_sanitizers(tmp_path):
    exe = str(tmp_path / "amx_harness")
    build = subprocess.run([_compiler(), "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                            "-fno-omit-frame-pointer", "-I", ENGINE, os.path.join(HERE, "amx_harness.c"),
                            "-o", exe, "-lm"], capture_output=True, text=True)
    if build.returncode != 0 and ("asan" in build.stderr or "sanitize" in build.stderr):
        pytest.skip(f"the compiler cannot build with the sanitizers: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    run = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "model faults 0" in run.stdout


def _disassembly(path, function):
    # the instructions of each copy of `function` in the shared object (objdump); a stripped
    # object (a repaired wheel's) has no function names: then the whole text, in address order
    # (a body runs from its ldtilecfg to its tilerelease); None without objdump
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", path], capture_output=True, text=True).stdout
    bodies, current, everything = [], None, []
    for line in text.splitlines():
        if line.endswith(">:"):
            current = [] if f"<{function}" in line else None
            if current is not None:
                bodies.append(current)
        elif line.strip():
            everything.append(line)
            if current is not None:
                current.append(line)
    return bodies or [everything]


@pytest.mark.parametrize("function", ["cyf_qa_gemm_HW", "cyf_ba_gemm_HW"])
def test_amx_hardware_bodies_call_nothing_while_tiles_are_configured(function):
    # Tile data and the tile configuration are caller-saved: a call between ldtilecfg and
    # tilerelease (a memcpy for a tail, say) would rely on the callee leaving them alone.
    bodies = _disassembly(quant.__file__, function)
    if bodies is None:
        pytest.skip("no objdump")
    configured_somewhere = False
    for body in bodies:
        configured = False
        for line in body:
            if "ldtilecfg" in line:
                configured = configured_somewhere = True
            elif "tilerelease" in line:
                configured = False
            elif configured:
                assert "call" not in line.split(), f"{function}: {line.strip()}"
    assert configured_somewhere
