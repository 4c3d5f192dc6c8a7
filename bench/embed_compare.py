#!/usr/bin/env python
"""Sentence embeddings: cyformer vs sentence-transformers on PyTorch vs onnxruntime (float32 and
its dynamic int8 quantization), each engine in its own process (issue 11, item 5).

The model has the shape of the common MiniLM sentence encoders (6 layers, d_model 384, 12 heads,
d_ff 1536, vocabulary 30522, 512 positions) with seeded weights, as a sentence-transformers
folder (Transformer + mean Pooling + Normalize) and the same BertModel exported with
``torch.onnx.export`` (dynamic batch and length), then quantized with
``onnxruntime.quantization.quantize_dynamic`` (int8 weights). The input is 256 seeded sentences
of 8 to 128 tokens ([CLS] and [SEP] included), mixed lengths. One call embeds all 256, text in
and unit vectors out, tokenization included, in batches of ``--batch-size`` (32):

* cyformer: ``TextEncoder.embed`` (length-sorted batches, packed without padding);
* torch: ``SentenceTransformer.encode`` (length-sorted batches, padded);
* ort / ort-int8: the same tokenizer (``tokenizers``), length-sorted batches padded to the batch's
  longest, ``InferenceSession.run``, mean pooling over the mask and L2 normalisation in NumPy.

Each engine x thread count runs in a fresh subprocess (threads set before anything is imported:
``OMP_NUM_THREADS``, ``cyformer.set_num_threads``, ``torch.set_num_threads``, ORT's
``intra_op_num_threads``), makes one warm-up call, then ``--repeat`` timed calls; the median is
reported, with each engine's ratio to cyformer float32 and its largest 1 - cosine against
sentence-transformers' vectors. Progress goes to stderr, the markdown report to stdout (and
``--out FILE``).

    python bench/embed_compare.py                     # 1 and 2 threads, 5 calls each
    python bench/embed_compare.py --threads 1 --repeat 1 --engines cyformer torch   # quick check

Needs the ``test`` and ``bench`` extras (sentence-transformers, onnx, onnxruntime); an engine
whose package is missing is reported as such.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))   # _reference: the seeded BERT and WordPiece builders
try:
    import cyformer
except ImportError:  # pragma: no cover - run from a source tree
    sys.path.insert(0, os.path.join(REPO, "python"))
    import cyformer

ENGINES = ("cyformer", "cyformer-int8", "torch", "ort", "ort-int8")
MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, type_vocab_size=2)
VOCAB_SIZE = 30522
N_SENTENCES, MIN_TOKENS, MAX_TOKENS = 256, 8, 128


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the model and the sentences (parent process) --------------------------------------------
def _words(n: int, seed: int) -> List[str]:
    """``n`` distinct seeded lowercase words (one WordPiece token each once in the vocabulary)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: Dict[str, None] = {}
    while len(words) < n:
        words["".join(rng.choice(letters, int(rng.integers(3, 10))))] = None
    return list(words)


