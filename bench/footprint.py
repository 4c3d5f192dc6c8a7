#!/usr/bin/env python
"""Footprint: wheel size, import time and memory, and the peak memory of a base model run,
for cyformer, CTranslate2 and PyTorch (transformers), each measured in a fresh process.

For the model run every engine loads the same seeded base MarianMT checkpoint (built and
converted by bench/decode_compare.py's ``ensure_checkpoint``, cached under --work-dir):
cyformer memory-maps its own checkpoint (converted once from the Marian folder), CTranslate2
loads its converted float32 model, transformers loads the Marian folder. Each then greedily
decodes one batch of 4 sources of 32 tokens into 32 tokens. Reported: resident memory
(VmRSS) after import, after loading, the peak (VmHWM) over the run, and the seconds taken.

    python bench/footprint.py                           # all engines
    python bench/footprint.py --wheel dist/cyformer-*.whl --out /tmp/footprint.md
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import textwrap
from typing import Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from decode_compare import DEFAULT_WORK_DIR, child_env, ensure_checkpoint  # noqa: E402

# The probes' shared part: mem() reads this process's resident memory (VmRSS, and the peak
# VmHWM) in MiB; ct2_translate runs CTranslate2's greedy batch over ids through its vocabulary.
PROBE_HEAD = textwrap.dedent('''
    import json, os, sys, time
    def mem():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) / 1024
        return out
    def ct2_translate(tr, model_dir, src):
        vocab = json.load(open(os.path.join(model_dir, "shared_vocabulary.json")))
        toks = [[vocab[i] for i in row] for row in src.tolist()]
        tr.translate_batch(toks, beam_size=1, max_decoding_length=32, min_decoding_length=32)
''')

PROBE = PROBE_HEAD + textwrap.dedent('''
    engine, model_dir, phase = sys.argv[1], sys.argv[2], sys.argv[3]
    base = mem()
    t0 = time.perf_counter()
    if engine == "cyformer":
        import cyformer
    elif engine == "ct2":
        import ctranslate2
    else:
        import torch, transformers
    result = {"import_s": time.perf_counter() - t0, "rss_import_mb": mem()["VmRSS"], "rss_python_mb": base["VmRSS"]}
    if phase == "run":
        import numpy as np
        src = np.random.default_rng(0).integers(3, 31000, size=(4, 32))
        src[:, -1] = 0
        t0 = time.perf_counter()
        if engine == "cyformer":
            cyformer.set_num_threads(1)
            model = cyformer.Transformer.from_pretrained(model_dir)
            result["mapped"] = type(model.params).__name__
            result["rss_loaded_mb"] = mem()["VmRSS"]
            out = model.generate(src, max_length=32, min_length=32)
        elif engine == "ct2":
            tr = ctranslate2.Translator(model_dir, device="cpu", intra_threads=1)
            result["rss_loaded_mb"] = mem()["VmRSS"]
            ct2_translate(tr, model_dir, src)
        else:
            torch.set_num_threads(1)
            model = transformers.MarianMTModel.from_pretrained(model_dir).eval()
            result["rss_loaded_mb"] = mem()["VmRSS"]
            with torch.inference_mode():
                model.generate(input_ids=torch.from_numpy(src), max_new_tokens=32, min_new_tokens=32, num_beams=1)
        result["run_s"] = time.perf_counter() - t0
        result["rss_peak_mb"] = mem()["VmHWM"]
    print(json.dumps(result))
''')


def run_probe(script: str, args: List[str], env) -> Optional[Dict]:
    """Run ``script`` in a fresh process with ``args``; its last stdout line as JSON (None when
    the engine is not installed)."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        if "ModuleNotFoundError" in proc.stderr:
            return None
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe(engine: str, model_dir: str, phase: str, env) -> Optional[Dict]:
    return run_probe(PROBE, [engine, model_dir, phase], env)


def cyformer_checkpoint(hf_dir: str, work_dir: str) -> str:
    """Our own memory-mappable checkpoint of the Marian base model (converted once)."""
    out = os.path.join(work_dir, "base-cyformer")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        import cyformer
        cyformer.Transformer.from_pretrained(hf_dir).save_pretrained(out)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", help="a built wheel to report the size of (default: newest under dist/ or wheelhouse/)")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    p.add_argument("--repeat", type=int, default=3, help="import measurements per engine (median)")
    p.add_argument("--out", metavar="FILE")
    a = p.parse_args(argv)
    hf_dir, ct2_dir = ensure_checkpoint("base", a.work_dir, ct2=True)
    cy_dir = cyformer_checkpoint(hf_dir, a.work_dir)
    env = child_env(False)
    dirs = {"cyformer": cy_dir, "ct2": ct2_dir, "torch": hf_dir}
    rows = []
    for engine, name in (("cyformer", "cyformer"), ("ct2", "CTranslate2"), ("torch", "PyTorch + transformers")):
        imports = [probe(engine, dirs[engine], "import", env) for _ in range(a.repeat)]
        if imports[0] is None:
            rows.append([name] + ["not installed"] * 6)
            continue
        imp = sorted(imports, key=lambda r: r["import_s"])[len(imports) // 2]
        run = probe(engine, dirs[engine], "run", env)
        rows.append([name, f"{imp['import_s'] * 1e3:.0f}", f"{imp['rss_import_mb']:.0f}",
                     f"{run['rss_loaded_mb']:.0f}", f"{run['rss_peak_mb']:.0f}", f"{run['run_s']:.2f}",
                     run.get("mapped", "")])
        print(f"{name}: {rows[-1]}", file=sys.stderr)
    wheel = a.wheel
    if wheel is None:
        found = sorted(glob.glob(os.path.join(os.path.dirname(_HERE), "dist", "cyformer-*.whl"))
                       + glob.glob("/tmp/*/wheelhouse/cyformer-*.whl"), key=os.path.getmtime)
        wheel = found[-1] if found else None
    weights = os.path.getsize(os.path.join(cy_dir, "model.safetensors")) / 2 ** 20
    lines = ["## Footprint", "",
             f"- wheel: {os.path.basename(wheel)}, {os.path.getsize(wheel) / 1024:.0f} KiB" if wheel else "- wheel: (none built)",
             f"- model: the seeded base MarianMT (d_model 512, 6+6 layers, vocabulary 32000), float32; "
             f"cyformer's checkpoint is {weights:.0f} MiB, memory-mapped",
             "- run: greedy decoding of 4 sources x 32 tokens into 32 tokens, one thread, each engine in a fresh process",
             "- memory is resident set size (VmRSS) in MiB; peak is VmHWM over the whole process", "",
             "| engine | import ms | RSS after import | RSS after load | peak RSS (load + run) | run s | weights buffer |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
