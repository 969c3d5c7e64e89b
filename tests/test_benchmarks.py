"""benchmarks/compare.py's machinery: a side in a worker process of its own answers timing
requests, and alternate() takes medians of both sides. Only our side runs here (a few steps of
the tiny model); the numbers themselves are the benchmark's business, not the tests'."""
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def compare():
    sys.path.insert(0, BENCH)
    try:
        import compare
        yield compare
    finally:
        sys.path.remove(BENCH)


def test_a_worker_process_times_our_training_step_and_profiles_it(compare):
    w = compare.Worker("ours", "tiny", threads=1, gen_tokens=3)
    try:
        seconds, faults = w.call("train")
        assert seconds > 0 and faults >= 0
        rows, total = w.call("profile", repeats=2)
        assert total > 0 and rows["attention forward"] > 0 and rows["AdamW step"] > 0
        seconds, _ = w.call("generate", settle=0)
        assert seconds > 0
    finally:
        w.close()
    assert w.p.returncode == 0


def test_alternate_swaps_the_first_runner_each_round_and_takes_medians(compare):
    order = []

    def side(name, values):
        it = iter(values)
        return lambda: (order.append(name), (next(it), 0))[1]

    medians = compare.alternate(side("o", [9, 1, 2, 3]), side("t", [9, 5, 6, 7]), repeats=3, warmup=1)
    assert order == ["o", "t", "o", "t", "t", "o", "o", "t"]        # warm-up, then o t, t o, o t
    assert medians == ((2, 0), (6, 0))
