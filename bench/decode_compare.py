#!/usr/bin/env python
"""Decoding speed: cyformer vs CTranslate2 vs Hugging Face transformers on seeded MarianMT models.

One run of this script

1. builds (once; cached under --work-dir) two MarianMT checkpoints with seeded random
   weights, "small" (d_model 256, 4 heads, FFN 1024, 3+3 layers) and "base" (512, 8, 2048,
   6+6), vocabulary 32000, as Hugging Face folders (config.json, generation_config.json,
   model.safetensors, vocab.json, source.spm, target.spm), converts each to a CTranslate2
   float32 model, and checks that CTranslate2, transformers and cyformer agree on greedy
   output for two sources (a warning is printed if they do not);
2. times translating sources of 32 random token ids into exactly 64 generated tokens for
   every model x batch x mode (greedy, beam 4) x thread count, and the encoder alone over
   64-token sources (mode "encode"; CTranslate2 has no encoder call, so its figure is
   translate_batch with max_decoding_length=1: the encoder and one greedy step), with each
   engine in its own subprocess (``decode_compare.py --worker ENGINE ...``, one JSON line
   on stdout);
3. prints a markdown table of output tokens per second (batch x 64 / median seconds per
   call) with the cyformer/CT2 and cyformer/HF ratios, and whether the engines' outputs
   agree with cyformer's.

Generated lengths. cyformer (``max_length``) and transformers (``max_new_tokens``) count
generated tokens including EOS; the Marian configs set ``forced_eos_token_id`` so with
min = max = 64 both produce 63 tokens followed by a forced EOS. CTranslate2 has no
forced EOS: with ``min_decoding_length = max_decoding_length = 64`` it runs 64 decoding
steps and returns 64 tokens, none of them EOS (EOS is disallowed below the minimum and
decoding stops at the maximum without appending it). Every engine thus runs 64 decoder
steps per hypothesis; the workers report the lengths they produced and the report flags
any run that did not produce exactly 64 tokens. Outputs are compared with cyformer's on
all 64 tokens for transformers and on the first 63 for CTranslate2.

OpenBLAS core type. cyformer's GEMMs go through SciPy's OpenBLAS, whose kernel choice
``OPENBLAS_CORETYPE`` overrides. Children run with OPENBLAS_CORETYPE removed from their
environment (OpenBLAS picks the kernels for this CPU, as for a user) unless
``--coretype-inherited`` is given, which keeps this shell's value. CTranslate2 and
torch use their own BLAS libraries (oneDNN/MKL, not SciPy's OpenBLAS).

    python bench/decode_compare.py                                  # everything (~15-20 min on 2 cores)
    python bench/decode_compare.py --models small --batches 1 --repeat 1   # quick check
    python bench/decode_compare.py --engines cyformer ct2 --threads 1 --out /tmp/decode.md
    python bench/decode_compare.py --compute-type int8 --engines cyformer ct2      # int8 vs CT2 int8
    python bench/decode_compare.py --compute-type bfloat16 --ct2-compute-type int8_bfloat16 --engines cyformer ct2

Compute types. ``--compute-type`` runs cyformer in float32, int8 or bfloat16 and CTranslate2
in the matching type (``--ct2-compute-type`` overrides it: int8_bfloat16, int8_float32, ...);
transformers always runs float32. Outputs of quantized engines are compared all the same:
each quantizes differently, so some disagreement is expected there.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO_PYTHON = os.path.join(os.path.dirname(_HERE), "python")

try:
    import cyformer
except ImportError:  # not installed: use the in-tree build
    sys.path.insert(0, _REPO_PYTHON)
    import cyformer
from cyformer.cli import _cpu_name  # noqa: E402
from cyformer.sysinfo import cpu_features as _cpu_features  # noqa: E402

MODELS: Dict[str, Dict[str, int]] = {
    "small": dict(d_model=256, heads=4, ffn=1024, layers=3),
    "base": dict(d_model=512, heads=8, ffn=2048, layers=6),
}
VOCAB = 32000
PAD = VOCAB - 1  # also the decoder start token, as in Marian
EOS = 0
UNK = 1
SRC_LEN = 32
GEN_LEN = 64
SEED = 0
MODES = {"greedy": 1, "beam4": 4, "encode": 0}
# "encode": the encoder alone over ENC_LEN-token sources (CTranslate2 has no encoder call: its
# time is translate_batch with max_decoding_length=1, the encoder and one greedy step)
ENC_LEN = 64
ENGINES = ("cyformer", "ct2", "hf")
ENGINE_NAMES = {"cyformer": "cyformer", "ct2": "CTranslate2", "hf": "transformers"}
DEFAULT_WORK_DIR = "/tmp/cyformer-decode-bench"
BUILD_VERSION = 1  # bump to invalidate cached checkpoints


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- checkpoints --------------------------------------------------------------------------------

def model_spec(name: str) -> Dict:
    s = MODELS[name]
    return dict(version=BUILD_VERSION, name=name, vocab=VOCAB, seed=SEED, **s)


def _toy_corpus(path: str, rng: np.random.Generator, n: int = 2000) -> None:
    """Sentences of made-up words (random syllables), enough to train a small SentencePiece model."""
    onsets = "b c d f g h j k l m n p r s t v w z br st tr pl ch sh th".split()
    vowels = "a e i o u ai ou ea".split()
    words = ["".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(int(rng.integers(1, 4))))
             for _ in range(600)]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(" ".join(rng.choice(words, size=int(rng.integers(3, 15)))) + "\n")


def write_tokenizer_files(directory: str, seed: int = SEED, spm_vocab: int = 200) -> Dict[str, int]:
    """source.spm / target.spm (tiny unigram models) and a 32000-entry vocab.json.

    vocab.json maps 32000 distinct pieces to 0..31999 with "</s>" at 0, "<unk>" at 1 and
    "<pad>" at 31999 (Marian's layout): first the SentencePiece pieces of both models,
    then filler pieces "▁tokNNNNN". CTranslate2's converter takes its vocabulary from
    vocab.json through MarianTokenizer, so the SentencePiece models need not cover it.
    """
    import sentencepiece as spm

    rng = np.random.default_rng(seed)
    corpus = os.path.join(directory, "corpus.txt")
    _toy_corpus(corpus, rng)
    pieces: List[str] = []
    for side in ("source", "target"):
        prefix = os.path.join(directory, side)
        spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, vocab_size=spm_vocab,
                                       model_type="unigram", character_coverage=1.0,
                                       bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1,
                                       num_threads=1, minloglevel=2,
                                       seed_sentencepiece_size=100000)
        os.replace(prefix + ".model", prefix + ".spm")
        os.remove(prefix + ".vocab")
        sp = spm.SentencePieceProcessor(model_file=prefix + ".spm")
        pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    os.remove(corpus)
    vocab = {"</s>": EOS, "<unk>": UNK}
    for p in pieces:
        if p not in vocab and p not in ("<unk>", "<pad>", "<s>"):
            vocab[p] = len(vocab)
    i = 0
    while len(vocab) < PAD:
        piece = f"\u2581tok{i:05d}"
        if piece not in vocab:
            vocab[piece] = len(vocab)
        i += 1
    vocab["<pad>"] = PAD
    assert len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB))
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "MarianTokenizer", "source_lang": "src", "target_lang": "tgt",
                   "model_max_length": 512, "eos_token": "</s>", "unk_token": "<unk>",
                   "pad_token": "<pad>", "separate_vocabs": False}, f, indent=2)
    return vocab


def _save_marian(name: str, directory: str) -> None:
    """A MarianMTModel with seeded random weights (and non-zero biases) saved to ``directory``."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    s = MODELS[name]
    torch.manual_seed(SEED)
    cfg = MarianConfig(vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=s["d_model"],
                       encoder_layers=s["layers"], decoder_layers=s["layers"],
                       encoder_attention_heads=s["heads"], decoder_attention_heads=s["heads"],
                       encoder_ffn_dim=s["ffn"], decoder_ffn_dim=s["ffn"], max_position_embeddings=512,
                       pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=EOS,
                       activation_function="swish", dropout=0.0, attention_dropout=0.0,
                       activation_dropout=0.0, scale_embedding=True, share_encoder_decoder_embeddings=True,
                       bad_words_ids=[[PAD]], forced_eos_token_id=EOS)
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        # Non-zero biases, so that an engine dropping one cannot agree by accident.
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.normal_(0, 0.1)
        # The pad row is the decoder's start embedding; Marian (and CTranslate2's
        # start_from_zero_embedding) expects it to be zero.
        model.model.shared.weight[PAD].zero_()
    # transformers 5 keeps generation parameters out of the model config (bad_words_ids
    # passed to MarianConfig is dropped), so set them on the generation config too.
    model.generation_config.bad_words_ids = [[PAD]]
    model.generation_config.forced_eos_token_id = EOS
    model.save_pretrained(directory)
    # ... and write them into config.json as the released opus-mt folders have them.
    path = os.path.join(directory, "config.json")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    raw.update(bad_words_ids=[[PAD]], forced_eos_token_id=EOS)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=2, sort_keys=True)


