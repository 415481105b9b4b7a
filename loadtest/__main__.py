"""make loadtest: load a running gateway (or Triton directly) and write JSON, markdown and plots.

python -m loadtest [--url http://127.0.0.1:8080] [--path /classify] [--param precision=int8]
    [--rates 10,20,40 | --search 5 --max-rate 400] [--duration 10] [--slo-p99 500]
    [--images DIR_OR_FILES ...] [--triton 127.0.0.1:8001 --model vit_classify_int8]
    [--closed-loop USERS] [--arrival poisson|constant] [--out DIR] [--name NAME]

Exit status with --slo-p99: 0 every tested rate met it (with --search: some rate did), 1 it was
missed, 3 no verdict (the generator fell behind its schedule); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from loadtest import corpus as corpora
from loadtest import plots, report
from loadtest.openloop import CLOSED_LOOP, RunResult, Target, passes, run, run_closed, run_sync
from loadtest.sweep import GENERATOR_BOUND, Sweep, fixed_rates, search
from loadtest.targets import Body, HttpTarget, TritonTarget
from service.model_info import ModelMetadata


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="gateway (HTTP target)")
    p.add_argument("--path", default="/classify", choices=["/classify", "/explain"])
    p.add_argument("--param", action="append", default=[], help="query parameter key=value")
    p.add_argument(
        "--triton",
        metavar="HOST:PORT",
        help="load Triton's gRPC endpoint directly "
        "with preprocessed tensors instead of the gateway",
    )
    p.add_argument("--model", default="vit_classify_fp32", help="Triton model (with --triton)")
    p.add_argument(
        "--metadata",
        type=Path,
        default=Path("model_repository/model.json"),
        help="model.json: the preprocessing for --triton",
    )
    p.add_argument(
        "--images",
        type=Path,
        nargs="+",
        help="image files or folders (default: a corpus of photos of mixed sizes made offline)",
    )
    p.add_argument("--rates", default="10,20,40", help="comma list of requests/s")
    p.add_argument(
        "--search",
        type=float,
        metavar="START",
        help="find the capacity: double "
        "from START req/s until the SLO breaks, then bisect (needs --slo-p99)",
    )
    p.add_argument("--max-rate", type=float, default=400.0)
    p.add_argument(
        "--closed-loop",
        type=int,
        metavar="USERS",
        help="closed loop with USERS "
        "concurrent users instead (hides stalls; labelled in every output)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    p.add_argument("--arrival", choices=["poisson", "constant"], default="poisson")
    p.add_argument(
        "--slo-p99",
        "--slo-ms",
        dest="slo",
        type=float,
        help="p99 target in ms; reports the capacity at it and sets the exit status",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds at the first rate, not recorded (connections, caches)",
    )
    p.add_argument("--out", type=Path, default=Path("loadtest/results"))
    p.add_argument("--name", default="openloop")
    return p.parse_args(argv)


def make_target(args: argparse.Namespace, corpus: corpora.Corpus) -> Target:
    if args.triton:
        spec = ModelMetadata.load(args.metadata).spec
        tensors = corpora.tensors(corpus, spec)
        return TritonTarget(f"triton {args.model}", args.triton, args.model, tensors, outputs=())
    params = dict(kv.split("=", 1) for kv in args.param)
    bodies = [Body(p.data, p.content_type) for p in corpus.photos]
    return HttpTarget(f"{args.path} {params or ''}".strip(), args.url, args.path, bodies, params)


def exit_status(sweep: Sweep, searched: bool) -> int:
    if searched:
        return 0 if sweep.capacity is not None else (3 if sweep.bound == GENERATOR_BOUND else 1)
    valid = [r for r in sweep.results if r.valid]
    if any(not passes(r, sweep.slo_p99_ms) for r in valid):
        return 1
    return 3 if len(valid) < len(sweep.results) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",") if r]
        if args.closed_loop is not None and args.slo is not None:
            raise ValueError("--slo-p99 needs the open loop: a closed loop hides stalls")
        if args.search is not None and args.slo is None:
            raise ValueError("--search needs --slo-p99")
        corpus = corpora.from_paths(args.images) if args.images else corpora.default_corpus()
        target = make_target(args, corpus)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"corpus: {corpus.summary()}", flush=True)

    def run_at(rate: float) -> RunResult:
        print(f"  {target.name}: {rate:g} req/s for {args.duration:g}s ...", flush=True)
        result = run_sync(run(target, rate, args.duration, args.arrival))
        print(f"  -> {report.one_line(result)}", flush=True)
        return result

    first = args.search or rates[0]
    if args.warmup > 0 and args.closed_loop is None:
        print(f"warm-up: {first:g} req/s for {args.warmup:g}s (not recorded)", flush=True)
        run_sync(run(target, first, args.warmup, args.arrival, progress=False))
    slo = args.slo if args.slo is not None else float("inf")
    if args.closed_loop is not None:
        print(f"CLOSED LOOP: {args.closed_loop} users for {args.duration:g}s", flush=True)
        closed = run_sync(run_closed(target, args.closed_loop, args.duration))
        print(f"  -> {report.one_line(closed)}", flush=True)
        sweep = Sweep(slo, [closed])
    elif args.search is not None:
        sweep = search(run_at, slo, args.search, args.max_rate)
    else:
        sweep = fixed_rates(run_at, rates, slo)

    meta = {
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "target": target.name,
        "url": args.triton or args.url,
        "mode": CLOSED_LOOP if args.closed_loop is not None else f"open-loop {args.arrival}",
        "corpus": corpus.summary(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "slo_p99_ms": args.slo,
        "command": "python -m loadtest " + shlex.join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    capacity = sweep.capacity if args.slo is not None else None
    out = {
        **meta,
        "capacity_rps_at_slo": capacity,
        "capacity": sweep.describe(),
        "runs": [r.to_dict() for r in sweep.results],
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(report.loadtest_markdown(meta, sweep))
    open_runs = [r for r in sweep.results if r.mode != CLOSED_LOOP and "p99" in r.latency_ms]
    if open_runs:
        points = [(r.rate, r.latency_ms["p99"], r.valid) for r in open_runs]
        plots.p99_vs_rate(
            {target.name: points},
            args.slo,
            args.out / f"{args.name}-p99.png",
            f"p99 vs offered load: {target.name}",
        )
    last = sweep.results[-1]
    plots.latency_over_time(
        last.timeline,
        args.out / f"{args.name}-timeline.png",
        f"{target.name}, {last.label}, {last.rate:g} req/s",
    )
    if args.slo is None:
        print(f"wrote {args.out / args.name}.json, .md and plots", flush=True)
        return 0
    status = exit_status(sweep, args.search is not None)
    print(
        f"capacity at p99 <= {args.slo:g} ms: {sweep.describe()}; exit {status}; "
        f"wrote {args.out / args.name}.json, .md and plots",
        flush=True,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
