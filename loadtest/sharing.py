"""make bench-sharing: does /classify keep its p99 while /explain bursts? Triton's rate limiter
off, with priorities alone, and as served (build/repository/writer.py,
local_triton.launcher.RateLimit), on one machine, interleaved (off, priority, on, then on, priority,
off, ...), with the project's open-loop generator:

  alone   /classify at --classify-rate for --seconds
  burst   the same /classify load while /explain arrives at --explain-rate (at or past what the
          machine can serve) for the same seconds

Arms: off (Triton's default: every instance runs as soon as it has work), priority (the configs'
priorities over a shared pool of execution slots, no explain slot held back), on (what the
launcher starts: the heavy models never hold the last slot), nice (off, explain's python stubs
at nice +19: what the OS scheduler can do on a cpu host).

Through the gateway (what users see) and/or straight to Triton over gRPC (what Triton's
scheduling alone changes). Triton loads only the two measured models; its response cache is off
in every arm (the corpus repeats its images, so hits would measure the cache, not the sharing).
Writes <out>/<prefix>-<model>.json and .md and a PNG of p99 per arm and round.

  python -m loadtest.sharing [--repository model_repository] [--precision fp32]
      [--via gateway,triton] [--arms off,priority,on] [--classify-rate 20] [--explain-rate 20]
      [--triton-classify-rate 50] [--triton-explain-rate 200] [--seconds 15] [--rounds 2]
      [--out docs/benchmarks]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from loadtest import bench_report, processes
from loadtest import corpus as corpora
from loadtest.openloop import RunResult, Target, run, run_sync
from loadtest.report import one_line
from loadtest.targets import Body, HttpTarget, TritonTarget
from local_triton.launcher import LocalTriton, Ports, RateLimit, TritonLaunchError
from service.model_info import MetadataError, ModelMetadata

ARMS = ("off", "priority", "on", "nice")  # Triton's rate limiter; see the module's docstring
VIAS = ("gateway", "triton")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--precision", default="fp32")
    p.add_argument("--via", default="gateway,triton", help="comma list: gateway, triton")
    p.add_argument("--classify-rate", type=float, default=20.0, help="req/s via the gateway")
    p.add_argument("--explain-rate", type=float, default=20.0, help="burst req/s, gateway")
    p.add_argument("--triton-classify-rate", type=float, default=50.0, help="req/s, gRPC")
    p.add_argument("--triton-explain-rate", type=float, default=200.0, help="burst req/s, gRPC")
    p.add_argument("--seconds", type=float, default=15.0, help="per phase")
    p.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds per via")
    p.add_argument("--rounds", type=int, default=2, help="each round runs both arms")
    p.add_argument("--arms", default="off,priority,on", help="comma list: " + ", ".join(ARMS))
    p.add_argument("--arrival", choices=["poisson", "constant"], default="poisson")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    p.add_argument("--prefix", default="sharing")
    p.add_argument("--name", default="", help="model name in the file names (default: its own)")
    p.add_argument("--label", default="", help="a caveat printed at the top of the report")
    args = p.parse_args(argv)
    args.via = [v for v in args.via.split(",") if v]
    args.arms = [v for v in args.arms.split(",") if v]
    if unknown := set(args.via) - set(VIAS):
        p.error(f"unknown --via {sorted(unknown)}; choose from {', '.join(VIAS)}")
    if unknown := set(args.arms) - set(ARMS):
        p.error(f"unknown --arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds and --seconds must be positive")
    return args


def subset_repository(repository: Path, names: list[str], dest: Path) -> Path:
    """dest/cpu with links to the measured models' folders, and model.json (for the gateway)."""
    (dest / "cpu").mkdir(parents=True)
    for name in names:
        source = repository / "cpu" / name
        if not (source / "config.pbtxt").is_file():
            raise ValueError(f"{source} is not a served model")
        (dest / "cpu" / name).symlink_to(source.resolve())
    (dest / "model.json").symlink_to((repository / "model.json").resolve())
    return dest


