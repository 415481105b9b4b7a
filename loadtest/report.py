"""Text for people: one line per run while it goes, and the markdown of `make loadtest`."""

from __future__ import annotations

from loadtest.openloop import CLOSED_LOOP, RunResult
from loadtest.sweep import Sweep


def one_line(r: RunResult) -> str:
    lat = r.latency_ms
    verdict = (
        "valid" if r.valid else f"INVALID: generator behind ({100 * r.late_fraction:.1f}% late)"
    )
    return (
        f"[{r.label}] {r.rate:g} req/s: p50 {lat.get('p50', '-')} ms, p99 {lat.get('p99', '-')} "
        f"ms, errors {r.errors}/{r.sent} {r.statuses}, {verdict}"
    )


def loadtest_markdown(meta: dict, sweep: Sweep) -> str:
    closed = any(r.mode == CLOSED_LOOP for r in sweep.results)
    lines = [f"# Load test: {meta['target']} ({meta['mode']})", ""]
    if closed:
        lines += [
            "**CLOSED LOOP**: each user waits for its answer before sending again, so a stall "
            "delays the next sends instead of showing in the percentiles (coordinated omission). "
            "These latencies are optimistic; use the open loop for an SLO.",
            "",
        ]
    lines += [
        f"{meta['measured_at']}; corpus {meta['corpus']}; {meta['duration_s']} s per rate after "
        f"{meta['warmup_s']} s of warm-up. Open-loop latency counts from the scheduled send time; "
        "a run is invalid when > 1% of sends left > 10 ms late. Command: "
        f"`{meta['command']}`",
        "",
    ]
    if meta["slo_p99_ms"] is not None:
        lines += [f"**Capacity at p99 <= {meta['slo_p99_ms']:g} ms: {sweep.describe()}**", ""]
    lines += [
        "| mode | rate req/s | sent | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | late "
        "| valid |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sweep.results:
        lat = r.latency_ms
        lines.append(
            f"| {r.label} | {r.rate:g} | {r.sent} | {r.errors} | {lat.get('p50', '-')} "
            f"| {lat.get('p90', '-')} | {lat.get('p99', '-')} | {lat.get('p99.9', '-')} "
            f"| {lat.get('max', '-')} | {100 * r.late_fraction:.1f}% "
            f"| {'yes' if r.valid else 'NO (generator behind)'} |"
        )
    return "\n".join(lines) + "\n"
