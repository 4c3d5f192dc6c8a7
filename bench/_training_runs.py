"""What the training comparisons in bench/ share: their command line and the CPU line."""
import argparse

import cyformer
from cyformer.sysinfo import cpu_features, cpu_name


def parse(doc: str, *, steps: int, extra=None) -> argparse.Namespace:
    """--steps, --batch-tokens, --threads, --seed (plus ``extra(parser)``); sets the threads and
    prints the CPU model, its vector features and the thread count."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    if extra is not None:
        extra(ap)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-tokens", type=int, default=2500)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        cyformer.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; {' '.join(cpu_features())}; {cyformer.get_num_threads()} threads; "
          f"{args.steps} steps, seed {args.seed}")
    return args