def start_triton(repository: Path, arm: str, log: IO[str]) -> LocalTriton:
    """A ready Triton with the rate limiter as the arm says and no response cache, at nice +10
    (processes.SERVER_NICENESS: the generator stands in for remote clients)."""
    ports = Ports.free()
    extra: tuple[str, ...] = ()
    if arm == "priority":
        limit = RateLimit.for_repository(repository / "cpu")
        if limit is None:
            raise ValueError(f"{repository / 'cpu'}: no model config names a rate-limiter resource")
        extra = tuple(limit.uncapped().flags())
    triton = LocalTriton(
        repository / "cpu",
        ports,
        log=log,
        response_cache=None,
        rate_limit=arm == "on",
        extra_args=extra,
    )
    triton.start(ready_timeout_s=900)
    assert triton.process is not None
    processes.lower_priority(triton.process.pid, processes.SERVER_NICENESS)
    if arm == "nice":
        renice_stubs(triton.process.pid, "/vit_explain_", 19)
    return triton


def renice_stubs(pid: int, marker: str, niceness: int) -> None:
    """Renice every thread of the python-backend stubs this Triton (pid) started whose command
    line names `marker`; other processes on the machine are left alone."""
    import contextlib
    import os

    def parent(entry: Path) -> int:
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            if marker in cmd and "triton_python_backend_stub" in cmd and parent(entry) == pid:
                for task in (entry / "task").iterdir():
                    os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)


def stats_of(triton: LocalTriton, names: list[str]) -> dict[str, dict[str, float]]:
    return {name: processes.triton_model_stats(triton.ports.http, name) for name in names}


async def together(
    classify: Target, c_rate: float, explain: Target, e_rate: float, seconds: float, arrival: str
) -> tuple[RunResult, RunResult]:
    """Both open loops in one event loop, starting together (different seeds)."""
    c, e = await asyncio.gather(
        run(classify, c_rate, seconds, arrival, progress=False, seed=1),
        run(explain, e_rate, seconds, arrival, progress=False, seed=2),
    )
    return c, e