def _convert_ct2(hf_dir: str, out_dir: str) -> None:
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(hf_dir).convert(out_dir, quantization="float32", force=True)


def ensure_checkpoint(name: str, work_dir: str = DEFAULT_WORK_DIR, ct2: bool = True) -> Tuple[str, Optional[str]]:
    """(Hugging Face folder, CTranslate2 folder or None) for model ``name``, built once.

    A folder is reused when its ``decode_bench.json`` records the same spec; otherwise it is
    (re)built in a temporary folder and moved into place. ``ct2=False`` skips the
    CTranslate2 conversion (returns None for it when it was never made).
    """
    spec = model_spec(name)
    hf_dir = os.path.join(work_dir, name)
    ct2_dir = os.path.join(work_dir, f"{name}-ct2")
    marker = "decode_bench.json"

    def current(d: str) -> bool:
        try:
            with open(os.path.join(d, marker)) as f:
                return json.load(f) == spec
        except (OSError, ValueError):
            return False

    os.makedirs(work_dir, exist_ok=True)
    if not current(hf_dir):
        log(f"building the {name} MarianMT checkpoint in {hf_dir} ...")
        tmp = hf_dir + f".tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        _save_marian(name, tmp)
        write_tokenizer_files(tmp)
        with open(os.path.join(tmp, marker), "w") as f:
            json.dump(spec, f)
        shutil.rmtree(hf_dir, ignore_errors=True)
        shutil.rmtree(ct2_dir, ignore_errors=True)  # stale: converted from the old weights
        os.replace(tmp, hf_dir)
    if not ct2:
        return hf_dir, (ct2_dir if current(ct2_dir) else None)
    if not current(ct2_dir):
        log(f"converting {name} to CTranslate2 float32 in {ct2_dir} ...")
        tmp = ct2_dir + f".tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _convert_ct2(hf_dir, tmp)
        with open(os.path.join(tmp, marker), "w") as f:
            json.dump(spec, f)
        shutil.rmtree(ct2_dir, ignore_errors=True)
        os.replace(tmp, ct2_dir)
    return hf_dir, ct2_dir


