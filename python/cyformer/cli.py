"""The ``cyformer`` command: ``demo``, ``train``, ``translate``, ``embed``, ``classify``, ``bench``,
``plot``, ``info``.

Each subcommand is a thin front for a library call (``cyformer.recipes``,
``cyformer.Translator``, ``cyformer.TextEncoder``, ``cyformer.benchmark``, ``cyformer.plots``);
bad input ends with a one-line error and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional

from ._version import __version__
# _cpu_name stays importable from here: bench/decode_compare.py uses it.
from .sysinfo import cpu_name as _cpu_name  # noqa: F401


def _cpu_features() -> str:
    from .sysinfo import cpu_features
    return " ".join(cpu_features())


def cmd_info(args) -> int:
    from .sysinfo import format_info

    print("\n".join(format_info()))
    return 0


def _progress(what: str) -> None:
    """Progress of a long bench, on stderr (the table goes to stdout)."""
    print(f"cyformer bench: running {what} ...", file=sys.stderr, flush=True)


def cmd_bench(args) -> int:
    from .benchmark import (blas_description, encoder_flops, run_engine, run_decode_engine, run_train_engine,
                            train_flops)

    from .layers.linear import kernel_names, resolve_compute_type

    threads_list = args.threads or [1, 2]
    ct = resolve_compute_type(args.compute_type)   # a type this CPU lacks: one-line error
    if args.task == "train" and ct != "float32":
        raise ValueError(f"--compute-type {args.compute_type}: training runs in float32 (int8 and bfloat16 are "
                         f"for inference: --task encode or decode)")
    kernels = f"compute type: {ct} ({kernel_names()[ct]})"
    if args.task == "decode":
        return _bench_decode(args, threads_list, ct, kernels)
    train = args.task == "train"
    batch = args.batch or (32 if train else 16)
    src_len = args.src_len or (32 if train else 64)
    work = train_flops(args.size, batch, src_len, args.tgt_len) if train else encoder_flops(args.size, batch, src_len)
    what = (f"training step (forward, backward, Adam) | size={args.size} batch={batch} x {src_len} source x "
            f"{args.tgt_len} target tokens" if train else
            f"encoder forward | size={args.size} batch={batch} x {src_len} tokens")
    print(f"cyformer {__version__} | {what} | {work / 1e9:.1f} GFLOP")
    print(f"BLAS: {blas_description()}")
    print(kernels + ("" if ct == "float32" or args.no_compare else "; torch runs float32"))
    engines = ["cyformer"] + ([] if args.no_compare else ["torch"])
    header = f"{'engine':<10} {'threads':>7} {'median ms':>10} {'GFLOP/s':>9} {'/core':>7} {'of SGEMM':>9} {'vs torch':>9}"
    print(header)
    print("-" * len(header))
    for nt in threads_list:
        _progress(f"SGEMM rate, {nt} thread(s)")
        peak = run_engine("sgemm", args.size, batch, src_len, nt, 10)["gflops"]
        results = {}
        for engine in engines:
            _progress(f"{engine}, {'training step' if train else 'encoder'}, {nt} thread(s), {args.repeat} runs")
            if train:
                r = run_train_engine(engine, args.size, batch, src_len, args.tgt_len, nt, args.repeat)
            else:
                r = run_engine(engine, args.size, batch, src_len, nt, args.repeat, compute_type=ct)
            if r is not None:
                results[engine] = r
        for engine, r in results.items():
            ratio = ""
            if "torch" in results and engine != "torch":
                ratio = f"{results['torch']['median_ms'] / r['median_ms']:.2f}x"
            print(f"{engine:<10} {nt:>7} {r['median_ms']:>10.1f} {r['gflops']:>9.1f} {r['gflops'] / nt:>7.1f} "
                  f"{r['gflops'] / peak:>8.0%} {ratio:>9}")
        print(f"{'SGEMM':<10} {nt:>7} {'':>10} {peak:>9.1f} {peak / nt:>7.1f}")
    return 0


def _bench_decode(args, threads_list, ct: str, kernels: str) -> int:
    from .benchmark import blas_description, run_decode_engine

    batch = args.batch or 16
    src_len = args.src_len or 32
    print(f"cyformer {__version__} | decoding | size={args.size} batch={batch} x {src_len} source tokens -> "
          f"{args.tgt_len} generated (min_length = max_length) | seeded weights, vocabulary 32000")
    print(f"BLAS: {blas_description()}  (CTranslate2 and transformers: python bench/decode_compare.py)")
    print(kernels)
    header = f"{'mode':<8} {'threads':>7} {'median ms':>10} {'tokens/s':>9}"
    print(header)
    print("-" * len(header))
    for mode, beam in (("greedy", 1), ("beam4", 4)):
        for nt in threads_list:
            _progress(f"cyformer, {mode}, {nt} thread(s), {args.repeat} runs")
            r = run_decode_engine(args.size, batch, src_len, args.tgt_len, beam, nt, args.repeat, compute_type=ct)
            print(f"{mode:<8} {nt:>7} {r['median_ms']:>10.1f} {batch * args.tgt_len / (r['median_ms'] / 1e3):>9.1f}")
    return 0


def _read_lines(path: Optional[str]) -> List[str]:
    """The lines of a text file, or of stdin for None or '-', without their line ends."""
    if path in (None, "-"):
        return [line.rstrip("\n") for line in sys.stdin]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file {path} does not exist" if not os.path.exists(path)
                                else f"input {path} is not a file")
    with open(path, encoding="utf-8", newline=None) as f:
        return [line.rstrip("\n") for line in f]


def _write_output(path: Optional[str], data) -> None:
    """Text (str, as UTF-8) or bytes to the file ``path`` atomically, or to stdout for None or '-'."""
    if path in (None, "-"):
        if isinstance(data, str):
            sys.stdout.write(data)
            sys.stdout.flush()
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    else:
        from .io import atomic_write_bytes
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def _translate_options(args) -> dict:
    """``Translator.translate`` options from the command line (both paths, local and Ray)."""
    return dict(beam_size=args.beam_size, max_length=args.max_length, length_penalty=args.length_penalty,
                max_batch_size=args.batch_size, batch_type=args.batch_type, sampling_topk=args.sampling_topk,
                sampling_temperature=args.sampling_temperature, seed=args.seed)


def _output_path(args) -> Optional[str]:
    if args.output and args.output_path and args.output != args.output_path:
        raise ValueError(f"two outputs given ({args.output_path} and -o {args.output}): give one")
    return args.output or args.output_path


def cmd_translate(args) -> int:
    if args.ray:
        return cmd_translate_ray(args)
    for name in ("address", "actors", "threads_per_actor", "ray_batch_size"):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name.replace('_', '-')} needs --ray")
    from . import set_num_threads
    from .translate import Translator

    if args.threads:
        set_num_threads(args.threads)
    output = _output_path(args)
    translator = Translator.from_pretrained(args.model_dir, args.tokenizer, compute_type=args.compute_type)
    lines = _read_lines(args.input)
    out = translator.translate(lines, progress=sys.stderr.isatty() and not args.quiet, **_translate_options(args))
    _write_output(output, "".join(t + "\n" for t in out))
    return 0


def _text_encoder(args):
    from . import set_num_threads
    from .text_encoder import TextEncoder

    if args.threads:
        set_num_threads(args.threads)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    return TextEncoder.from_pretrained(args.model_dir, args.tokenizer, compute_type=args.compute_type)


def cmd_embed(args) -> int:
    import io

    import numpy as np

    to_stdout = args.output in (None, "-")
    if to_stdout and sys.stdout.isatty():
        raise ValueError("the vectors are a binary .npy file: redirect stdout (> vectors.npy) or pass -o FILE")
    encoder = _text_encoder(args)
    pooling = args.pooling.split(",") if args.pooling else None
    lines = _read_lines(args.input)
    vectors = encoder.embed(lines, batch_size=args.batch_size, pooling=pooling, normalize=args.normalize,
                            prompt=args.prompt, prompt_name=args.prompt_name,
                            progress=sys.stderr.isatty() and not args.quiet)
    buf = io.BytesIO()
    np.save(buf, vectors)
    _write_output(args.output, buf.getvalue())
    return 0


def cmd_classify(args) -> int:
    encoder = _text_encoder(args)
    lines = _read_lines(args.input)
    results = encoder.classify(lines, batch_size=args.batch_size,
                               progress=sys.stderr.isatty() and not args.quiet)
    if encoder.model.config.head == "token_classification":
        # CoNLL style: one token a line, an empty line after each text
        text = "".join("".join(f"{t.token}\t{t.label}\t{t.score:.4f}\n" for t in r) + "\n" for r in results)
    else:
        text = "".join(f"{r.label}\t{r.score:.4f}\n" for r in results)
    _write_output(args.output, text)
    return 0


def _ray_outputs(inputs: List[str], source: str, output: str) -> dict:
    """Where each input file's translation goes: OUTPUT itself for one file (or OUTPUT/name when
    OUTPUT is a folder); for a folder, the same relative paths under OUTPUT."""
    source = os.path.abspath(source)
    if os.path.isdir(source):
        if os.path.exists(output) and not os.path.isdir(output):
            raise ValueError(f"the input {source} is a folder, so the output must be one: {output} is a file")
        return {f: os.path.join(output, os.path.relpath(f, source)) for f in inputs}
    if os.path.isdir(output):
        return {inputs[0]: os.path.join(output, os.path.basename(source))}
    return {inputs[0]: output}


def cmd_translate_ray(args) -> int:
    """``cyformer translate MODEL_DIR --ray INPUT OUTPUT``: the files' lines through
    ``cyformer.distributed.translate_dataset`` on a local Ray or the cluster at ``--address``;
    each output file is written atomically, line for line with its input."""
    from .distributed import (_ray, _unwrap, iter_rows_in_order, read_text_files, translate_dataset, _expand)
    from .io import atomic_write_bytes

    output = _output_path(args)
    if args.input in (None, "-") or output in (None, "-"):
        raise ValueError("--ray translates files: give INPUT and OUTPUT (files or folders), not stdin/stdout")
    if args.threads is not None:
        raise ValueError("with --ray, give --threads-per-actor instead of --threads")
    inputs = _expand(args.input)
    targets = _ray_outputs(inputs, args.input, output)
    clash = sorted({os.path.realpath(t) for t in targets.values()} & {os.path.realpath(f) for f in inputs})
    if clash:
        raise ValueError(f"the output {clash[0]} would overwrite an input")
    import logging
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        # the workers' own logs stay in Ray's session folder: what they raise reaches us anyway
        ray.init(address=args.address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        from ray.data import DataContext
        DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        data = read_text_files(inputs, rows_per_block=args.ray_batch_size or 256)
        total = data.count()
        results = translate_dataset(data, args.model_dir, tokenizer_dir=args.tokenizer, actors=args.actors,
                                    threads_per_actor=args.threads_per_actor or 1,
                                    batch_size=args.ray_batch_size or 256, **_translate_options(args))
        bar = None
        if sys.stderr.isatty() and not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="sent", file=sys.stderr)
        errors: List[str] = []
        done = set()
        current, lines = None, []

        def finish():
            if current is not None:
                os.makedirs(os.path.dirname(os.path.abspath(targets[current])), exist_ok=True)
                atomic_write_bytes(targets[current], "".join(t + "\n" for t in lines).encode("utf-8"))
                done.add(current)

        try:
            for batch in iter_rows_in_order(results, ("path", "translation", "error")):
                for path, translation, error in zip(batch["path"], batch["translation"], batch["error"]):
                    if path != current:
                        finish()
                        current, lines = path, []
                    lines.append(translation)
                    if error is not None:
                        errors.append(error)
                if bar is not None:
                    bar.update(len(batch["path"]))
        except Exception as e:  # noqa: BLE001 - Ray wraps what the actors raised
            inner = _unwrap(e)
            if isinstance(inner, (ValueError, TypeError, OSError, ImportError)):
                raise inner from None
            print(f"cyformer translate: error: the Ray job failed: {type(inner).__name__}: "
                  f"{' '.join(str(inner).split())[:500]}", file=sys.stderr)
            return 1
        finally:
            if bar is not None:
                bar.close()
        finish()
        for f in inputs:  # empty files: empty translations
            if f not in done:
                os.makedirs(os.path.dirname(os.path.abspath(targets[f])), exist_ok=True)
                atomic_write_bytes(targets[f], b"")
        if errors:
            warnings.warn(f"{len(errors)} line(s) could not be translated and were written as empty lines; "
                          f"the first: {errors[0]}")
    finally:
        if started:
            ray.shutdown()
    return 0


def cmd_demo(args) -> int:
    from . import set_num_threads
    from .recipes import demo

    if args.threads:
        set_num_threads(args.threads)
    result = demo(args.task, steps=args.steps, batch_tokens=args.batch_tokens, output_dir=args.output,
                  seed=args.seed, beam_size=args.beam_size, progress=None if not args.quiet else False,
                  attention_plot=not args.no_plot)
    return 0 if result.test.get("bleu", result.test.get("accuracy", 0.0)) >= 0 else 1


def cmd_train(args) -> int:
    import json

    from . import set_num_threads
    from .recipes import train_files

    if args.threads:
        set_num_threads(args.threads)
    config = None
    if args.config:
        from .io import read_json
        config = read_json(args.config)   # bounded size and nesting; errors name the file
        if not isinstance(config, dict):
            raise ValueError(f"{args.config} must hold a JSON object of TransformerConfig fields")
        config.pop("model_type", None)
    training = {"label_smoothing": args.label_smoothing, "schedule": args.schedule, "optimizer": args.optimizer}
    if args.lr is not None:
        training["lr"] = args.lr
    if args.warmup is not None:
        training["warmup_steps"] = args.warmup
    if args.clip_norm is not None:
        training["clip_norm"] = args.clip_norm
    if args.schedule == "linear":
        training["total_steps"] = args.steps
    train_files(args.data[0], args.data[1], args.output, config=config,
                valid_paths=tuple(args.valid) if args.valid else None, tokenizer_dir=args.tokenizer,
                vocab_size=args.vocab_size, steps=args.steps, batch_tokens=args.batch_tokens,
                valid_every=args.valid_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
                training=training, progress=None if not args.quiet else False)
    return 0


def cmd_plot(args) -> int:
    import json
    import os

    from .plots import plot_attention, plot_history
    from .training import TrainingHistory

    history_path = os.path.join(args.model_dir, "history.json")
    if args.attention:   # a vector demo's folder: its saved example's self-attention
        from .vector_demo import plot_example_attention
        if not os.path.exists(os.path.join(args.model_dir, "example.npz")):
            raise FileNotFoundError(f"{args.model_dir} has no example.npz (written by cyformer demo --task "
                                    f"digits / speech / graph)")
        print(plot_example_attention(args.model_dir, args.out))
        return 0
    if args.sentence is None:
        if not os.path.exists(history_path):
            raise FileNotFoundError(f"{args.model_dir} has no history.json (written by cyformer demo / train)")
        from .io import read_json
        history = TrainingHistory.from_dict(read_json(history_path, expect=dict))
        out = args.out or os.path.join(args.model_dir, "training.png")
        print(plot_history(history, out, title=os.path.basename(os.path.abspath(args.model_dir))))
        return 0
    from .model import Transformer
    from .tokenizer import Tokenizer

    model = Transformer.from_pretrained(args.model_dir)
    tokenizer = Tokenizer.from_pretrained(args.model_dir)
    src = tokenizer.encode([args.sentence])[0]
    res = model.generate([src], beam_size=1, return_attention=True,
                         max_length=min(model.config.max_len, 2 * len(src) + 10))[0]
    pieces = tokenizer._id_to_piece()
    out = args.out or os.path.join(args.model_dir, "attention.png")
    print(plot_attention(res.attention[0], [pieces[i] for i in src], [pieces[i] for i in res.sequences[0]], out,
                         title=f"cross-attention: {args.sentence}"))
    print(tokenizer.decode([res.sequences[0]])[0])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cyformer", description="A CPU encoder-decoder Transformer engine.")
    p.add_argument("--version", action="version", version=f"cyformer {__version__}")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="train a small model on a built-in task, show translations and test BLEU "
                                    "(or labels and test accuracy)")
    d.add_argument("--task", default="dates", help="built-in task: dates (default), numbers, copy, reverse, sort "
                                                   "(translation); tagging, classify (an encoder with a head); "
                                                   "digits, speech, graph (an encoder over image patches, speech "
                                                   "frames or graph nodes)")
    d.add_argument("--steps", type=int, default=None,
                   help="training steps (default 800; tagging 400, classify 300)")
    d.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per batch (default 2500; tagging and classify 1500)")
    d.add_argument("--beam-size", type=int, default=4, help="beam size for the test translations")
    d.add_argument("--output", default="cyformer-demo", help="folder for the model, tokenizer and plots")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--no-plot", action="store_true", help="skip the attention heat map")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    tr = sub.add_parser("train", help="train on parallel text files (one sentence per line)")
    tr.add_argument("--data", nargs=2, metavar=("SRC", "TGT"), required=True, help="training files")
    tr.add_argument("--valid", nargs=2, metavar=("SRC", "TGT"), help="validation files (loss and BLEU)")
    tr.add_argument("--config", help="JSON file of TransformerConfig fields (vocabulary sizes come from the tokenizer)")
    tr.add_argument("--output", required=True, help="model folder; training resumes from its checkpoints")
    tr.add_argument("--tokenizer", help="an existing tokenizer folder (default: train SentencePiece on --data)")
    tr.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size")
    tr.add_argument("--steps", type=int, default=10000)
    tr.add_argument("--batch-tokens", type=int, default=4096)
    tr.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    tr.add_argument("--schedule", default="noam", choices=["noam", "constant", "linear"])
    tr.add_argument("--lr", type=float, default=None, help="noam: factor (default 1); else the peak rate")
    tr.add_argument("--warmup", type=int, default=None, help="warm-up steps (noam default 4000)")
    tr.add_argument("--label-smoothing", type=float, default=0.1)
    tr.add_argument("--clip-norm", type=float, default=None)
    tr.add_argument("--valid-every", type=int, default=1000)
    tr.add_argument("--checkpoint-every", type=int, default=1000)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    t = sub.add_parser("translate", help="translate a file or stdin, one sentence per line, to a file or stdout")
    t.add_argument("model_dir", help="a local model folder (cyformer checkpoint or MarianMT folder)")
    t.add_argument("input", nargs="?", help="text file to translate (default, or '-': stdin); with --ray, "
                                            "a file or a folder of files")
    t.add_argument("output_path", nargs="?", metavar="output",
                   help="where to write (as -o); with --ray, a file, or a folder for a folder of inputs")
    t.add_argument("-o", "--output", help="write the translations here, atomically (default, or '-': stdout)")
    t.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    t.add_argument("--beam-size", type=int, default=4)
    t.add_argument("--max-length", type=int, default=None, help="generated tokens, EOS included")
    t.add_argument("--length-penalty", type=float, default=1.0)
    t.add_argument("--batch-size", type=int, default=32, help="sentences (or tokens) per batch (default 32)")
    t.add_argument("--batch-type", default="examples", choices=["examples", "tokens"],
                   help="what --batch-size counts, as in CTranslate2 (default: examples)")
    t.add_argument("--sampling-topk", type=int, default=1)
    t.add_argument("--sampling-temperature", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--compute-type", default="default", choices=("default", "float32", "int8", "bfloat16", "auto"),
                   help="float32, int8 (int8 weights, per-row scales), bfloat16, auto (the fastest this CPU "
                        "runs natively) or default (as the checkpoint stores it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    r = t.add_argument_group("many machines (pip install 'cyformer[ray]')")
    r.add_argument("--ray", action="store_true", help="translate with a pool of Ray actors (a local Ray, or --address)")
    r.add_argument("--address", default=None, help="an existing Ray cluster ('auto', or HOST:PORT); default: start "
                                                   "a local Ray")
    r.add_argument("--actors", type=int, default=None, help="actors in the pool (default: the cluster's CPUs // "
                                                            "--threads-per-actor)")
    r.add_argument("--threads-per-actor", type=int, default=None, help="OpenMP threads (and Ray CPUs) per actor "
                                                                       "(default 1)")
    r.add_argument("--ray-batch-size", type=int, default=None, help="lines per Ray task (default 256)")
    for name, what in (("embed", "sentence embeddings of a file or stdin, one text per line, as a .npy "
                                 "array [lines, dim]"),
                       ("classify", "a label and its probability for each line of a file or stdin "
                                    "(label<TAB>score; token heads: token<TAB>label<TAB>score lines)")):
        e = sub.add_parser(name, help=what)
        e.add_argument("model_dir", help="a local model folder: Hugging Face BERT, sentence-transformers, "
                                         "or a cyformer encoder, with its tokenizer")
        e.add_argument("input", nargs="?", help="text file, one text per line (default, or '-': stdin)")
        e.add_argument("-o", "--output", help="write here, atomically (default, or '-': stdout)")
        e.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
        e.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
        if name == "embed":
            e.add_argument("--pooling", help="mean, cls, max, mean_sqrt_len_tokens, weightedmean or lasttoken; "
                                             "several joined by commas are concatenated (default: the "
                                             "folder's sentence-transformers pooling, else mean)")
            e.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                           help="unit-length vectors (default: as the folder says, else not)")
            e.add_argument("--prompt", help="text put before every line (sentence-transformers' prompt)")
            e.add_argument("--prompt-name", help="one of the folder's sentence-transformers prompts")
        e.add_argument("--threads", type=int, default=None)
        e.add_argument("--compute-type", default="default", choices=("default", "float32", "int8", "bfloat16", "auto"),
                       help="the linear layers' type (default: as stored)")
        e.add_argument("--quiet", action="store_true", help="no progress bar")
    b = sub.add_parser("bench", help="time the encoder, a training step or decoding on seeded weights "
                                     "(vs PyTorch when installed)")
    b.add_argument("--task", default="encode", choices=["encode", "train", "decode"])
    b.add_argument("--size", default="base", choices=["small", "base"])
    b.add_argument("--threads", type=int, nargs="+", help="thread counts to run (default: 1 2)")
    b.add_argument("--batch", type=int, default=None, help="default: 16 (encode, decode), 32 (train)")
    b.add_argument("--src-len", type=int, default=None, help="default: 64 (encode), 32 (train, decode)")
    b.add_argument("--tgt-len", type=int, default=32, help="target tokens (train) or generated tokens (decode)")
    b.add_argument("--repeat", type=int, default=10)
    b.add_argument("--no-compare", action="store_true", help="time cyformer only")
    b.add_argument("--compute-type", default="float32", choices=("float32", "int8", "bfloat16", "auto"),
                   help="cyformer's compute type (encode, decode)")
    pl = sub.add_parser("plot", help="training curves of a model folder, or a cross-attention heat map")
    pl.add_argument("model_dir")
    pl.add_argument("--sentence", help="draw the cross-attention of this sentence's greedy translation instead")
    pl.add_argument("--attention", action="store_true",
                    help="draw the self-attention over the saved example of a digits / speech / graph demo folder "
                         "(patches, frames or a graph's edges)")
    pl.add_argument("--out", help="PNG path (default: training.png or attention.png in the folder)")
    sub.add_parser("info", help="version, OpenMP, BLAS core type and threads, CPU features")
    return p


_COMMANDS = {"demo": cmd_demo, "train": cmd_train, "translate": cmd_translate, "embed": cmd_embed,
             "classify": cmd_classify, "bench": cmd_bench,
             "plot": cmd_plot, "info": cmd_info}


def _one_line(e: BaseException) -> str:
    """An exception as one line: FileNotFoundError's "[Errno 2] ..." becomes "no such file: PATH"."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return " ".join(str(e).split()) or type(e).__name__


def _parse(parser: argparse.ArgumentParser, argv: Optional[List[str]]):
    """``parse_args``, except that translate's optional INPUT and OUTPUT may also follow the
    options (`translate MODEL --ray --actors 2 IN OUT`): argparse gives optional positionals
    their empty match before the first option and leaves later ones unrecognized."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "translate" and not any(e.startswith("-") for e in extra):
        for name in ("input", "output_path"):
            if extra and getattr(args, name) is None:
                setattr(args, name, extra.pop(0))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    command = _COMMANDS.get(args.command)
    if command is None:
        parser.print_help()
        return 0
    prog = f"cyformer {args.command}"

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # one line, as the errors: no source path, no category name
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show_warning
            return command(args)
    except BrokenPipeError:
        # the reader went away (`cyformer info | head`): stop quietly, as other Unix tools do
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 141
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
