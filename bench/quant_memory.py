#!/usr/bin/env python
"""Memory of quantized models (issue 10, item 5): the base seeded MarianMT model loaded by
cyformer in float32 and int8 and by CTranslate2 in float32 and int8, each in a fresh process.

Every case loads the model, then greedily decodes one batch of 4 sources x 32 tokens into 32
tokens (one thread). Reported per case, in MiB: resident memory (VmRSS) after import, after
loading, the peak (VmHWM) at the end of loading and at the end of the run, and the bytes of
the weights the engine ends with. The checkpoint is the one ``bench/decode_compare.py`` builds
(``ensure_checkpoint("base")``, cached under --work-dir); cyformer's own float32 and int8
checkpoints are saved from it once, next to it.

cyformer cases:
- ``marian f32``: the Marian folder converted at load, float32;
- ``cyformer f32``: cyformer's float32 checkpoint, memory-mapped;
- ``marian -> int8``: the Marian folder quantized at load (``compute_type="int8"``);
- ``f32 -> int8``: cyformer's float32 checkpoint quantized at load;
- ``int8 ckpt``: a checkpoint saved in int8 (``save_pretrained`` of an int8 model), mapped.
CTranslate2 cases: its float32 conversion loaded with ``compute_type`` float32 and int8.

Weight bytes: cyformer's ``model.weight_bytes()`` (the int8 / bf16 forms with their scales and
per-row sums, plus the float32 tensors outside them); CTranslate2's, the size of its
``model.bin`` converted with the same quantization (converted once, cached).

The targets of issue 10 are checked in the last columns:
- int8 peak (run) <= 35% of float32's (cyformer's int8 cases against ``marian f32``, CTranslate2
  int8 against its float32): the whole process's peaks, and the peaks less the RSS after import
  (what the model costs, Python and the libraries excluded);
- a load peaks at <= 1.3x the weight bytes it ends with: both the whole process's peak and the
  load's own (the peak at the end of loading minus the RSS after import, Python and the
  libraries excluded) are divided by the weight bytes.

    python bench/quant_memory.py                         # every case
    python bench/quant_memory.py --engines cyformer --out /tmp/quant_memory.md
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from decode_compare import DEFAULT_WORK_DIR, child_env, ensure_checkpoint  # noqa: E402
from footprint import PROBE_HEAD, cyformer_checkpoint, run_probe  # noqa: E402

PROBE = PROBE_HEAD + textwrap.dedent('''
    engine, model_dir, compute_type = sys.argv[1], sys.argv[2], sys.argv[3]
    import numpy as np
    if engine == "cyformer":
        import cyformer
        cyformer.set_num_threads(1)
    else:
        import ctranslate2
    src = np.random.default_rng(0).integers(3, 31000, size=(4, 32))
    src[:, -1] = 0
    result = {"rss_import_mb": mem()["VmRSS"]}
    if engine == "cyformer":
        model = cyformer.Transformer.from_pretrained(model_dir, compute_type=compute_type)
        m = mem()
        result.update(rss_loaded_mb=m["VmRSS"], peak_load_mb=m["VmHWM"], compute_type=model.compute_type,
                      weight_bytes=model.weight_bytes())
        model.generate(src, max_length=32, min_length=32)
    else:
        tr = ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type, intra_threads=1)
        m = mem()
        result.update(rss_loaded_mb=m["VmRSS"], peak_load_mb=m["VmHWM"], compute_type=tr.compute_type)
        ct2_translate(tr, model_dir, src)
    result["peak_run_mb"] = mem()["VmHWM"]
    print(json.dumps(result))
''')

MIB = 2 ** 20


def cyformer_checkpoints(hf_dir: str, work_dir: str) -> Dict[str, str]:
    """cyformer's float32 checkpoint of the Marian base model (footprint.py's) and an int8 one
    (saved once)."""
    import cyformer

    out = {"float32": cyformer_checkpoint(hf_dir, work_dir), "int8": os.path.join(work_dir, "base-cyformer-int8")}
    if not os.path.exists(os.path.join(out["int8"], "model.safetensors")):
        cyformer.Transformer.from_pretrained(hf_dir, compute_type="int8").save_pretrained(out["int8"])
    return out


def ct2_weight_bytes(hf_dir: str, ct2_dir: str, work_dir: str, quantization: str) -> Optional[int]:
    """Bytes of CTranslate2's model.bin in ``quantization`` (float32: the converted model; else
    converted once more with that quantization, cached)."""
    if quantization == "float32":
        return os.path.getsize(os.path.join(ct2_dir, "model.bin"))
    out = os.path.join(work_dir, f"base-ct2-{quantization}")
    if not os.path.exists(os.path.join(out, "model.bin")):
        try:
            from ctranslate2.converters import TransformersConverter
        except ImportError:
            return None
        TransformersConverter(hf_dir).convert(out, quantization=quantization, force=True)
    return os.path.getsize(os.path.join(out, "model.bin"))


CASES = [  # (engine, label, folder key, compute_type, float32 reference label)
    ("cyformer", "marian f32", "marian", "float32", None),
    ("cyformer", "cyformer f32", "cyformer-f32", "default", None),
    ("cyformer", "marian -> int8", "marian", "int8", "marian f32"),
    ("cyformer", "f32 -> int8", "cyformer-f32", "int8", "marian f32"),
    ("cyformer", "int8 ckpt", "cyformer-int8", "default", "marian f32"),
    ("ct2", "float32", "ct2", "float32", None),
    ("ct2", "int8", "ct2", "int8", "float32"),
]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    p.add_argument("--engines", nargs="+", choices=("cyformer", "ct2"), default=["cyformer", "ct2"])
    p.add_argument("--out", metavar="FILE")
    a = p.parse_args(argv)
    hf_dir, ct2_dir = ensure_checkpoint("base", a.work_dir, ct2="ct2" in a.engines)
    dirs = {"marian": hf_dir, "ct2": ct2_dir}
    if "cyformer" in a.engines:
        cy = cyformer_checkpoints(hf_dir, a.work_dir)
        dirs.update({"cyformer-f32": cy["float32"], "cyformer-int8": cy["int8"]})
    env = child_env(False)
    results: Dict[tuple, Dict] = {}
    rows = []
    for engine, label, key, compute_type, ref in CASES:
        if engine not in a.engines:
            continue
        r = run_probe(PROBE, [engine, dirs[key], compute_type], env)
        name = "cyformer" if engine == "cyformer" else "CTranslate2"
        if r is None:
            rows.append([name, label] + ["not installed"] * 10)
            continue
        if engine == "ct2":
            r["weight_bytes"] = ct2_weight_bytes(hf_dir, ct2_dir, a.work_dir, compute_type)
        results[(engine, label)] = r
        w = r.get("weight_bytes")
        load_own = r["peak_load_mb"] - r["rss_import_mb"]
        ratio = own_ratio = ""
        if ref is not None and (engine, ref) in results:
            f = results[(engine, ref)]
            ratio = f"{r['peak_run_mb'] / f['peak_run_mb']:.0%}"
            own_ratio = f"{(r['peak_run_mb'] - r['rss_import_mb']) / (f['peak_run_mb'] - f['rss_import_mb']):.0%}"
        rows.append([name, label, r["compute_type"], f"{r['rss_import_mb']:.0f}", f"{r['rss_loaded_mb']:.0f}",
                     f"{r['peak_load_mb']:.0f}", f"{r['peak_run_mb']:.0f}",
                     f"{w / MIB:.0f}" if w else "?",
                     f"{r['peak_load_mb'] * MIB / w:.2f}x" if w else "?",
                     f"{load_own * MIB / w:.2f}x" if w else "?", ratio, own_ratio])
        print(f"{name} {label}: {rows[-1][2:]}", file=sys.stderr)
    lines = ["## Memory of quantized models", "",
             "- model: the seeded base MarianMT (d_model 512, 6+6 layers, vocabulary 32000); each case in a "
             "fresh process, loading then greedy decoding of 4 sources x 32 tokens into 32, one thread",
             "- MiB of resident memory: VmRSS after import and after load, VmHWM at the end of loading and of "
             "the run; weights: the bytes the engine ends with",
             "- targets (issue 10): int8 peak <= 35% of float32's (process peaks, and peaks less the RSS after "
             "import); a load's peak <= 1.3x its weights (process peak / weights, and the load's own: load "
             "peak - RSS after import)", "",
             "| engine | load | compute type | RSS import | RSS loaded | peak load | peak run | weights | "
             "peak load / weights | load's own / weights | peak run vs float32 | over import, vs float32 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        from cyformer.io import atomic_write_bytes
        atomic_write_bytes(a.out, report.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
