"""Soak test (a script, not part of every CI run): open-loop load at a fraction of the capacity at
the SLO for a long time, watching whether latency or memory drift.

  PYTHONPATH=. .venv/bin/python scripts/soak.py --capacity 50          # 10 min at 35 req/s
  PYTHONPATH=. .venv/bin/python scripts/soak.py --capacity 50 --duration 180   # a shorter run
  PYTHONPATH=. .venv/bin/python scripts/soak.py --url http://127.0.0.1:8080 --gateway-pid N ...

--capacity is the capacity at the SLO that `make loadtest` reports for the same request (see
docs/loadtest/). Without --url the script starts a Triton and a gateway on --repository itself, so
it can watch both processes' memory. Passes when the p99 of the last minute is within 20% of the
first minute's, every request was answered 200, and the gateway's and Triton's RSS (each process
with its children: workers, python backend stubs) grew < 10% from the end of the first minute
(warm) to the end. Writes <out>/soak.json and <out>/soak.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest.openloop import BackgroundLoad, Shot  # noqa: E402
from local_triton.procfs import tree_rss_bytes  # noqa: E402

P99_DRIFT = 0.20
RSS_GROWTH = 0.10
SAMPLE_S = 5.0


class Minute(TypedDict):
    """One minute of the run, by scheduled send time."""

    minute: int
    requests: int
    p99_ms: float | None  # of its 200s
    statuses: dict[str, int]  # status (or error name) -> count


def p99_ms(shots: list[Shot]) -> float | None:
    latencies = sorted(s.latency for s in shots if s.status == 200)
    if not latencies:
        return None
    return round(1000 * latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)], 2)


class RssSampler(threading.Thread):
    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[dict[str, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.halt.is_set():
            row = {"t": round(time.monotonic() - start, 1)}
            row.update({name: tree_rss_bytes(pid) / 2**20 for name, pid in self.pids.items()})
            self.samples.append(row)
            self.halt.wait(SAMPLE_S)


def at(samples: list[dict[str, float]], t: float, name: str) -> float:
    """RSS (MiB) of the first sample at or after t seconds."""
    return next((s[name] for s in samples if s["t"] >= t), samples[-1][name])


def start_stack(stack: ExitStack, repository: Path, out: Path) -> tuple[str, int, int]:
    from local_triton.gateway import local_stack

    triton, gateway = local_stack(stack, repository, out)
    assert triton.process is not None and gateway.process is not None
    return gateway.url, gateway.process.pid, triton.process.pid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--capacity", type=float, required=True, help="req/s at the SLO (loadtest)")
    p.add_argument("--fraction", type=float, default=0.7)
    p.add_argument("--duration", type=float, default=600.0, help="seconds (>= 120)")
    p.add_argument("--image", type=Path, default=ROOT / "samples" / "digit-3.jpg")
    p.add_argument("--param", action="append", default=["precision=int8"], help="key=value")
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--url", help="a running gateway instead of starting one")
    p.add_argument("--gateway-pid", type=int, help="with --url: the gateway's pid")
    p.add_argument("--triton-pid", type=int, help="with --url: tritonserver's pid")
    p.add_argument("--out", type=Path, default=ROOT / ".run" / "soak")
    args = p.parse_args(argv)
    if args.duration < 120:
        p.error("--duration must be at least 120 s (a first and a last minute)")
    args.out.mkdir(parents=True, exist_ok=True)
    rate = round(args.capacity * args.fraction, 2)
    params = dict(kv.split("=", 1) for kv in args.param)
    content_type = "image/jpeg" if args.image.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    with ExitStack() as stack:
        if args.url:
            url, pids = args.url, {}
            if args.gateway_pid:
                pids["gateway"] = args.gateway_pid
            if args.triton_pid:
                pids["triton"] = args.triton_pid
        else:
            url, gateway_pid, triton_pid = start_stack(stack, args.repository, args.out)
            pids = {"gateway": gateway_pid, "triton": triton_pid}
        sampler = RssSampler(pids)
        load = BackgroundLoad(
            url,
            args.image.read_bytes(),
            rate,
            content_type=content_type,
            params=params,
            timeout_s=30,
        )
        print(f"soak: {rate:g} req/s ({args.fraction:g} x {args.capacity:g}) for "
              f"{args.duration:g} s against {url}", flush=True)  # fmt: skip
        sampler.start()
        load.start()
        for minute in range(1, int(args.duration // 60) + 1):
            time.sleep(min(60.0, args.duration - (minute - 1) * 60))
            done = [s for s in load.shots if s.scheduled - load.started_at < minute * 60]
            print(f"  minute {minute}: {len(done)} answered, p99 so far "
                  f"{p99_ms(done)} ms", flush=True)  # fmt: skip
        time.sleep(max(0.0, args.duration - (args.duration // 60) * 60))
        shots = load.stop()
        sampler.halt.set()
        sampler.join()
    start = shots[0].scheduled
    minutes: list[Minute] = []
    for m in range(math.ceil((shots[-1].scheduled - start) / 60)):
        window = [s for s in shots if m * 60 <= s.scheduled - start < (m + 1) * 60]
        statuses: dict[str, int] = {}
        for s in window:
            statuses[str(s.status or s.error)] = statuses.get(str(s.status or s.error), 0) + 1
        minutes.append({"minute": m + 1, "requests": len(window), "p99_ms": p99_ms(window),
                        "statuses": statuses})  # fmt: skip
    full = [m for m in minutes if m["requests"] >= 0.9 * rate * 60]
    # No full minute (the generator fell far behind): no p99 to compare, the check fails.
    first, last = (full[0]["p99_ms"], full[-1]["p99_ms"]) if full else (None, None)
    growth = {
        name: round(at(sampler.samples, 1e9, name) / at(sampler.samples, 60, name) - 1, 4)
        for name in pids
    }
    errors = sum(1 for s in shots if s.status != 200)
    checks = {
        "p99_last_within_20pct_of_first": bool(first and last and last <= first * (1 + P99_DRIFT)),
        "all_answered_200": errors == 0,
        **{f"{name}_rss_growth_under_10pct": g < RSS_GROWTH for name, g in growth.items()},
    }
    report = {
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "rate_rps": rate,
        "duration_s": args.duration,
        "requests": len(shots),
        "non_200": errors,
        "p99_first_minute_ms": first,
        "p99_last_minute_ms": last,
        "rss_growth_from_minute_1": growth,
        "rss_mib": {name: {"after_minute_1": round(at(sampler.samples, 60, name), 1),
                           "end": round(at(sampler.samples, 1e9, name), 1)} for name in pids},
        "minutes": minutes,
        "checks": checks,
        "passed": all(checks.values()),
    }  # fmt: skip
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "soak.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


def markdown(r: dict) -> str:
    lines = [
        f"# Soak: {r['rate_rps']:g} req/s for {r['duration_s']:g} s ({r['measured_at']})",
        "",
        f"`{r['command']}`",
        "",
        f"{r['requests']} requests, {r['non_200']} not 200; p99 first minute "
        f"{r['p99_first_minute_ms']} ms, last minute {r['p99_last_minute_ms']} ms.",
        "",
        "| process | RSS after minute 1 (MiB) | RSS at the end (MiB) | growth |",
        "|---|---:|---:|---:|",
    ]
    for name, rss in r["rss_mib"].items():
        lines.append(f"| {name} | {rss['after_minute_1']} | {rss['end']} | "
                     f"{100 * r['rss_growth_from_minute_1'][name]:.1f}% |")  # fmt: skip
    lines += ["", "| minute | requests | p99 ms | statuses |", "|---:|---:|---:|---|"]
    for m in r["minutes"]:
        lines.append(f"| {m['minute']} | {m['requests']} | {m['p99_ms']} | {m['statuses']} |")
    lines += ["", "Checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}"
                                         for k, v in r["checks"].items())]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
