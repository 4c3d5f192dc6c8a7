"""The decoding-step thread governor (issue 14, item 2): it shrinks the team when this
process's threads wait for CPUs, tries the full team again later, and never changes results."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import cyformer
from cyformer import threads
from cyformer.benchmark import bench_config, source_batch


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def fake(monkeypatch):
    clock = FakeClock()
    delay = {"ns": 0}
    monkeypatch.setattr(threads.time, "perf_counter", clock)
    monkeypatch.setattr(threads, "_run_delay_ns", lambda: delay["ns"])
    monkeypatch.setattr(threads, "_adaptive", True)
    return clock, delay


def run_window(gov, clock, delay, team_wait_share, seconds=threads.StepGovernor.WINDOW * 1.25, n=2):
    """One measurement window of decoding steps during which each team thread waited
    ``team_wait_share`` of the time for a CPU."""
    t = gov.begin(n)
    delay["ns"] += int(team_wait_share * seconds * t * 1e9)
    clock.now += seconds
    return t


def test_quiet_machine_keeps_the_full_team(fake):
    clock, delay = fake
    gov = threads.StepGovernor()
    teams = [run_window(gov, clock, delay, 0.01) for _ in range(50)]
    assert set(teams) == {2}


def test_contention_shrinks_the_team_and_the_full_team_is_tried_again(fake):
    clock, delay = fake
    gov = threads.StepGovernor()
    assert run_window(gov, clock, delay, 0.4) == 2      # the first window runs the full team
    assert gov.begin(2) == 1                            # measured as contended: one thread
    first_retry = gov.retry_at
    # while reduced, steps run at one thread until the retry time
    while clock.now < first_retry:
        assert gov.begin(2) == 1
        clock.now += 0.01
    assert gov.begin(2) == 2 and gov.trial              # the full team is tried again
    window = threads.StepGovernor.WINDOW * 1.25
    delay["ns"] += int(0.4 * window * 2e9)
    clock.now += window
    assert gov.begin(2) == 1                            # still contended: back to one thread
    assert gov.retry == 2 * threads.StepGovernor.RETRY_MIN   # and the next try waits twice as long
    # the load goes away: the next try holds
    clock.now = gov.retry_at
    assert gov.begin(2) == 2
    for _ in range(20):
        assert run_window(gov, clock, delay, 0.0) == 2
    assert gov.retry == threads.StepGovernor.RETRY_MIN and not gov.trial


def test_one_thread_and_off_are_left_alone(fake, monkeypatch):
    clock, delay = fake
    gov = threads.StepGovernor()
    assert run_window(gov, clock, delay, 0.9, n=1) == 1
    monkeypatch.setattr(threads, "_adaptive", False)
    for _ in range(5):
        assert run_window(gov, clock, delay, 0.9) == 2


def test_no_schedstat_means_no_change(fake, monkeypatch):
    clock, delay = fake
    monkeypatch.setattr(threads, "_run_delay_ns", lambda: None)
    gov = threads.StepGovernor()
    assert {run_window(gov, clock, delay, 0.9) for _ in range(10)} == {2}


def test_run_delay_is_read_from_this_process():
    value = threads._run_delay_ns()
    if sys.platform.startswith("linux"):
        assert isinstance(value, int) and value >= 0
    else:
        assert value is None


def test_governed_decoding_gives_the_same_tokens_as_a_fixed_team(monkeypatch):
    """The team size changes only the speed: force it to flip every step and compare."""
    model = cyformer.Transformer(bench_config("small"), seed=0)
    src = source_batch(3, 16)
    cyformer.set_num_threads(2)
    try:
        monkeypatch.setattr(threads, "_adaptive", False)
        fixed = [(r.sequences, r.scores) for r in model.generate(src, beam_size=3, max_length=12)]
        monkeypatch.setattr(threads, "_adaptive", True)
        flips = iter(range(10 ** 6))
        monkeypatch.setattr(threads.StepGovernor, "begin", lambda self, n, state=None: 1 + next(flips) % 2)
        flipped = [(r.sequences, r.scores) for r in model.generate(src, beam_size=3, max_length=12)]
    finally:
        cyformer.set_num_threads(threads.default_num_threads())
    assert flipped == fixed


def test_a_busy_machine_shrinks_the_team():
    """With every core kept busy by other processes, decoding's threads wait for CPUs and the
    governor shrinks the team (behaviour, not a timing: the share waited is far above the
    threshold)."""
    cores = threads._available_cores()
    if cores < 2:
        pytest.skip("one core: the team is already one thread")
    code = ("import cyformer, time\n"
            "from cyformer import threads\n"
            "from cyformer.benchmark import bench_config, source_batch\n"
            f"cyformer.set_num_threads({cores})\n"
            "m = cyformer.Transformer(bench_config('small'), seed=0)\n"
            "src = source_batch(4, 16)\n"
            "t = time.perf_counter(); teams = []\n"
            "while time.perf_counter() - t < 3:\n"
            "    m.generate(src, max_length=16, min_length=16); teams.append(threads.step_governor().team)\n"
            "print(min(teams), threads.step_governor().requested)\n")
    env = dict(os.environ, CYFORMER_ADAPTIVE_THREADS="1")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.2)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert out.returncode == 0, out.stderr
    smallest, requested = map(int, out.stdout.split())
    assert requested == cores and smallest < cores