def summary(r: RunResult) -> dict:
    return {
        "rate": r.rate,
        "sent": r.sent,
        "errors": r.errors,
        "statuses": r.statuses,
        "valid": r.valid,
        "late_fraction": r.late_fraction,
        "latency_ms": r.latency_ms,
        "achieved_rps": r.achieved_rps,
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.metadata = ModelMetadata.load(args.repository / "model.json")
        self.spec = self.metadata.spec
        self.corpus = corpora.default_corpus()
        self.bodies = [Body(p.data, p.content_type) for p in self.corpus.photos]
        self.tensors = corpora.tensors(self.corpus, self.spec)
        self.names = [f"vit_{task}_{args.precision}" for task in ("classify", "explain")]
        self.runs: list[dict] = []

    def targets(self, via: str, triton: LocalTriton, gateway_url: str) -> tuple[Target, Target]:
        if via == "triton":
            grpc = f"127.0.0.1:{triton.ports.grpc}"
            classify, explain = (
                TritonTarget(f"triton {name}", grpc, name, self.tensors, outputs=())
                for name in self.names
            )
            return classify, explain
        params = {"precision": self.args.precision}
        return (
            HttpTarget("/classify", gateway_url, "/classify", self.bodies, params),
            HttpTarget("/explain", gateway_url, "/explain", self.bodies, params),
        )

    def rates(self, via: str) -> tuple[float, float]:
        a = self.args
        if via == "triton":
            return a.triton_classify_rate, a.triton_explain_rate
        return a.classify_rate, a.explain_rate

    def arm(self, round_index: int, arm: str, repository: Path, logs: Path) -> None:
        a = self.args
        print(f"\n== round {round_index + 1}, rate limiter {arm}", flush=True)
        with (logs / f"triton-{round_index}-{arm}.log").open("w") as log:
            triton = start_triton(repository, arm, log)
            gateway = None
            try:
                if "gateway" in a.via:
                    gateway_log = (logs / f"gateway-{round_index}-{arm}.log").open("w")
                    gateway = processes.gateway(triton.ports.grpc, repository, gateway_log)
                for via in a.via:
                    self.phases(round_index, arm, via, triton, gateway.url if gateway else "")
            finally:
                if gateway is not None:
                    gateway.stop()
                triton.stop()

    def phases(
        self, round_index: int, arm: str, via: str, triton: LocalTriton, gateway_url: str
    ) -> None:
        a = self.args
        classify, explain = self.targets(via, triton, gateway_url)
        c_rate, e_rate = self.rates(via)
        run_sync(run(classify, c_rate, a.warmup, a.arrival, progress=False))
        run_sync(run(explain, min(e_rate, 4 * c_rate), a.warmup, a.arrival, progress=False))
        load_alone = bench_report.load_average()
        alone = run_sync(run(classify, c_rate, a.seconds, a.arrival, progress=False, seed=1))
        print(f"  {via} alone: {one_line(alone)}", flush=True)
        load_burst = bench_report.load_average()
        before = stats_of(triton, self.names)
        with_burst, burst = run_sync(
            together(classify, c_rate, explain, e_rate, a.seconds, a.arrival)
        )
        after = stats_of(triton, self.names)
        print(f"  {via} classify during the burst: {one_line(with_burst)}", flush=True)
        print(f"  {via} explain burst: {one_line(burst)}", flush=True)
        self.runs.append(
            {
                "round": round_index + 1,
                "rate_limiter": arm,
                "via": via,
                "classify_rate": c_rate,
                "explain_rate": e_rate,
                "load_average_alone": load_alone,
                "load_average_burst": load_burst,
                "classify_alone": summary(alone),
                "classify_with_burst": summary(with_burst),
                "explain_burst": summary(burst),
                "triton_during_burst": {
                    name: processes.per_request(before[name], after[name]) for name in self.names
                },
            }
        )

    def run(self) -> None:
        a = self.args
        with tempfile.TemporaryDirectory(prefix="bench-sharing-") as tmp:
            repository = subset_repository(a.repository, self.names, Path(tmp) / "repo")
            logs = Path(tmp) / "logs"
            logs.mkdir()
            try:
                for index in range(a.rounds):
                    order = a.arms if index % 2 == 0 else a.arms[::-1]
                    for arm in order:
                        self.arm(index, arm, repository, logs)
            except BaseException:
                kept = Path(tempfile.mkdtemp(prefix="bench-sharing-logs-"))
                for path in logs.iterdir():
                    (kept / path.name).write_bytes(path.read_bytes())
                print(f"server logs kept in {kept}", file=sys.stderr)
                raise


def p99(run: dict, phase: str) -> float | None:
    return run[phase]["latency_ms"].get("p99")


def medians(runs: list[dict]) -> list[dict]:
    """Per via and arm: median over the rounds of /classify's p99 alone and during the burst."""
    rows = []
    for via in dict.fromkeys(r["via"] for r in runs):
        for arm in ARMS:
            chosen = [r for r in runs if r["via"] == via and r["rate_limiter"] == arm]
            if not chosen:
                continue

            def med(phase: str, key: str = "p99", chosen: list[dict] = chosen) -> float | None:
                values = [r[phase]["latency_ms"].get(key) for r in chosen]
                values = [v for v in values if v is not None]
                return round(statistics.median(values), 2) if values else None

            alone, burst = med("classify_alone"), med("classify_with_burst")
            rows.append(
                {
                    "via": via,
                    "rate_limiter": arm,
                    "rounds": len(chosen),
                    "classify_p99_alone_ms": alone,
                    "classify_p99_with_burst_ms": burst,
                    "classify_p99_ratio": round(burst / alone, 2) if alone and burst else None,
                    "classify_p50_with_burst_ms": med("classify_with_burst", "p50"),
                    "explain_p99_ms": med("explain_burst"),
                    "explain_errors": sum(r["explain_burst"]["errors"] for r in chosen),
                    "explain_sent": sum(r["explain_burst"]["sent"] for r in chosen),
                    "all_valid": all(
                        r[phase]["valid"]
                        for r in chosen
                        for phase in ("classify_alone", "classify_with_burst", "explain_burst")
                    ),
                }
            )
    return rows


def markdown(result: dict) -> str:
    m, a = result["machine"], result["args"]
    lines = [
        "# Sharing one machine: /classify p99 under an /explain burst, Triton's rate limiter "
        f"off / priorities alone / on ({result['model']})",
        "",
    ]
    if result["label"]:
        lines += [f"**{result['label']}**", ""]
    lines += [
        f"{result['measured_at']}, {result['wall_s']} s; {m['cpu']}, {m['cores_usable']} usable "
        f"cores; load average {m['load_average_before']} before, {m['load_average_after']} after "
        "(other processes share these cores: compare arms within a round).",
        "",
        f"Command: `{result['command']}`  ",
        f"Method: {result['method']}",
        "",
        "## Median over the rounds",
        "",
        "| via | rate limiter | rounds | /classify p99 alone ms | p99 with the burst ms | x "
        "| p50 with the burst ms | explain p99 ms | explain errors | all runs valid |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["medians"]:
        lines.append(
            f"| {row['via']} | {row['rate_limiter']} | {row['rounds']} "
            f"| {row['classify_p99_alone_ms']} | {row['classify_p99_with_burst_ms']} "
            f"| {row['classify_p99_ratio']} | {row['classify_p50_with_burst_ms']} "
            f"| {row['explain_p99_ms']} | {row['explain_errors']}/{row['explain_sent']} "
            f"| {'yes' if row['all_valid'] else 'NO'} |"
        )
    lines += [
        "",
        "## Every run, in the order measured",
        "",
        "| round | rate limiter | via | load avg (1 min) | /classify req/s | p50 / p99 alone ms "
        "| p50 / p99 with burst ms | /explain req/s | explain p50 / p99 ms | explain errors "
        "| Triton queue ms/req classify, explain | valid |",
        "|---:|---|---|---:|---:|---|---|---:|---|---:|---|---|",
    ]
    for r in result["runs"]:
        alone, burst, ex = r["classify_alone"], r["classify_with_burst"], r["explain_burst"]
        queue = [
            (r["triton_during_burst"][n] or {}).get("queue_ms") for n in r["triton_during_burst"]
        ]
        valid = all(x["valid"] for x in (alone, burst, ex))
        lines.append(
            f"| {r['round']} | {r['rate_limiter']} | {r['via']} | {r['load_average_burst'][0]} "
            f"| {r['classify_rate']:g} | {alone['latency_ms'].get('p50')} / "
            f"{alone['latency_ms'].get('p99')} | {burst['latency_ms'].get('p50')} / "
            f"{burst['latency_ms'].get('p99')} | {r['explain_rate']:g} "
            f"| {ex['latency_ms'].get('p50')} / {ex['latency_ms'].get('p99')} "
            f"| {ex['errors']}/{ex['sent']} {ex['statuses']} "
            f"| {', '.join(str(q) for q in queue)} | {'yes' if valid else 'NO'} |"
        )
    lines += [
        "",
        f"Rates: via the gateway /classify {a['classify_rate']:g} req/s, /explain burst "
        f"{a['explain_rate']:g} req/s; straight to Triton (gRPC, preprocessed tensors) "
        f"{a['triton_classify_rate']:g} and {a['triton_explain_rate']:g} req/s; "
        f"{a['seconds']:g} s per phase after {a['warmup']:g} s of warm-up per via. Triton queue: "
        "its statistics API over the burst phase, mean per request (the rate limiter's wait for "
        "an execution slot counts as queue time).",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vias = list(dict.fromkeys(r["via"] for r in result["runs"]))
    per_via = max(sum(r["via"] == via for r in result["runs"]) for via in vias)
    width = max(5.5, 0.75 * per_via)
    fig, axes = plt.subplots(1, len(vias), figsize=(width * len(vias), 4.6), dpi=110, squeeze=False)
    for ax, via in zip(axes[0], vias, strict=True):
        runs = [r for r in result["runs"] if r["via"] == via]
        labels = [f"r{r['round']} {r['rate_limiter']}" for r in runs]
        x = range(len(runs))
        ax.bar([i - 0.2 for i in x], [p99(r, "classify_alone") or 0 for r in runs], 0.4,
               label="/classify alone")  # fmt: skip
        ax.bar([i + 0.2 for i in x], [p99(r, "classify_with_burst") or 0 for r in runs], 0.4,
               label="/classify during the /explain burst")  # fmt: skip
        ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=8)
        ax.set(ylabel="/classify p99 (ms)", title=f"via {via}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"rate limiter off / priority alone / on: {result['model']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m loadtest.sharing " + shlex.join(sys.argv[1:] if argv is None else argv)
    started, load_before = time.time(), bench_report.load_average()
    try:
        bench = Bench(args)
        bench.run()
    except (OSError, ValueError, MetadataError, TritonLaunchError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = args.name or bench.metadata.model_name
    result = {
        "kind": "bench-sharing",
        "label": args.label,
        "model": model,
        "repository": str(args.repository),
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1),
        "command": command,
        "machine": bench_report.machine(load_before),
        "versions": bench_report.versions(),
        "method": "open loop, "
        f"{args.arrival} arrivals, latency from the scheduled send time (a run is invalid when "
        "> 1% of sends left > 10 ms late); Triton and the gateway at nice "
        f"+{processes.SERVER_NICENESS}, restarted for every arm; rounds alternate which arm "
        "goes first; Triton's response cache off",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "corpus": bench.corpus.summary(),
        "medians": medians(bench.runs),
        "runs": bench.runs,
    }
    stem = args.out / f"{args.prefix}-{bench_report.slug(model)}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md and .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