def source_ids(batch: int, src_len: int = SRC_LEN, seed: int = SEED) -> List[List[int]]:
    """``batch`` sources of ``src_len`` ids drawn uniformly from [2, 31998) (no EOS appended)."""
    rng = np.random.default_rng(seed)
    return rng.integers(2, VOCAB - 2, size=(batch, src_len)).tolist()


# -- workers (one engine per process) ------------------------------------------------------------

def _time(fn, repeat: int, warmup: int) -> Tuple[object, List[float]]:
    """(output of the first call, times of ``repeat`` calls after ``warmup`` calls)."""
    from cyformer.benchmark import time_calls

    t0 = time.perf_counter()
    first = fn()
    first_time = time.perf_counter() - t0
    if repeat == 0:
        return first, [first_time]
    return first, time_calls(fn, repeat, warmup=max(0, warmup - 1))


def _cases(a) -> List[Tuple[int, str]]:
    return [(b, m) for b in a.batches for m in a.modes]


def worker_cyformer(a) -> Dict:
    from cyformer.benchmark import blas_description

    from cyformer.layers.linear import kernel_names

    cyformer.set_num_threads(a.threads)
    model = cyformer.Transformer.from_pretrained(a.model_dir, compute_type=a.compute_type)
    out = []
    for batch, mode in _cases(a):
        src = source_ids(batch, ENC_LEN if mode == "encode" else a.src_len)

        def call():
            if mode == "encode":
                return model.encode(src)
            return model.generate(src, beam_size=MODES[mode], min_length=a.min_length,
                                  max_length=a.max_length, num_hypotheses=1, return_scores=False)
        first, times = _time(call, a.repeat, a.warmup)
        out.append(dict(batch=batch, mode=mode, times=times,
                        sequences=[] if mode == "encode" else [r.sequences[0] for r in first]))
    return dict(engine="cyformer", version=cyformer.__version__, blas=blas_description(),
                threads=a.threads, compute_type=model.compute_type,
                kernel=kernel_names()[model.compute_type], cases=out)