def sentences(words: List[str], seed: int = 0) -> List[str]:
    """N_SENTENCES texts of MIN_TOKENS..MAX_TOKENS tokens with [CLS] and [SEP] (uniform lengths)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    lengths = rng.integers(MIN_TOKENS, MAX_TOKENS + 1, N_SENTENCES)
    return [" ".join(rng.choice(words, int(n) - 2)) for n in lengths]


def prepare(work: str, seed: int = 0) -> dict:
    """Write the sentence-transformers folder, the ONNX models and the sentences into ``work``."""
    import torch
    from _reference import bert_text_folder, sentence_transformer

    n_special = 9 + 3 + 2 * 36   # what wordpiece_tokenizer adds around the words
    words = _words(VOCAB_SIZE - n_special, seed)
    bert = os.path.join(work, "bert")
    model, fast = bert_text_folder(bert, MINILM, seed=seed, words=words, model_max_length=512)
    st_dir = os.path.join(work, "st")
    sentence_transformer(bert, pooling="mean", normalize=True).save(st_dir)
    texts = sentences(words, seed)
    with open(os.path.join(work, "sentences.json"), "w") as f:
        json.dump(texts, f)
    n_tokens = [len(ids) for ids in fast(texts)["input_ids"]]
    info = {"vocab": len(fast), "tokens": sum(n_tokens), "min": min(n_tokens), "max": max(n_tokens)}
    try:
        import onnx  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        info["onnx"] = "onnx / onnxruntime not installed"
        return info
    fp32 = os.path.join(work, "model.onnx")
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    model.config._attn_implementation = "eager"   # a graph of plain ops, as ORT users export it

    class Hidden(torch.nn.Module):   # the three inputs by name -> last_hidden_state
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(Hidden(model).eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), fp32,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "length"} for n in
                                        ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")})
    quantize_dynamic(fp32, os.path.join(work, "model-int8.onnx"), weight_type=QuantType.QInt8)
    return info


# -- one engine, one thread count (child process) ---------------------------------------------
def _ort_embedder(work: str, path: str, threads: int, batch_size: int):
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(os.path.join(work, "st", "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(512)

    def embed(texts):
        enc = tok.encode_batch(texts)
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i].ids))
        out = np.empty((len(texts), 384), dtype=np.float32)
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            width = len(enc[chunk[0]].ids)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for r, i in enumerate(chunk):
                ids[r, :len(enc[i].ids)] = enc[i].ids
                mask[r, :len(enc[i].ids)] = 1
            h = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                   "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[:, :, None].astype(np.float32)
            v = (h * m).sum(1) / m.sum(1)
            out[chunk] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return out
    return embed, f"onnxruntime {ort.__version__}"


def _embedder(engine: str, work: str, threads: int, batch_size: int):
    """(embed(texts) -> [N, 384], version string), or None when the engine is not available."""
    st_dir = os.path.join(work, "st")
    if engine.startswith("cyformer"):
        cyformer.set_num_threads(threads)
        enc = cyformer.TextEncoder.from_pretrained(st_dir)
        if engine == "cyformer-int8":
            import inspect
            if "compute_type" not in inspect.signature(cyformer.Encoder.from_pretrained).parameters:
                return None   # the int8 weights have not landed in this build
            enc.model = cyformer.Encoder.from_pretrained(st_dir, compute_type="int8")
        return (lambda texts: enc.embed(texts, batch_size=batch_size)), f"cyformer {cyformer.__version__}"
    if engine == "torch":
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(st_dir, device="cpu")

        def embed(texts):
            with torch.inference_mode():
                return st.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        return embed, f"torch {torch.__version__}"
    name = "model.onnx" if engine == "ort" else "model-int8.onnx"
    if not os.path.exists(os.path.join(work, name)):
        return None
    return _ort_embedder(work, os.path.join(work, name), threads, batch_size)


def child(engine: str, work: str, threads: int, repeat: int, batch_size: int) -> dict:
    import numpy as np
    try:
        made = _embedder(engine, work, threads, batch_size)
    except ImportError as e:
        return {"missing": str(e)}
    if made is None:
        return {"missing": "not available in this build"}
    embed, version = made
    with open(os.path.join(work, "sentences.json")) as f:
        texts = json.load(f)
    vectors = embed(texts)   # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        vectors = embed(texts)
        times.append(time.perf_counter() - t0)
    np.save(os.path.join(work, f"vectors-{engine}-{threads}.npy"), np.asarray(vectors, dtype=np.float32))
    return {"median_s": statistics.median(times), "times": times, "version": version}


def run_child(engine: str, work: str, threads: int, repeat: int, batch_size: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(cyformer.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, os.path.abspath(__file__), "--child", engine, "--work", work, "--threads", str(threads),
           "--repeat", str(repeat), "--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def cosine_gap(work: str, engine: str, threads: int) -> Optional[float]:
    import numpy as np
    ref_path = os.path.join(work, f"vectors-torch-{threads}.npy")
    path = os.path.join(work, f"vectors-{engine}-{threads}.npy")
    if not (os.path.exists(ref_path) and os.path.exists(path)):
        return None
    a, b = np.load(path), np.load(ref_path)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.max(1 - cos))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeat", type=int, default=5, help="timed calls per engine (after 1 warm-up call)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--work", help="folder for the model, ONNX files and vectors (default: a temporary one)")
    p.add_argument("--out", metavar="FILE", help="also write the markdown report to FILE")
    p.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1 or args.batch_size < 1 or any(n < 1 for n in args.threads):
        p.error("--repeat, --batch-size and --threads must be >= 1")
    if args.child:
        print(json.dumps(child(args.child, args.work, args.threads[0], args.repeat, args.batch_size)))
        return 0

    from cyformer.sysinfo import cpu_features, cpu_name
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="embed_compare-")
        args.work = tmp.name
    os.makedirs(args.work, exist_ok=True)
    started = time.perf_counter()
    log(f"preparing the model, the ONNX files and {N_SENTENCES} sentences in {args.work} ...")
    info = prepare(args.work)
    engines = list(args.engines)
    if "torch" in engines:   # the reference of the cosine column runs first
        engines.remove("torch")
        engines.insert(0, "torch")
    results: Dict[tuple, dict] = {}
    versions: Dict[str, str] = {}
    for nt in args.threads:
        for engine in engines:
            log(f"[{engine}, {nt} thread(s), {args.repeat} calls]")
            r = run_child(engine, args.work, nt, args.repeat, args.batch_size)
            results[(engine, nt)] = r
            if "version" in r:
                versions[engine.split("-")[0]] = r["version"]
            log("    " + (f"{1e3 * r['median_s']:.0f} ms median" if "median_s" in r else
                          r.get("missing") or r.get("error", "?")))
    elapsed = time.perf_counter() - started

    header = ["engine", "threads", "median ms", "sentences/s", "cyformer speed-up", "max 1 - cos vs torch"]
    lines = [f"## Sentence embeddings: {N_SENTENCES} sentences, MiniLM-shaped BERT (6 x 384, 12 heads, "
             f"d_ff 1536), mean pooling + Normalize",
             "",
             f"- CPU: {cpu_name()}; {os.cpu_count()} logical CPUs; ISA: {' '.join(cpu_features()) or '?'}",
             f"- Python {platform.python_version()}; " + "; ".join(f"{v}" for v in versions.values()),
             f"- {N_SENTENCES} sentences of {info['min']}-{info['max']} tokens ({info['tokens']} in all), "
             f"vocabulary {info['vocab']}, batch size {args.batch_size}, text in, unit vectors out",
             f"- median of {args.repeat} calls after 1 warm-up call, each engine in its own process; "
             f"speed-up = the engine's time / cyformer float32's at the same thread count",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; total run time {elapsed:.0f} s"]
    if "onnx" in info:
        lines.append(f"- onnxruntime: {info['onnx']}")
    lines += ["", "| " + " | ".join(header) + " |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for nt in args.threads:
        base = results.get(("cyformer", nt), {}).get("median_s")
        for engine in engines:
            r = results[(engine, nt)]
            if "median_s" not in r:
                lines.append(f"| {engine} | {nt} | n/a | | | {r.get('missing') or r.get('error')} |")
                continue
            ms = 1e3 * r["median_s"]
            ratio = f"{r['median_s'] / base:.2f}x" if base else "n/a"
            gap = cosine_gap(args.work, engine, nt)
            lines.append(f"| {engine} | {nt} | {ms:.0f} | {N_SENTENCES / r['median_s']:.0f} | {ratio} | "
                         f"{'' if gap is None else f'{gap:.1e}'} |")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
