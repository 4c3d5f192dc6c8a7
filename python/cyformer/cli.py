"""The ``cyformer`` command: ``demo``, ``train``, ``translate``, ``bench``, ``plot``, ``info``.

Each subcommand is a thin front for a library call (``cyformer.recipes``,
``cyformer.Translator``, ``cyformer.benchmark``, ``cyformer.plots``); bad input ends with a
one-line error and exit status 2, never a traceback.
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


def cmd_translate(args) -> int:
    from . import set_num_threads
    from .translate import Translator

    if args.threads:
        set_num_threads(args.threads)
    translator = Translator.from_pretrained(args.model_dir, args.tokenizer, compute_type=args.compute_type)
    if args.input in (None, "-"):
        lines = [line.rstrip("\n") for line in sys.stdin]
    else:
        if not os.path.isfile(args.input):
            raise FileNotFoundError(f"input file {args.input} does not exist" if not os.path.exists(args.input)
                                    else f"input {args.input} is not a file")
        with open(args.input, encoding="utf-8", newline=None) as f:
            lines = [line.rstrip("\n") for line in f]
    out = translator.translate(lines, beam_size=args.beam_size, max_length=args.max_length,
                               length_penalty=args.length_penalty, max_batch_size=args.batch_size,
                               batch_type=args.batch_type, sampling_topk=args.sampling_topk,
                               sampling_temperature=args.sampling_temperature, seed=args.seed,
                               progress=sys.stderr.isatty() and not args.quiet)
    text = "".join(t + "\n" for t in out)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from .io import atomic_write_bytes
        atomic_write_bytes(args.output, text.encode("utf-8"))
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
    t.add_argument("input", nargs="?", help="text file to translate (default, or '-': stdin)")
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


_COMMANDS = {"demo": cmd_demo, "train": cmd_train, "translate": cmd_translate, "bench": cmd_bench,
             "plot": cmd_plot, "info": cmd_info}


def _one_line(e: BaseException) -> str:
    """An exception as one line: FileNotFoundError's "[Errno 2] ..." becomes "no such file: PATH"."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