def worker_ct2(a) -> Dict:
    import ctranslate2

    with open(os.path.join(a.model_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    pieces = {i: p for p, i in vocab.items()}
    intra = a.intra_threads or a.threads
    ct = a.ct2_compute_type or a.compute_type
    translator = ctranslate2.Translator(a.ct2_dir, device="cpu", compute_type=ct,
                                        intra_threads=intra, inter_threads=1)
    out = []
    for batch, mode in _cases(a):
        tokens = [[pieces[i] for i in s] for s in source_ids(batch, ENC_LEN if mode == "encode" else a.src_len)]

        def call():
            if mode == "encode":
                return translator.translate_batch(tokens, beam_size=1, max_decoding_length=1, max_batch_size=0)
            return translator.translate_batch(tokens, beam_size=MODES[mode],
                                              min_decoding_length=a.min_length,
                                              max_decoding_length=a.max_length,
                                              max_batch_size=0, num_hypotheses=1,
                                              return_end_token=True)
        first, times = _time(call, a.repeat, a.warmup)
        out.append(dict(batch=batch, mode=mode, times=times,
                        sequences=[] if mode == "encode" else
                        [[vocab.get(p, UNK) for p in r.hypotheses[0]] for r in first]))
    return dict(engine="ct2", version=ctranslate2.__version__, threads=a.threads,
                intra_threads=intra, compute_type=translator.compute_type, cases=out)


def worker_hf(a) -> Dict:
    import torch
    import transformers
    from transformers import MarianMTModel

    torch.set_num_threads(a.threads)
    model = MarianMTModel.from_pretrained(a.model_dir).eval()
    out = []
    for batch, mode in _cases(a):
        ids = torch.tensor(source_ids(batch, ENC_LEN if mode == "encode" else a.src_len), dtype=torch.long)
        mask = torch.ones_like(ids)
        if mode == "encode":
            def encode():
                with torch.inference_mode():
                    return model.get_encoder()(input_ids=ids, attention_mask=mask)
            first, times = _time(encode, a.repeat, a.warmup)
            out.append(dict(batch=batch, mode=mode, times=times, sequences=[]))
            continue

        def call():
            with torch.inference_mode():
                return model.generate(input_ids=ids, attention_mask=mask, num_beams=MODES[mode],
                                      min_new_tokens=a.min_length, max_new_tokens=a.max_length,
                                      do_sample=False, num_return_sequences=1)
        first, times = _time(call, a.repeat, a.warmup)
        seqs = []
        for row in first.tolist():
            row = row[1:]  # the decoder start token
            if EOS in row:
                row = row[:row.index(EOS) + 1]
            while row and row[-1] == PAD:  # padding after an early EOS
                row.pop()
            seqs.append(row)
        out.append(dict(batch=batch, mode=mode, times=times, sequences=seqs))
    return dict(engine="hf", version=transformers.__version__, torch=torch.__version__,
                threads=a.threads, cases=out)


WORKERS = {"cyformer": worker_cyformer, "ct2": worker_ct2, "hf": worker_hf}


# -- driver --------------------------------------------------------------------------------------

def child_env(coretype_inherited: bool) -> Dict[str, str]:
    """This environment, OPENBLAS_CORETYPE removed (unless inherited), cyformer's build first on PYTHONPATH."""
    env = dict(os.environ)
    if not coretype_inherited:
        env.pop("OPENBLAS_CORETYPE", None)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(cyformer.__file__)))
    paths = [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != pkg_parent]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_worker(engine: str, hf_dir: str, ct2_dir: Optional[str], threads: int, batches: Sequence[int],
               modes: Sequence[str], repeat: int, env: Dict[str, str], *, warmup: int = 1,
               intra_threads: Optional[int] = None, src_len: int = SRC_LEN, gen_len: int = GEN_LEN,
               timeout: float = 3600, compute_type: str = "float32",
               ct2_compute_type: Optional[str] = None) -> Dict:
    """Run one engine in a fresh process over every (batch, mode); its JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--model-dir", hf_dir,
           "--threads", str(threads), "--batches", *map(str, batches), "--modes", *modes,
           "--repeat", str(repeat), "--warmup", str(warmup), "--src-len", str(src_len),
           "--min-length", str(gen_len), "--max-length", str(gen_len), "--compute-type", compute_type]
    if ct2_compute_type:
        cmd += ["--ct2-compute-type", ct2_compute_type]
    if ct2_dir:
        cmd += ["--ct2-dir", ct2_dir]
    if intra_threads:
        cmd += ["--intra-threads", str(intra_threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_outputs(ours: List[List[int]], theirs: List[List[int]], prefix: Optional[int] = None) -> int:
    """How many sequences agree (on their first ``prefix`` tokens when given)."""
    n = 0
    for a, b in zip(ours, theirs):
        if prefix is not None:
            a, b = a[:prefix], b[:prefix]
        n += a == b
    return n


def sanity_check(name: str, hf_dir: str, ct2_dir: Optional[str], env: Dict[str, str],
                 engines: Sequence[str]) -> List[str]:
    """Greedy output of two sources from each engine vs cyformer's; a list of warnings."""
    results = {}
    for engine in engines:
        try:
            r = run_worker(engine, hf_dir, ct2_dir, 1, [2], ["greedy"], 0, env, warmup=1)
        except Exception as exc:  # noqa: BLE001 - report and keep going
            return [f"{name}: sanity check could not run {engine}: {str(exc).strip().splitlines()[-1]}"]
        results[engine] = r["cases"][0]["sequences"]
    warnings = []
    cy = results.get("cyformer")
    for engine, seqs in results.items():
        lengths = sorted({len(s) for s in seqs})
        log(f"  {name} sanity check: {ENGINE_NAMES[engine]} greedy lengths {lengths}, "
            f"first tokens {[s[:6] for s in seqs]}, last {[s[-2:] for s in seqs]}")
        if cy is None or engine == "cyformer":
            continue
        prefix = GEN_LEN - 1 if engine == "ct2" else None
        same = compare_outputs(cy, seqs, prefix)
        what = f"first {prefix} tokens" if prefix else "all tokens"
        if same != len(cy):
            warnings.append(f"WARNING: {name}: {ENGINE_NAMES[engine]} greedy output differs from cyformer's "
                            f"({same}/{len(cy)} sources agree on the {what})")
        else:
            log(f"  {name} sanity check: {ENGINE_NAMES[engine]} matches cyformer ({what})")
    return warnings


