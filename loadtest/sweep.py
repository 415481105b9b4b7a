"""Capacity at a p99 SLO: a fixed list of rates, or a search that doubles the offered rate until
the SLO breaks and then bisects between the last passing and the first failing rate.

Every run is open-loop; a run the generator could not keep to its schedule ends the search, and
the capacity is then only a lower bound set by the generator (reported as such, never as the
server's limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.openloop import RunResult, capacity_at_slo, passes

MEASURED = "measured"  # a passing rate below a failing one
GENERATOR_BOUND = "generator-bound"  # the generator fell behind before the server failed
MAX_RATE = "max-rate"  # every rate up to --max-rate passed
NONE_PASSED = "none-passed"


@dataclass
class Sweep:
    slo_p99_ms: float
    results: list[RunResult] = field(default_factory=list)
    bound: str = MEASURED

    @property
    def capacity(self) -> float | None:
        return capacity_at_slo(self.results, self.slo_p99_ms)

    def describe(self) -> str:
        cap = self.capacity
        if cap is None:
            return "none of the tested rates"
        return {
            MEASURED: f"{cap:g} req/s",
            GENERATOR_BOUND: f">= {cap:g} req/s (generator-bound)",
            MAX_RATE: f">= {cap:g} req/s (max rate tried)",
        }.get(self.bound, f"{cap:g}")


def nice(rate: float) -> float:
    """Three significant digits: rates that read well in a table."""
    return float(f"{rate:.3g}")


def fixed_rates(run_at: Callable[[float], RunResult], rates: list[float], slo: float) -> Sweep:
    sweep = Sweep(slo)
    for rate in rates:
        sweep.results.append(run_at(rate))
    sweep.bound = conclude(sweep)
    return sweep


def search(
    run_at: Callable[[float], RunResult],
    slo_p99_ms: float,
    start_rate: float,
    max_rate: float,
    refine: int = 2,
    tolerance: float = 1.15,
) -> Sweep:
    """Double from start_rate, or halve (at most 3 times) while it fails, then bisect `refine`
    times while the failing rate is more than `tolerance` x the passing one. A rate whose run is
    invalid twice in a row (the generator fell behind) counts as a ceiling, like a failure, but
    the capacity below it is then only a lower bound."""
    sweep = Sweep(slo_p99_ms)

    def probe(rate: float) -> bool:
        """Pass or not; an invalid run is repeated once (another process may have taken the
        cores for a moment)."""
        for _ in range(2):
            result = run_at(nice(rate))
            sweep.results.append(result)
            if result.valid:
                return passes(result, slo_p99_ms)
        return False

    rate = min(start_rate, max_rate)
    last_pass: float | None = None
    first_fail: float | None = None
    while probe(rate):
        last_pass = rate
        if rate >= max_rate:
            break
        rate = min(rate * 2, max_rate)
    else:
        first_fail = rate
    for _ in range(3):
        if last_pass is not None:
            break
        rate /= 2
        if probe(rate):
            last_pass = rate
        else:
            first_fail = rate
    for _ in range(refine):
        if last_pass is None or first_fail is None or first_fail / last_pass <= tolerance:
            break
        middle = (last_pass + first_fail) / 2
        last_pass, first_fail = (middle, first_fail) if probe(middle) else (last_pass, middle)
    sweep.bound = conclude(sweep)
    return sweep


def conclude(sweep: Sweep) -> str:
    """What the capacity is: bracketed by a valid failing run above it, only a lower bound
    (invalid runs above it), or the top of the search."""
    cap = sweep.capacity
    above = [r for r in sweep.results if cap is None or r.rate > cap]
    if any(r.valid and not passes(r, sweep.slo_p99_ms) for r in above):
        return MEASURED if cap is not None else NONE_PASSED
    if any(not r.valid for r in above):
        return GENERATOR_BOUND
    return MAX_RATE if cap is not None else NONE_PASSED
