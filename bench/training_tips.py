"""The notes' training tips measured: the same model, seed and steps with and without each.

    python bench/training_tips.py --steps 600 [--threads 2]

* scheduled sampling (decoder inputs replaced by the model's own predictions, ramped to 25%
  over the first half of training) and noisy teacher forcing (10% random tokens) on `dates`;
* guided attention (weight 1, width 0.2) on `numbers`, whose words align monotonically with
  the digits they spell.

Prints test exact match (greedy) and BLEU of each run. Figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import time

import numpy as np

from _training_runs import parse
from cyformer import Trainer, Transformer
from cyformer.data import load_task
from cyformer.recipes import DEMO_MODEL, DEMO_TRAINING, _config_for, _encode_pairs
from cyformer.training import corpus_bleu


def run(task: str, steps: int, seed: int, batch_tokens: int, **tips):
    data = load_task(task, n_train=40000, n_valid=300, n_test=500, seed=seed)
    tok = data.build_tokenizer()
    train, test = _encode_pairs(tok, data.train), _encode_pairs(tok, data.test)
    model = Transformer(_config_for(tok, DEMO_MODEL), seed=seed)
    trainer = Trainer(model, seed=seed, **DEMO_TRAINING, **tips)
    t0 = time.perf_counter()
    trainer.fit(train, max_steps=steps, batch_tokens=batch_tokens, progress=False)
    seconds = time.perf_counter() - t0
    hyps, refs = trainer.translate_ids(test, tok, beam_size=1)
    return corpus_bleu(hyps, refs), 100 * float(np.mean([h == r for h, r in zip(hyps, refs)])), seconds


def main() -> None:
    args = parse(__doc__, steps=600)
    half = max(args.steps // 2, 1)
    runs = [
        ("dates", "teacher forcing", {}),
        ("dates", "scheduled sampling 25%", dict(scheduled_sampling=0.25, scheduled_sampling_steps=half)),
        ("dates", "noisy teacher forcing 10%", dict(scheduled_sampling=0.1, scheduled_sampling_source="random")),
        ("numbers", "teacher forcing", {}),
        ("numbers", "guided attention", dict(guided_attention=1.0, guided_attention_width=0.2)),
    ]
    print(f"{'task':8} {'training':28} {'exact %':>8} {'BLEU':>6} {'train s':>8}")
    for task, label, tips in runs:
        bleu, exact, secs = run(task, args.steps, args.seed, args.batch_tokens, **tips)
        print(f"{task:8} {label:28} {exact:8.1f} {bleu:6.1f} {secs:8.1f}", flush=True)


if __name__ == "__main__":
    main()
