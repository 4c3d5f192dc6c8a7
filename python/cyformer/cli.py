"""The ``cyformer`` command: ``info``, ``bench`` (and later ``translate``, ``train``, ``demo``)."""
from __future__ import annotations

import argparse
import sys
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


def cmd_bench(args) -> int:
    from .benchmark import blas_description, encoder_flops, run_engine

    threads_list = args.threads or [1, 2]
    print(f"cyformer {__version__} | encoder forward | size={args.size} batch={args.batch} x {args.src_len} tokens "
          f"| {encoder_flops(args.size, args.batch, args.src_len) / 1e9:.1f} GFLOP")
    print(f"BLAS: {blas_description()}")
    engines = ["cyformer"] + ([] if args.no_compare else ["torch"])
    header = f"{'engine':<10} {'threads':>7} {'median ms':>10} {'GFLOP/s':>9} {'/core':>7} {'of SGEMM':>9} {'vs torch':>9}"
    print(header)
    print("-" * len(header))
    for nt in threads_list:
        peak = run_engine("sgemm", args.size, args.batch, args.src_len, nt, 10)["gflops"]
        results = {}
        for engine in engines:
            r = run_engine(engine, args.size, args.batch, args.src_len, nt, args.repeat)
            if r is not None:
                results[engine] = r
        for engine, r in results.items():
            ratio = ""
            if "torch" in results and engine != "torch":
                ratio = f"{results['torch']['median_ms'] / r['median_ms']:.2f}x"
            print(f"{engine:<10} {nt:>7} {r['median_ms']:>10.1f} {r['gflops']:>9.1f} {r['gflops'] / nt:>7.1f} "
                  f"{r['gflops'] / peak:>8.0%} {ratio:>9}")
        print(f"{'SGEMM':<10} {nt:>7} {'':>10} {peak:>9.1f} {peak / nt:>7.1f}")
    if "torch" in engines and not any(True for _ in []):
        pass
    return 0


def cmd_translate(args) -> int:
    from . import set_num_threads
    from .translate import Translator

    if args.threads:
        set_num_threads(args.threads)
    translator = Translator.from_pretrained(args.model_dir, args.tokenizer)
    lines = [line.rstrip("\n") for line in sys.stdin]
    out = translator.translate(lines, beam_size=args.beam_size, max_length=args.max_length,
                               length_penalty=args.length_penalty, max_batch_size=args.batch_size,
                               sampling_topk=args.sampling_topk, sampling_temperature=args.sampling_temperature,
                               seed=args.seed, progress=sys.stderr.isatty() and not args.quiet)
    sys.stdout.write("".join(t + "\n" for t in out))
    sys.stdout.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cyformer", description="A CPU encoder-decoder Transformer engine.")
    p.add_argument("--version", action="version", version=f"cyformer {__version__}")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("info", help="version, OpenMP, BLAS core type and threads, CPU features")
    b = sub.add_parser("bench", help="time the forward pass on seeded weights (vs PyTorch when installed)")
    b.add_argument("--size", default="base", choices=["small", "base"])
    b.add_argument("--threads", type=int, nargs="+", help="thread counts to run (default: 1 2)")
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--src-len", type=int, default=64)
    b.add_argument("--repeat", type=int, default=10)
    b.add_argument("--no-compare", action="store_true", help="time cyformer only")
    t = sub.add_parser("translate", help="translate stdin to stdout, one sentence per line")
    t.add_argument("model_dir")
    t.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    t.add_argument("--beam-size", type=int, default=4)
    t.add_argument("--max-length", type=int, default=None, help="generated tokens, EOS included")
    t.add_argument("--length-penalty", type=float, default=1.0)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--sampling-topk", type=int, default=1)
    t.add_argument("--sampling-temperature", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return cmd_info(args)
    if args.command == "bench":
        return cmd_bench(args)
    if args.command == "translate":
        try:
            return cmd_translate(args)
        except (ValueError, TypeError, FileNotFoundError) as e:
            print(f"cyformer translate: error: {e}", file=sys.stderr)
            return 2
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
