"""Threads, long runs, interrupts and crashes: the engine embedded in a real program.

- several Python threads sharing one model get what serial calls get, and kernels release
  the GIL (another thread keeps running while one is inside a kernel);
- 10,000 calls of varying shapes keep resident memory flat (bound: RSS_GROWTH_MB);
- Ctrl-C (SIGINT) during a long generate or a training epoch returns promptly (bound:
  INTERRUPT_SECONDS after the signal) and leaves the model usable;
- killing a process mid-save leaves the previous checkpoint loadable and verified.
The speed-up of concurrent calls is measured in bench/ (bench/test_bench_concurrency.py),
not asserted here.
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import cyformer
from cyformer import Transformer, TransformerConfig
from cyformer.training import Trainer, latest_checkpoint

RSS_GROWTH_MB = 25
INTERRUPT_SECONDS = 3.0


def small_model(seed=0, **kw):
    cfg = dict(src_vocab_size=40, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2, n_decoder_layers=2,
               max_len=64, dropout=0.0)
    cfg.update(kw)
    return Transformer(TransformerConfig(**cfg), seed=seed)


def _sources(seed, n):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(3, 40, int(rng.integers(1, 12)))] for _ in range(n)]


def test_threads_sharing_a_model_get_serial_results():
    model = small_model()
    jobs = [("generate", _sources(i, 5), dict(beam_size=1 + i % 3, max_length=12)) for i in range(6)]
    jobs += [("forward", _sources(10 + i, 4), None) for i in range(6)]

    def run(job):
        kind, src, opts = job
        if kind == "generate":
            return [(r.sequences, r.scores) for r in model.generate(src, **opts)]
        return model.forward(src, [[1] + s[:5] for s in src])

    serial = [run(j) for j in jobs]
    results = [None] * len(jobs)
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                results[i] = run(jobs[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (kind, _, _), want, got in zip(jobs, serial, results):
        if kind == "forward":
            np.testing.assert_array_equal(got, want)
        else:
            assert got == want


def test_kernels_release_the_gil():
    """While one thread is inside a long encode, another keeps executing Python."""
    model = small_model(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=4)
    src = np.random.default_rng(0).integers(3, 40, size=(64, 64))
    model.encode(src)  # warm up
    ticks = []
    inside = threading.Event()
    done = threading.Event()

    def counter():
        inside.wait()
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    t = threading.Thread(target=counter)
    t.start()
    old = cyformer.get_num_threads()
    cyformer.set_num_threads(1)
    try:
        inside.set()
        start = time.perf_counter()
        for _ in range(3):
            model.encode(src)
        end = time.perf_counter()
    finally:
        done.set()
        t.join()
        cyformer.set_num_threads(old)
    during = [x for x in ticks if start < x < end]
    # with the GIL held for the whole kernel the counter would tick only between kernel calls
    assert len(during) > 0.3 * (end - start) / 0.001, (len(during), end - start)


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_ten_thousand_calls_keep_memory_flat():
    model = small_model()
    rng = np.random.default_rng(1)
    trainer = Trainer(small_model(seed=2), schedule="constant", lr=1e-4)

    def call(i):
        b = int(rng.integers(1, 6))
        src = [[int(t) for t in rng.integers(3, 40, int(rng.integers(1, 30)))] for _ in range(b)]
        kind = i % 10
        if kind < 5:
            model.encode(src)
        elif kind < 8:
            model.forward(src, [[1] + s[: int(rng.integers(0, 20))] for s in src])
        elif kind == 8:
            model.generate(src, beam_size=int(rng.integers(1, 4)), max_length=int(rng.integers(1, 8)))
        else:
            trainer.step(src, [s[:10] + [2] for s in src])

    for i in range(1000):   # warm-up: workspaces grow to their largest shapes
        call(i)
    before = _rss_mb()
    for i in range(10_000):
        call(i)
    growth = _rss_mb() - before
    assert growth < RSS_GROWTH_MB, f"resident memory grew by {growth:.1f} MB over 10,000 calls"


def _interrupt_after(seconds):
    pid = os.getpid()
    timer = threading.Timer(seconds, lambda: os.kill(pid, signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_during_generate_returns_promptly_and_model_stays_usable():
    model = small_model(d_model=128, n_heads=4, d_ff=512, max_len=512)
    src = _sources(3, 32)
    want = model.generate(src[:3], beam_size=2, max_length=10)
    timer = _interrupt_after(0.5)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        for _ in range(1000):   # far longer than the timer
            model.generate(src, beam_size=4, max_length=500, min_length=500)
    took = time.perf_counter() - start
    timer.cancel()
    assert took < 0.5 + INTERRUPT_SECONDS
    got = model.generate(src[:3], beam_size=2, max_length=10)
    assert [r.sequences for r in got] == [r.sequences for r in want]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_during_training_checkpoints_and_stops(tmp_path):
    model = small_model()
    trainer = Trainer(model, schedule="constant", lr=1e-3)
    rng = np.random.default_rng(0)
    train = [(s, s[:8] + [2]) for s in _sources(4, 4000)]
    timer = _interrupt_after(0.5)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train, max_steps=10 ** 6, batch_tokens=200, output_dir=str(tmp_path), progress=False)
    took = time.perf_counter() - start
    timer.cancel()
    assert took < 0.5 + INTERRUPT_SECONDS
    assert trainer.step_count > 0
    saved = latest_checkpoint(str(tmp_path))
    assert saved is not None and saved.endswith(f"checkpoint-{trainer.step_count}")
    resumed = Trainer.from_checkpoint(saved)
    np.testing.assert_array_equal(resumed.model.params, model.params)
    assert np.isfinite(trainer.step([[3, 4, 5]], [[6, 2]]))   # still trains
    del rng


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path[:0] = sys.argv[3:]
    from cyformer import Transformer, TransformerConfig
    directory, ready = sys.argv[1], sys.argv[2]
    cfg = TransformerConfig(src_vocab_size=8000, d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3,
                            n_decoder_layers=3, max_len=128)
    model = Transformer(cfg, seed=0)
    version = 0
    while True:
        version += 1
        model.params[...] = version      # every weight of version k equals k
        model.save_pretrained(directory)
        if version == 1:
            open(ready, "w").close()
""")


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31])
def test_killing_a_writer_mid_save_keeps_a_good_checkpoint(tmp_path, delay):
    """SIGKILL a process that saves a ~40 MB checkpoint in a loop: the folder always holds a
    whole checkpoint of one version, which loads and passes the checksum."""
    directory, ready = str(tmp_path / "model"), str(tmp_path / "ready")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    paths = [p for p in sys.path if p]
    proc = subprocess.Popen([sys.executable, str(script), directory, ready] + paths)
    try:
        deadline = time.time() + 60
        while not os.path.exists(ready):
            assert proc.poll() is None, "the writer died"
            assert time.time() < deadline, "the writer never finished its first save"
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        proc.kill()
        proc.wait()
    model = Transformer.from_pretrained(directory, verify=True)
    values = np.unique(model.params)
    assert len(values) == 1 and values[0] >= 1, values[:5]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_inside_the_optimizer_step_resumes_exactly(tmp_path, monkeypatch):
    """A SIGINT delivered while the optimizer kernel runs is held back until the step's state
    (parameters, moments, counters, data position) is whole: the checkpoint written on the way
    out resumes into exactly the uninterrupted run."""
    import cyformer.optim as optim

    cfg = dict(src_vocab_size=24, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1,
               max_len=32, dropout=0.1, output_bias=True)
    rng = np.random.default_rng(0)
    train = [([int(x) for x in rng.integers(3, 24, int(rng.integers(2, 7)))],
              [int(x) for x in rng.integers(3, 24, 3)] + [2]) for _ in range(200)]
    options = dict(schedule="constant", lr=1e-3, seed=3, frozen=["output_projection.bias"])
    full = Trainer(small_model(**cfg), **options)
    full.fit(train, max_steps=8, batch_tokens=60, progress=False)

    kernels = optim._kernels
    calls = [0]

    class SignalInside:
        def __getattr__(self, name):
            return getattr(kernels, name)

        def adam_update(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 5:
                os.kill(os.getpid(), signal.SIGINT)   # arrives while the update is applied
            return kernels.adam_update(*args, **kwargs)

    monkeypatch.setattr(optim, "_kernels", SignalInside())
    part = Trainer(small_model(**cfg), **options)
    with pytest.raises(KeyboardInterrupt):
        part.fit(train, max_steps=8, batch_tokens=60, output_dir=str(tmp_path), progress=False)
    monkeypatch.setattr(optim, "_kernels", kernels)
    assert part.step_count == part.optimizer.steps == 5
    resumed = Trainer.from_checkpoint(latest_checkpoint(str(tmp_path)), frozen=["output_projection.bias"])
    assert resumed.step_count == 5
    resumed.fit(train, max_steps=8, batch_tokens=60, output_dir=str(tmp_path), progress=False)
    assert resumed.history.loss == full.history.loss
    np.testing.assert_array_equal(resumed.model.params, full.model.params)


def test_resaving_a_step_that_fails_keeps_the_old_copy(tmp_path, monkeypatch):
    import cyformer.training as training

    trainer = Trainer(small_model(), schedule="constant", lr=1e-3)
    train = [(s, s[:4] + [2]) for s in _sources(7, 50)]
    trainer.fit(train, max_steps=3, batch_tokens=100, output_dir=str(tmp_path), progress=False)

    def full_disk(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(training, "save_safetensors", full_disk)
    with pytest.raises(OSError):
        trainer.save_checkpoint(str(tmp_path))        # the same step again
    assert os.listdir(tmp_path) == ["checkpoint-3"]
    assert Trainer.from_checkpoint(str(tmp_path / "checkpoint-3")).step_count == 3
    # a stop between the two renames of a re-save: the old copy stepped aside is put back
    os.rename(tmp_path / "checkpoint-3", tmp_path / ("checkpoint-3" + training._ASIDE))
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint-3")
