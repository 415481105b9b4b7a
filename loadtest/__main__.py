"""make loadtest: open-loop sweep against a running gateway; writes JSON + markdown.

python -m loadtest --rates 10,20,40 --duration 10 --slo-ms 100 [--path /classify]
    [--image samples/digit-3.jpg] [--param precision=int8] [--arrival poisson]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import mimetypes
import sys
from pathlib import Path

from loadtest.openloop import RunResult, Target, capacity_at_slo, run


def markdown(meta: dict, results: list[RunResult], capacity: float | None) -> str:
    lines = [
        f"# Open-loop load test: {meta['path']} ({meta['arrival']} arrivals)",
        "",
        f"{meta['measured_at']}; image {meta['image']}; params {meta['params'] or '{}'}; "
        f"{meta['duration_s']} s per rate after {meta['warmup_s']} s of warm-up; latency from "
        "the scheduled send time; a run is invalid when > 1% of sends left > 10 ms late.",
        "",
        f"**Capacity at p99 <= {meta['slo_p99_ms']} ms: "
        + (f"{capacity:g} req/s**" if capacity is not None else "none of the tested rates**"),
        "",
        "| rate req/s | sent | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | late "
        "| valid |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lat = r.latency_ms
        lines.append(
            f"| {r.rate:g} | {r.sent} | {r.errors} | {lat.get('p50', '-')} | {lat.get('p90', '-')} "
            f"| {lat.get('p99', '-')} | {lat.get('p99.9', '-')} | {lat.get('max', '-')} "
            f"| {100 * r.late_fraction:.1f}% | {'yes' if r.valid else 'NO (generator behind)'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--path", default="/classify", choices=["/classify", "/explain"])
    p.add_argument("--image", type=Path, default=Path("samples/digit-3.jpg"))
    p.add_argument("--param", action="append", default=[], help="query parameter key=value")
    p.add_argument("--rates", default="10,20,40", help="comma list of requests/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    p.add_argument("--arrival", choices=["poisson", "constant"], default="poisson")
    p.add_argument("--slo-ms", type=float, default=100.0, help="p99 latency target")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at the first rate, "
                   "not recorded (connections, caches)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("loadtest/results"))
    p.add_argument("--name", default="openloop")
    args = p.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",") if r]
        params = dict(kv.split("=", 1) for kv in args.param)
        body = args.image.read_bytes()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    content_type = mimetypes.guess_type(args.image.name)[0] or "application/octet-stream"
    target = Target(args.url, args.path, body, content_type, params)
    if args.warmup > 0:
        print(f"warm-up: {rates[0]:g} req/s for {args.warmup:g}s (not recorded)", flush=True)
        asyncio.run(run(target, rates[0], args.warmup, args.arrival, progress=False))
    results = []
    for rate in rates:
        print(f"rate {rate:g} req/s for {args.duration:g}s ...", flush=True)
        result = asyncio.run(run(target, rate, args.duration, args.arrival))
        print(f"  p99 {result.latency_ms.get('p99')} ms, errors {result.errors}, "
              f"valid {result.valid}", flush=True)  # fmt: skip
        results.append(result)
    capacity = capacity_at_slo(results, args.slo_ms)
    meta = {
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "url": args.url,
        "path": args.path,
        "image": str(args.image),
        "params": params,
        "arrival": args.arrival,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "slo_p99_ms": args.slo_ms,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report = {**meta, "capacity_rps_at_slo": capacity, "runs": [r.to_dict() for r in results]}
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(meta, results, capacity))
    print(f"capacity at p99 <= {args.slo_ms:g} ms: {capacity} req/s; "
          f"wrote {args.out / args.name}.json and .md")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
