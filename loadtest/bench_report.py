"""The record of a `make bench-e2e` run: JSON (every run, the machine, versions, the command),
markdown (capacity at the SLO, p50/p99 at the fixed rate, ratios, CPU per request, the targets)
and two PNG plots made from the same JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest import plots, processes
from loadtest.sweep import MEASURED

if TYPE_CHECKING:
    from loadtest.bench_e2e import Bench

PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "tritonclient",
    "grpcio",
    "nvidia-pytriton",
    "openvino",
    "onnxruntime",
    "torch",
    "timm",
    "pillow",
    "numpy",
    "httpx",
    "hdrhistogram",
    "matplotlib",
)
# The targets: end-to-end capacity vs the naive server, and vs the model alone.
TARGET_VS_NAIVE = {"int8": 4.0, "fp16": 2.0, "fp32": 1.5}
TARGET_OF_ALONE = 0.75


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def slug(model: str) -> str:
    return model.replace("_", "-").replace(".", "-")


def machine(load_before: list[float], cores_usable: int | None = None) -> dict:
    """cores_usable: the process's when None (under --model-cpus this thread runs on a part)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    mem = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": cores_usable or len(os.sched_getaffinity(0)),
        "memory_gib": round(int(mem) / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def versions() -> dict:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        found["git"] = head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        found["git"] = None
    return found


def cores_per_1000(system: dict) -> dict | None:
    """Cores kept busy by 1,000 images/s through the gateway (one image per request):
    1,000/s x c core-ms = c cores. "with_triton" adds Triton's own CPU (on this CPU target: its
    python backend; a GPU host's TensorRT models spend less of it)."""
    cpu = system["cpu_ms_per_request"]
    if system["system"] not in ("stack", "floor") or "gateway" not in cpu:
        return None
    gateway = cpu["gateway"]
    return {"gateway": round(gateway, 2), "with_triton": round(gateway + cpu["triton"], 2)}


def ratio(num: dict, den: dict | None) -> dict | None:
    """num/den capacities, with whether each side is a measured value or a lower bound."""
    if den is None or not num.get("capacity_rps") or not den.get("capacity_rps"):
        return None
    exact_num, exact_den = num["bound"] == MEASURED, den["bound"] == MEASURED
    qualifier = (
        "=" if exact_num and exact_den else ">=" if exact_den else "<=" if exact_num else "?"
    )
    return {"value": round(num["capacity_rps"] / den["capacity_rps"], 2), "qualifier": qualifier}


def assemble(
    args: argparse.Namespace,
    model: str,
    repository: Path,
    bench: Bench,
    started: float,
    load_before: list[float],
) -> dict:
    naive = next((s for s in bench.systems if s["system"] == "naive"), None)
    for s in bench.systems:
        s["vs_naive"] = ratio(s, naive) if s is not naive else None
        limit = s["limit_images_per_s"]
        s["of_alone"] = round(s["capacity_rps"] / limit, 3) if limit and s["capacity_rps"] else None
        twin = next(
            (
                t
                for t in bench.systems
                if t["system"] == "triton"
                and s["system"] == "stack"
                and (t["task"], t["precision"]) == (s["task"], s["precision"])
            ),
            None,
        )
        s["vs_triton"] = ratio(s, twin)
        s["cores_per_1000_images_per_s"] = cores_per_1000(s)
    return {
        "kind": "bench-e2e",
        "label": args.label,
        "model": model,
        "repository": str(repository),
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(load_before, len(args.cpus["all"]) if args.cpus else None),
        "versions": versions(),
        "method": {
            "generator": f"open loop, {args.arrival} arrivals, latency from the scheduled send "
            "time; a run is invalid when > 1% of sends left > 10 ms late; the servers run at "
            f"nice +{processes.SERVER_NICENESS} so that the generator, standing in for remote "
            "clients, keeps its schedule (its CPU time still counts against the machine)",
            "slo_p99_ms": args.slo_p99,
            "seconds_per_rate": args.seconds,
            "warmup_s": args.warmup,
            "search": f"double from {args.start_rate:g} req/s (or a quarter of the model-alone "
            f"limit) up to {args.max_rate:g}, then {args.refine} bisection steps",
            "fixed_rate_rps": bench.fixed_rate,
            # --model-cpus: where the model ran and where the front (gateway, generator) did
            "cpus": {k: sorted(v) for k, v in args.cpus.items()} if args.cpus else None,
            "placement": bench.placement,
            "errors_allowed": "< 1% non-200 answers",
        },
        "corpus": bench.corpus.summary(),
        "model_alone": bench.alone,
        "systems": bench.systems,
    }


def system_label(system: dict) -> str:
    """The system's name, with its path where the gateway did not decode (the floor's JPEG
    bytes rows beside its tensor rows)."""
    path = system.get("path")
    return system["system"] + (f", {path}" if path not in (None, "tensors") else "")


def _row_label(system: dict, fixed: float) -> str:
    """system_label, and the system's own fixed rate where it is not the shared one."""
    rate = system["fixed"]["rate"]
    return system_label(system) + (f" (at {rate:g} req/s)" if rate != fixed else "")


def _fmt_ratio(r: dict | None) -> str:
    if r is None:
        return "-"
    return {"=": "", ">=": ">= ", "<=": "<= ", "?": "~ "}[r["qualifier"]] + f"{r['value']:g}x"


def verdict(value: float, want: float, exact: bool, lower_bound: bool) -> str:
    """met / not met, or undetermined where a bound on one side cannot decide it."""
    if exact:
        return "met" if value >= want else "not met"
    if lower_bound:
        return "met" if value >= want else "undetermined (a lower bound)"
    return "not met" if value < want else "undetermined (an upper bound)"


def targets(result: dict) -> list[str]:
    rows = []
    for s in result["systems"]:
        if s["system"] != "stack":
            continue
        want, got = TARGET_VS_NAIVE.get(s["precision"]), s["vs_naive"]
        if want and got:
            q = got["qualifier"]
            decided = (
                "undetermined" if q == "?" else verdict(got["value"], want, q == "=", q == ">=")
            )
            rows.append(
                f"| {s['task']} {s['precision']} | >= {want:g}x naive "
                f"| {_fmt_ratio(got)} | {decided} |"
            )
        if s["of_alone"] is not None:
            exact = s["bound"] == MEASURED
            decided = verdict(s["of_alone"], TARGET_OF_ALONE, exact, True)
            rows.append(
                f"| {s['task']} {s['precision']} | >= {100 * TARGET_OF_ALONE:g}% of model "
                f"alone | {_fmt_of_alone(s)} | {decided} |"
            )
    return rows


def _fmt_of_alone(s: dict) -> str:
    if s["of_alone"] is None:
        return "-"
    return ("" if s["bound"] == MEASURED else ">= ") + f"{100 * s['of_alone']:.0f}%"


def _cpu_layout(cpus: dict[str, list[int]] | None) -> list[str]:
    if not cpus:
        return ["CPUs: every process shares every CPU (the model competes with the front).", ""]
    return [
        f"CPUs (--model-cpus): the model (Triton, the model alone) on {cpus['model']}, the "
        f"gateway and the generator on {cpus['front']}, the naive server on {cpus['all']}: the "
        "front does not take the model's cores, as on a GPU host.",
        "",
    ]


def markdown(result: dict, plot_names: tuple[str, str]) -> str:
    m, method = result["machine"], result["method"]
    slo, fixed = method["slo_p99_ms"], method["fixed_rate_rps"]
    lines = [f"# End-to-end capacity side by side: {result['model']}", ""]
    if result["label"]:
        lines += [f"> **{result['label']}**", ""]
    lines += [
        f"{result['measured_at']}, {result['wall_s']} s; {m['cpu']}, {m['cores_usable']} usable "
        f"cores, {m['memory_gib']} GiB; load average {m['load_average_before']} before, "
        f"{m['load_average_after']} after (other processes on the machine share the cores).",
        "",
        f"Command: `{result['command']}`  ",
        f"Method: {method['generator']}; {method['seconds_per_rate']} s per rate; capacity search: "
        f"{method['search']}. Corpus: {result['corpus']}.",
        "",
        *_cpu_layout(method.get("cpus")),
        f"## Capacity at p99 <= {slo:g} ms, and p50/p99 at {fixed:g} req/s",
        "",
        f"| system | task | precision | capacity req/s | x naive | of model alone "
        f"| p50 ms @{fixed:g} | p99 ms @{fixed:g} | errors @{fixed:g} | server CPU-ms/req "
        "| Triton CPU-ms/req | generator CPU-ms/req |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["systems"]:
        lat, cpu = s["fixed"]["latency_ms"], s["cpu_ms_per_request"]
        server = cpu.get("gateway", cpu.get("server", "-"))
        of_alone = _fmt_of_alone(s)
        lines.append(
            f"| {_row_label(s, fixed)} | {s['task']} | {s['precision']} | {s['capacity']} "
            f"| {_fmt_ratio(s['vs_naive'])} | {of_alone} | {lat.get('p50', '-')} "
            f"| {lat.get('p99', '-')} | {s['fixed']['errors']}/{s['fixed']['sent']} | {server} "
            f"| {cpu.get('triton', '-')} | {cpu.get('generator', '-')} |"
        )
    lines += [
        "",
        "server CPU: the gateway process for `stack`, the naive server for `naive`; "
        "from /proc (user + system, the process and its children) over the fixed-rate run, "
        "divided by the requests answered.",
        "",
    ]
    floors = [s for s in result["systems"] if s["system"] == "floor"]
    if floors:
        lines += [
            "## Serving floor: the stack in front of a model that costs nothing",
            "",
            "What the cores pay per image when the model itself is free (on a GPU host it runs on "
            "the GPU): the gateway and Triton's CPU per request at the fixed rate, and the cores "
            "1,000 images/s keep busy (= core-ms per image). Capacity: this machine's cores, "
            "shared with the generator. Paths: `tensors`, the gateway decodes and resizes "
            "(JPEG_TO_TRITON=false); `jpeg bytes`, it checks the headers and sends the file to "
            "`<model>_jpeg` (the DALI ensemble's interface; nothing decodes it here).",
            "",
            "| task | precision | path | capacity req/s | measured at req/s | gateway core-ms/req "
            "| Triton core-ms/req | cores per 1,000 img/s: gateway | with Triton |",
            "|---|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for s in floors:
            cpu, cores = s["cpu_ms_per_request"], s["cores_per_1000_images_per_s"]
            lines.append(
                f"| {s['task']} | {s['precision']} | {s.get('path') or '-'} | {s['capacity']} "
                f"| {s['fixed']['rate']:g} | {cpu['gateway']} | {cpu['triton']} "
                f"| {cores['gateway']} | {cores['with_triton']} |"
            )
        lines += [
            "",
            "Triton's part here is its python backend's IPC and batching on the CPU; TensorRT "
            'models on a GPU host do not pay that IPC, so "with Triton" is an upper bound. On '
            "the `jpeg bytes` path a GPU host adds what DALI's CPU threads spend per image "
            "(header parsing, and Huffman decoding where nvJPEG's hardware decoder is not used).",
            "",
        ]
    inside = [s for s in result["systems"] if s.get("triton_per_request")]
    if inside:
        lines += [
            f"## Inside Triton at {fixed:g} req/s (its statistics API)",
            "",
            "| system | task | precision | p50 ms end to end | queue ms/req | compute ms/req "
            "| mean batch | gateway stages, mean ms |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for s in inside:
            t, g = s["triton_per_request"], s.get("gateway_stages_ms") or {}
            stages = ", ".join(f"{k} {v:g}" for k, v in g.items()) or "-"
            lines.append(
                f"| {_row_label(s, fixed)} | {s['task']} | {s['precision']} "
                f"| {s['fixed']['latency_ms'].get('p50', '-')} | {t['queue_ms']} "
                f"| {t['compute_ms']} | {t['mean_batch']} | {stages} |"
            )
        lines += [
            "",
            "compute: each request is charged its whole batch's time (input, model, "
            "output in the python backend). End to end minus queue and compute is HTTP, "
            "decode, preprocess, gRPC and the generator. Gateway stages: its own `timings_ms` "
            "(JSON) or `Server-Timing` (PNG answers), wall time inside the gateway.",
            "",
        ]
    if result["model_alone"]:
        lines += [
            "## Model alone, in-process (the limit)",
            "",
            "| model | runtime | hint | threads | images/s by batch | best |",
            "|---|---|---|---:|---|---:|",
        ]
        for a in result["model_alone"].values():
            by_batch = ", ".join(f"{b['batch']}: {b['images_per_s']:g}" for b in a["batches"])
            lines.append(
                f"| {a['model']} | {a['runtime']} | {a['precision_hint']} "
                f"| {a['threads']} | {by_batch} | {a['best_images_per_s']:g} "
                f"(batch {a['best_batch']}) |"
            )
        lines.append("")
    if rows := targets(result):
        lines += [
            "## The issue's targets",
            "",
            "| stack | target | this run | verdict |",
            "|---|---|---:|---|",
            *rows,
            "",
        ]
    lines += [
        f"![p99 against offered load]({plot_names[0]})",
        "",
        f"![latency over one run]({plot_names[1]})",
        "",
        "Every run (sweeps, fixed-rate runs, per-second timelines) is in the JSON beside "
        "this file.",
    ]
    return "\n".join(lines) + "\n"


def timeline_run(result: dict) -> tuple[str, dict]:
    """The run whose latency over time is plotted: the stack's fastest classify at capacity."""
    order = {"int8": 0, "fp16": 1, "fp32": 2}
    systems = sorted(
        result["systems"],
        key=lambda s: (
            s["system"] != "stack",
            s["task"] != "classify",
            order.get(s["precision"], 9),
        ),
    )
    s = systems[0]
    at_capacity = [r for r in s["sweep"] if r["rate"] == s["capacity_rps"]]
    chosen = at_capacity[0] if at_capacity else s["fixed"]
    return f"{s['target']} at {chosen['rate']:g} req/s ({chosen['arrival']})", chosen


def write(result: dict, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    p99_png, timeline_png = out / f"{name}-p99.png", out / f"{name}-timeline.png"
    series: dict[str, list[tuple[float, float, bool]]] = {}
    for s in result["systems"]:
        runs = [*s["sweep"], s["fixed"]]
        series[f"{system_label(s)} {s['task']} {s['precision']}"] = [
            (r["rate"], r["latency_ms"]["p99"], r["valid"]) for r in runs if r["latency_ms"]
        ]
    slo = result["method"]["slo_p99_ms"]
    if result["systems"]:
        plots.p99_vs_rate(series, slo, p99_png, f"{result['model']}: p99 vs offered load")
        title, run = timeline_run(result)
        plots.latency_over_time(run["timeline"], timeline_png, title)
    result["plots"] = {"p99_vs_rate": series}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result, (p99_png.name, timeline_png.name)))
    return [json_path, md_path, p99_png, timeline_png]
