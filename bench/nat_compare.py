"""Non-autoregressive (NAT) against autoregressive greedy decoding, models of the same size
trained with the same steps and seed on the built-in tasks, in one run.

    python bench/nat_compare.py --tasks dates reverse --steps 800 [--threads 2]

Prints per task: test BLEU and exact match of each, and decoding speed (target tokens per
second over the test set, batch 64; NAT with a length beam of 1 and of 3). Figures go to
bench/RESULTS.md with this command.
"""
from __future__ import annotations

import time

import numpy as np

from _training_runs import parse
from cyformer import Trainer, Transformer
from cyformer.data import load_task
from cyformer.nat import NATConfig, NATransformer
from cyformer.recipes import DEMO_MODEL, DEMO_TRAINING, _config_for, _encode_pairs
from cyformer.training import corpus_bleu


def _decode(model, test, tokenizer, **options):
    """(hypotheses, references, seconds, generated tokens) over the test set, batches of 64."""
    hyps, refs, tokens = [], [], 0
    t0 = time.perf_counter()
    for i in range(0, len(test), 64):
        chunk = test[i:i + 64]
        longest = max(len(t) for _, t in chunk)
        res = model.generate([list(s) for s, _ in chunk], max_length=min(model.config.max_len, 2 * longest + 10),
                             return_scores=False, **options)
        seqs = [r.sequences[0] for r in res]
        tokens += sum(len(s) + 1 for s in seqs)
        hyps += tokenizer.decode(seqs)
        refs += tokenizer.decode([list(t) for _, t in chunk])
    return hyps, refs, time.perf_counter() - t0, tokens


def _scores(hyps, refs):
    return corpus_bleu(hyps, refs), 100 * float(np.mean([h == r for h, r in zip(hyps, refs)]))


def main() -> None:
    args = parse(__doc__, steps=800,
                 extra=lambda ap: ap.add_argument("--tasks", nargs="+", default=["dates", "reverse"]))
    print(f"{'task':8} {'model':18} {'BLEU':>6} {'exact %':>8} {'tokens/s':>9} {'train s':>8}")
    for task in args.tasks:
        data = load_task(task, n_train=40000, n_valid=300, n_test=500, seed=args.seed)
        tok = data.build_tokenizer()
        train, test = _encode_pairs(tok, data.train), _encode_pairs(tok, data.test)
        ar_config = _config_for(tok, DEMO_MODEL)
        longest = max(len(t) for _, t in train + test) + 1
        nat_config = NATConfig.from_dict({**ar_config.to_dict(), "model_type": "cyformer-nat",
                                          "max_target_len": min(ar_config.max_len, longest)})
        for name, model in (("autoregressive", Transformer(ar_config, seed=args.seed)),
                            ("NAT", NATransformer(nat_config, seed=args.seed))):
            trainer = Trainer(model, seed=args.seed, **DEMO_TRAINING)
            t0 = time.perf_counter()
            trainer.fit(train, max_steps=args.steps, batch_tokens=args.batch_tokens, progress=False)
            train_s = time.perf_counter() - t0
            runs = [("greedy", {"beam_size": 1})] if name == "autoregressive" else \
                [("length beam 1", {"length_beam": 1}), ("length beam 3", {"length_beam": 3})]
            for label, options in runs:
                _decode(model, test[:64], tok, **options)   # warm-up
                hyps, refs, secs, n = _decode(model, test, tok, **options)
                bleu, exact = _scores(hyps, refs)
                print(f"{task:8} {name + ' ' + label if name == 'NAT' else name:18} {bleu:6.1f} {exact:8.1f} "
                      f"{n / secs:9.0f} {train_s:8.1f}", flush=True)


if __name__ == "__main__":
    main()
