"""The capacity search: which rates it probes and what it concludes, against a model server
whose p99 is a known function of the offered rate (a fake run_at, the same interface)."""

from __future__ import annotations

from loadtest.openloop import RunResult
from loadtest.sweep import GENERATOR_BOUND, MAX_RATE, MEASURED, NONE_PASSED, fixed_rates, search


def server(capacity: float, generator_limit: float = 1e9):
    """p99 20 ms below `capacity`, 2 s above it; runs above generator_limit are invalid."""
    probed: list[float] = []

    def run_at(rate: float) -> RunResult:
        probed.append(rate)
        p99 = 20.0 if rate <= capacity else 2000.0
        valid = rate <= generator_limit
        return RunResult(
            rate,
            1,
            "poisson",
            10,
            10,
            {"200": 10},
            0,
            0.0,
            0,
            valid,
            {"p50": 10.0, "p99": p99},
            rate,
        )

    return run_at, probed


def test_doubles_then_bisects_to_within_the_tolerance():
    run_at, probed = server(capacity=30)
    sweep = search(run_at, 500, start_rate=5, max_rate=1000, refine=3)
    assert probed == [5, 10, 20, 40, 30, 35, 32.5]
    assert sweep.capacity == 30 and sweep.bound == MEASURED
    assert sweep.describe() == "30 req/s"


def test_a_failing_start_rate_looks_below_it():
    run_at, probed = server(capacity=3)
    sweep = search(run_at, 500, start_rate=10, max_rate=100, refine=1)
    assert probed == [10, 5, 2.5, 3.75]
    assert sweep.capacity == 2.5 and sweep.bound == MEASURED
    run_at, _ = server(capacity=0.1)
    assert search(run_at, 500, 10, 100).bound == NONE_PASSED


def test_a_generator_that_falls_behind_ends_the_search_with_a_lower_bound():
    run_at, probed = server(capacity=500, generator_limit=50)
    sweep = search(run_at, 500, start_rate=10, max_rate=1000)
    # An invalid run is repeated once; twice invalid, the rate is a ceiling for the bisection.
    assert probed == [10, 20, 40, 80, 80, 60, 60, 50]
    assert sweep.capacity == 50 and sweep.bound == GENERATOR_BOUND
    assert sweep.describe() == ">= 50 req/s (generator-bound)"


def test_an_invalid_start_rate_looks_below_it():
    run_at, probed = server(capacity=500, generator_limit=15)
    sweep = search(run_at, 500, start_rate=40, max_rate=1000, refine=2)
    assert probed == [40, 40, 20, 20, 10, 15, 17.5, 17.5]
    assert sweep.capacity == 15 and sweep.bound == GENERATOR_BOUND


def test_one_invalid_run_is_repeated_before_the_search_gives_up():
    """Another process took the cores once: the repeat is valid and the search goes on."""
    run_at, probed = server(capacity=30)
    hiccup = {"left": 1}

    def flaky(rate: float) -> RunResult:
        result = run_at(rate)
        if rate == 20 and hiccup["left"]:
            hiccup["left"] -= 1
            result.valid = False
        return result

    sweep = search(flaky, 500, start_rate=10, max_rate=1000, refine=0)
    assert probed == [10, 20, 20, 40] and sweep.capacity == 20 and sweep.bound == MEASURED


def test_the_max_rate_caps_the_search():
    run_at, probed = server(capacity=500)
    sweep = search(run_at, 500, start_rate=10, max_rate=60)
    assert probed == [10, 20, 40, 60] and sweep.bound == MAX_RATE and sweep.capacity == 60


def test_fixed_rates_run_every_rate():
    run_at, probed = server(capacity=25, generator_limit=60)
    sweep = fixed_rates(run_at, [10, 20, 40, 80], 500)
    assert probed == [10, 20, 40, 80] and sweep.capacity == 20 and sweep.bound == MEASURED
    run_at, _ = server(capacity=500)
    assert fixed_rates(run_at, [10, 20], 500).bound == MAX_RATE