def fmt(x: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--repeat", type=int, default=3, help="timed calls per case (after --warmup calls); median reported")
    p.add_argument("--rounds", type=int, default=1,
                   help="sweep every engine this many times, alternating, and report each cell's median over "
                        "the rounds (a drifting machine then affects every engine alike)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="where the checkpoints are built and cached")
    p.add_argument("--out", metavar="FILE", help="also write the markdown report to FILE")
    p.add_argument("--coretype-inherited", action="store_true",
                   help="keep this shell's OPENBLAS_CORETYPE in the children (default: remove it)")
    p.add_argument("--ct2-intra", nargs="+", type=int, default=None, metavar="N",
                   help="CTranslate2 intra_threads to try at each thread count T > 1 (default: 1 and T; "
                        "the faster is kept)")
    p.add_argument("--skip-check", action="store_true", help="skip the greedy sanity check")
    p.add_argument("--compute-type", default="float32", choices=["float32", "int8", "bfloat16"],
                   help="cyformer's compute type, and CTranslate2's unless --ct2-compute-type (HF: float32)")
    p.add_argument("--ct2-compute-type", default=None,
                   help="CTranslate2's compute type (default: --compute-type), e.g. int8_bfloat16")
    # worker mode (internal)
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--ct2-dir", help=argparse.SUPPRESS)
    p.add_argument("--intra-threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--src-len", type=int, default=SRC_LEN, help=argparse.SUPPRESS)
    p.add_argument("--min-length", type=int, default=GEN_LEN, help=argparse.SUPPRESS)
    p.add_argument("--max-length", type=int, default=GEN_LEN, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.threads = a.threads[0]   # a worker runs at one thread count
        print(json.dumps(WORKERS[a.worker](a)))
        return 0
    if a.repeat < 1 or a.warmup < 0 or any(n < 1 for n in a.threads + a.batches):
        p.error("--repeat, --threads and --batches must be >= 1 and --warmup >= 0")

    env = child_env(a.coretype_inherited)
    parent_coretype = os.environ.get("OPENBLAS_CORETYPE")
    started = time.perf_counter()
    notes: List[str] = []
    warnings: List[str] = []
    failures = 0
    paths = {}
    for name in a.models:
        paths[name] = ensure_checkpoint(name, a.work_dir, ct2="ct2" in a.engines)
        if not a.skip_check:
            w = sanity_check(name, *paths[name], env, [e for e in ("cyformer", "ct2", "hf") if e in a.engines])
            warnings += w
            for line in w:
                log(line)

    # results[(model, threads, engine)] -> {(batch, mode): case}; ct2 keeps every intra setting
    results: Dict[Tuple[str, int, str], Dict] = {}
    versions: Dict[str, str] = {}
    compute_types: Dict[str, str] = {"hf": "float32"}
    blas = None
    # raw[(model, threads, engine, intra, (batch, mode))] -> (case, [its median in each round])
    raw: Dict[Tuple, Tuple[Dict, List[float]]] = {}
    for rnd in range(a.rounds):
        for name in a.models:
            hf_dir, ct2_dir = paths[name]
            for nt in a.threads:
                for engine in a.engines:
                    intras = [None]
                    if engine == "ct2":
                        intras = sorted(set(a.ct2_intra or [1, nt])) if nt > 1 else [1]
                        intras = [i for i in intras if 1 <= i <= nt] or [nt]
                    for intra in intras:
                        label = f"{name} {nt}t {ENGINE_NAMES[engine]}" + (f" intra_threads={intra}" if intra else "")
                        if a.rounds > 1:
                            label += f" round {rnd + 1}/{a.rounds}"
                        log(f"[{label}] batches {a.batches} modes {a.modes} ...")
                        t0 = time.perf_counter()
                        try:
                            r = run_worker(engine, hf_dir, ct2_dir, nt, a.batches, a.modes, a.repeat, env,
                                           warmup=a.warmup, intra_threads=intra, compute_type=a.compute_type,
                                           ct2_compute_type=a.ct2_compute_type)
                        except Exception as exc:  # noqa: BLE001 - report, keep measuring the rest
                            failures += 1
                            log(f"  FAILED: {exc}")
                            notes.append(f"{label}: failed: {str(exc).strip().splitlines()[-1]}")
                            continue
                        versions[engine] = r.get("version", "?")
                        if r.get("compute_type"):
                            compute_types[engine] = r["compute_type"] + (f" ({r['kernel']})" if r.get("kernel") else "")
                        if engine == "cyformer":
                            blas = r.get("blas", blas)
                        if engine == "hf":
                            versions["torch"] = r.get("torch", "?")
                        for c in r["cases"]:
                            med = float(np.median(c["times"]))
                            k = (name, nt, engine, r.get("intra_threads"), (c["batch"], c["mode"]))
                            raw.setdefault(k, (c, []))[1].append(med)
                            log(f"  batch {c['batch']:>2} {c['mode']:<6}: {med * 1e3:9.1f} ms "
                                f"({c['batch'] * GEN_LEN / med:8.1f} tok/s)")
                        log(f"  ({time.perf_counter() - t0:.1f} s)")
    # each cell: the median over rounds of each round's median; ct2 keeps its faster intra setting
    for (name, nt, engine, intra, key), (c, meds) in raw.items():
        c["median"] = float(np.median(meds))
        c["intra"] = intra
        slot = results.setdefault((name, nt, engine), {})
        prev = slot.get(key)
        c.setdefault("tried", {})[c["intra"]] = c["median"]
        if prev is not None:
            c["tried"].update(prev["tried"])
        if prev is None or c["median"] < prev["median"]:
            slot[key] = c
        else:
            prev["tried"].update(c["tried"])
    elapsed = time.perf_counter() - started

    header = ["model", "batch", "mode", "threads", "cyformer tok/s", "CT2 tok/s", "CT2 intra_threads",
              "HF tok/s", "cyformer/CT2", "cyformer/HF", "outputs vs cyformer"]
    align = ["---", "---:", "---", "---:", "---:", "---:", "---", "---:", "---:", "---:", "---"]
    rows = []
    for name in a.models:
        for batch in a.batches:
            for mode in a.modes:
                for nt in a.threads:
                    got = {e: results.get((name, nt, e), {}).get((batch, mode)) for e in a.engines}
                    n_tok = ENC_LEN if mode == "encode" else GEN_LEN
                    rate = {e: (batch * n_tok / c["median"] if c else None) for e, c in got.items()}
                    for e, c in got.items():
                        if c is None or mode == "encode":
                            continue
                        lengths = sorted({len(s) for s in c["sequences"]})
                        if lengths != [GEN_LEN]:
                            notes.append(f"{name} b{batch} {mode} {nt}t: {ENGINE_NAMES[e]} generated "
                                         f"lengths {lengths}, not {GEN_LEN}")
                    cy, ct, hf = rate.get("cyformer"), rate.get("ct2"), rate.get("hf")
                    ct2c = got.get("ct2")
                    intra = ""
                    if ct2c:
                        tried = ct2c["tried"]
                        intra = str(ct2c["intra"])
                        if len(tried) > 1:
                            intra += " (" + ", ".join(f"{k}: {batch * n_tok / v:.0f}"
                                                      for k, v in sorted(tried.items())) + ")"
                    agree = []
                    cyc = got.get("cyformer")
                    if cyc and mode != "encode":
                        n = len(cyc["sequences"])
                        if got.get("hf"):
                            agree.append(f"HF {compare_outputs(cyc['sequences'], got['hf']['sequences'])}/{n}")
                        if ct2c:
                            agree.append(f"CT2 {compare_outputs(cyc['sequences'], ct2c['sequences'], GEN_LEN - 1)}/{n}")
                    rows.append([name, str(batch), mode, str(nt), fmt(cy, ".1f"), fmt(ct, ".1f"), intra or "n/a",
                                 fmt(hf, ".1f"), fmt(cy / ct if cy and ct else None, ".2f", "x"),
                                 fmt(cy / hf if cy and hf else None, ".2f", "x"), ", ".join(agree) or "n/a"])

    coretype = ("inherited " + (parent_coretype or "(unset)")) if a.coretype_inherited else \
        "removed from the children's environment (OpenBLAS default for this CPU)" + \
        (f"; this shell has OPENBLAS_CORETYPE={parent_coretype}" if parent_coretype else "")
    lines = [
        f"## Decoding: cyformer vs CTranslate2 vs transformers (MarianMT, {a.compute_type}, CPU)",
        "",
        "- compute types: " + ", ".join(f"{ENGINE_NAMES[e]} {compute_types[e]}" for e in a.engines
                                        if e in compute_types),
        f"- CPU: {_cpu_name()}; {os.cpu_count()} logical CPUs; Python {platform.python_version()}",
        f"- instruction sets: {' '.join(_cpu_features())}",
        "- versions: " + ", ".join(f"{ENGINE_NAMES.get(k, k)} {v}" for k, v in versions.items()),
        f"- sources: {SRC_LEN} random ids in [2, {VOCAB - 2}); exactly {GEN_LEN} generated tokens per "
        f"sequence (cyformer/HF: 63 + forced EOS; CT2: 64 without EOS); tok/s = batch x {GEN_LEN} / "
        f"median seconds per call",
        f"- median of {a.repeat} calls after {a.warmup} warm-up call(s); each engine in its own process"
        + (f"; {a.rounds} alternating rounds, the median over rounds" if a.rounds > 1 else ""),
        f"- cyformer BLAS: {blas or 'n/a'}; OPENBLAS_CORETYPE: {coretype}",
        f"- mode encode: the encoder over {ENC_LEN}-token sources, tok/s = batch x {ENC_LEN} / median seconds "
        "(CTranslate2: translate_batch with max_decoding_length=1, i.e. the encoder and one greedy step)",
        "- CT2 intra_threads: the setting kept (at T > 1 both 1 and T are tried; tok/s of each in brackets)",
        "- outputs vs cyformer: sequences identical to cyformer's (HF: all 64 tokens; CT2: first 63)",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; total run time {elapsed:.0f} s",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if warnings or notes:
        lines += [""] + [f"- {n}" for n in warnings + notes]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
        log(f"wrote {a.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
