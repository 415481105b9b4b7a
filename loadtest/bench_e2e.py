"""make bench-e2e: end-to-end capacity of this stack side by side with the alternatives, in one run
on one machine, with the project's own open-loop generator and photo corpus:

  (a) naive   FastAPI + timm eager PyTorch in-process, one image per request (loadtest/naive_server)
  (b) alone   each served model in-process at its best batch: the limit
  (c) triton  Triton directly over gRPC with preprocessed tensors: what Triton adds
  (d) stack   the gateway in front of Triton, every precision, /classify and /explain
  (e) floor   the same stack in front of a model that costs nothing (loadtest/floor.py): what the
              cores pay per image when the model runs elsewhere (a GPU), in cores per 1,000 img/s,
              /classify by both paths: the gateway decodes (tensors) or sends the JPEG bytes to a
              null <model>_jpeg (JPEG_TO_TRITON, the DALI ensembles' interface)

For each system: the capacity at a p99 SLO (doubling search, then bisection), then one run at a
fixed rate shared by all systems with every server's CPU time per request. Writes
<out>/<prefix>-<model>.json and .md plus two PNG plots per model.

  python -m loadtest.bench_e2e [--models default,vit_small_patch16_224] [--slo-p99 500]
      [--seconds 10] [--systems naive,alone,triton,stack,floor] [--precisions fp32,fp16,int8]
      [--tasks classify,explain] [--fixed-rate R] [--floor-max-rate 800] [--floor-rate R]
      [--model-cpus 0] [--out docs/benchmarks] [--label TEXT]

--model-cpus gives the model CPUs of its own (Triton and the model alone there, the gateway and
the generator on the rest), as on a GPU host; --floor-rate measures the serving floor's CPU per
request at a rate nearer a GPU host's (docs/loadtest.md).

Models other than "default" (the repository at --repository) are built once, with random weights
and no network, into .run/bench-e2e/<model> with `python -m build.cli`; when the floor is the only
system measured, only their model.json is written (.run/bench-e2e/<model>.contract: seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import IO

import numpy as np

from build.names import jpeg_model_name
from loadtest import bench_report, floor, model_alone, processes
from loadtest import corpus as corpora
from loadtest.openloop import RunResult, Target, run, run_sync
from loadtest.report import one_line
from loadtest.sweep import nice, search
from loadtest.targets import Body, HttpTarget, TritonTarget
from local_triton.launcher import LocalTriton, TritonLaunchError
from service.model_info import MetadataError, ModelMetadata

SYSTEMS = ("naive", "alone", "triton", "stack", "floor")
# How the gateway feeds Triton (recorded per gateway row): uint8 tensors it decoded and resized,
# or the upload's JPEG bytes for a DALI ensemble (service/jpeg_path.py). The floor measures both,
# each through a gateway with the setting that selects it.
TENSORS, JPEG_BYTES = "tensors", "jpeg bytes"
FLOOR_PATHS = {TENSORS: {"JPEG_TO_TRITON": "false"}, JPEG_BYTES: {"JPEG_TO_TRITON": "true"}}
BUILT_MODELS = processes.ROOT / ".run" / "bench-e2e"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default="default,vit_small_patch16_224",
        help="comma list: 'default' (--repository) and/or timm model names",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="the repository of the 'default' model",
    )
    p.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma list of " + ", ".join(SYSTEMS)
    )
    p.add_argument("--precisions", default="fp32,fp16,int8", help="comma list (those served)")
    p.add_argument("--tasks", default="classify,explain", help="comma list: classify, explain")
    p.add_argument("--slo-p99", type=float, default=500.0, help="p99 SLO in ms")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per offered rate")
    p.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds per system")
    p.add_argument("--alone-seconds", type=float, default=3.0, help="per batch size, model alone")
    p.add_argument("--start-rate", type=float, default=4.0, help="req/s where searches begin")
    p.add_argument("--max-rate", type=float, default=200.0, help="req/s where searches stop")
    p.add_argument("--refine", type=int, default=2, help="bisection steps after the doubling")
    p.add_argument(
        "--floor-max-rate",
        type=float,
        default=800.0,
        help="req/s where the floor's search stops (a model that costs nothing goes further)",
    )
    p.add_argument(
        "--fixed-rate",
        type=float,
        help="req/s for the side-by-side p50/p99 and "
        "CPU per request (default: half the naive server's capacity)",
    )
    p.add_argument(
        "--floor-rate",
        type=float,
        help="req/s of the serving floor's fixed-rate run (default: --fixed-rate): nearer a GPU "
        "host's rate, the gateway's idle CPU (event-loop timers, gRPC keepalive, the catalog "
        "refresh: a few core-ms per second) weighs less on each request",
    )
    p.add_argument("--arrival", choices=["poisson", "constant"], default="poisson")
    p.add_argument(
        "--model-cpus",
        help="CPU list (e.g. 0 or 0-3) for the model: Triton and the model alone run there, the "
        "gateway and the generator on the other CPUs (the naive server on all): the layout of a "
        "GPU host, where the model's compute does not share the front's cores. Default: all "
        "share every CPU",
    )
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    p.add_argument("--prefix", default="e2e")
    p.add_argument("--label", default="", help="a caveat printed at the top of the report")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.systems = [s for s in args.systems.split(",") if s]
    args.precisions = [s for s in args.precisions.split(",") if s]
    args.tasks = [s for s in args.tasks.split(",") if s]
    if unknown := set(args.systems) - set(SYSTEMS):
        p.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    args.cpus = None
    if args.model_cpus is not None:
        try:
            args.cpus = cpu_layout(args.model_cpus, os.sched_getaffinity(0))
        except ValueError as exc:
            p.error(f"--model-cpus {args.model_cpus!r}: {exc}")
    return args


def cpu_layout(spec: str, usable: set[int]) -> dict[str, set[int]]:
    """{"model": ..., "front": ..., "all": ...} from a CPU list like "0", "0,2" or "0-3"; the
    front gets every usable CPU the model does not."""
    model: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError("expected a CPU list such as 0 or 0-3 or 0,2")
        model |= set(range(int(first), int(last or first) + 1))
    if not model or not model < usable:
        raise ValueError(
            f"the model's CPUs must be some, not all, of the usable ones {sorted(usable)}"
        )
    return {"model": model, "front": usable - model, "all": set(usable)}


def repository_for(model: str, default: Path, floor_only: bool) -> Path:
    """The repository of `model`: --repository for "default", else its build (made once), or,
    when the floor is all that is measured and there is no build, its model.json alone."""
    if model == "default":
        return default
    folder = BUILT_MODELS / model
    if (folder / "model.json").is_file():
        return folder
    if floor_only:  # null models need names, shapes and preprocessing, not weights
        contract = BUILT_MODELS / f"{model}.contract"
        if not (contract / "model.json").is_file():
            print(f"writing {model}'s model.json (no build) into {contract} ...", flush=True)
            command = [sys.executable, "-m", "loadtest.floor", "--model", model]
            subprocess.run([*command, "--out", str(contract)], cwd=processes.ROOT, check=True)
        return contract
    print(f"building {model} (random weights, offline) into {folder} ...", flush=True)
    command = [
        sys.executable,
        "-m",
        "build.cli",
        "--model",
        model,
        "--random-weights",
        "--out",
        str(folder),
    ]
    subprocess.run(command, cwd=processes.ROOT, check=True)
    return folder


class Bench:
    """One model's side-by-side run; systems append their results to self.systems."""

    def __init__(self, args: argparse.Namespace, repository: Path, logs: Path) -> None:
        self.args, self.repository, self.logs = args, repository, logs
        self.spec = ModelMetadata.load(repository / "model.json").spec
        self.corpus = corpora.default_corpus()
        self.bodies = [Body(p.data, p.content_type) for p in self.corpus.photos]
        self.tensors = corpora.tensors(self.corpus, self.spec)
        # Those served; a repository of model.json alone (the floor's) serves all of them.
        built = (repository / "cpu").is_dir()
        self.variants = [
            (t, p)
            for t in args.tasks
            for p in args.precisions
            if not built or (repository / "cpu" / f"vit_{t}_{p}").is_dir()
        ]
        if not self.variants:
            raise ValueError(
                f"{repository / 'cpu'} serves none of tasks {args.tasks} x "
                f"precisions {args.precisions}"
            )
        self.alone: dict[str, dict] = {}
        self.placement: dict[str, list[int]] = {}  # the CPUs each part ran on, as observed
        self.systems: list[dict] = []
        self.fixed_rate: float | None = args.fixed_rate
        self.open_logs: list[IO[str]] = []

    def on(self, role: str) -> AbstractContextManager[None]:
        """The block runs (and what it starts stays) on the CPUs of `role` under --model-cpus."""
        return processes.on_cpus(self.args.cpus[role] if self.args.cpus else None)

    def placed(self, part: str, pid: int = 0) -> None:
        """Records the CPUs `part` runs on (pid 0: this thread), read from the kernel."""
        self.placement[part] = sorted(os.sched_getaffinity(pid))

    def log(self, name: str) -> IO[str]:
        handle = (self.logs / f"{name}.log").open("a")
        self.open_logs.append(handle)  # closed by close(), after the process that writes it
        return handle

    def close(self) -> None:
        for handle in self.open_logs:
            handle.close()

    def run_at(
        self, target: Target, rate: float, seconds: float, progress: bool = True
    ) -> RunResult:
        return run_sync(run(target, rate, seconds, self.args.arrival, progress=progress))

    def measure(
        self,
        system: str,
        task: str,
        precision: str,
        target: Target,
        cpu: dict[str, Callable[[], float]],
        limit: float | None,
        stats: Callable[[], dict[str, float]] | None = None,
        max_rate: float | None = None,
        path: str | None = None,
        fixed_rate: float | None = None,
    ) -> None:
        """Warm up, search the capacity, then one run at the fixed rate with CPU per request
        (and, through Triton, its queue and compute time per request and mean batch).
        path: how a gateway fed Triton (TENSORS or JPEG_BYTES; None without a gateway).
        fixed_rate: this system's fixed rate instead of the one all share."""
        a = self.args
        print(f"\n== {system} {task} {precision}: {target.name}", flush=True)
        top = max_rate or a.max_rate
        start = a.start_rate if limit is None else max(a.start_rate, min(limit / 4, top / 4))
        self.placed("generator")
        self.run_at(target, nice(start), a.warmup, progress=False)

        def probe(rate: float) -> RunResult:
            result = self.run_at(target, rate, a.seconds)
            print(f"  {one_line(result)}", flush=True)
            return result

        sweep = search(probe, a.slo_p99, start, top, a.refine)
        print(f"  capacity at p99 <= {a.slo_p99:g} ms: {sweep.describe()}", flush=True)
        if self.fixed_rate is None:  # the first system sets it: half of what it sustained
            self.fixed_rate = nice((sweep.capacity or a.start_rate) / 2)
        stages: dict[str, list[float]] = {}
        if isinstance(target, HttpTarget) and system in ("stack", "floor"):
            target = dataclasses.replace(target, stages=stages)
        before, stats_before = {name: read() for name, read in cpu.items()}, stats and stats()
        fixed = self.run_at(target, fixed_rate or self.fixed_rate, a.seconds)
        used = {name: read() - before[name] for name, read in cpu.items()}
        in_triton = processes.per_request(stats_before, stats()) if stats and stats_before else None
        print(f"  at the fixed rate: {one_line(fixed)}", flush=True)
        done = max(fixed.completed, 1)
        self.systems.append(
            {
                "system": system,
                "task": task,
                "precision": precision,
                "path": path,
                "target": target.name,
                "capacity_rps": sweep.capacity,
                "capacity": sweep.describe(),
                "bound": sweep.bound,
                "limit_images_per_s": limit,
                "sweep": [r.to_dict() for r in sweep.results],
                "fixed": fixed.to_dict(),
                "cpu_ms_per_request": {k: round(1000 * v / done, 3) for k, v in used.items()}
                | {"generator": fixed.generator_cpu_ms_per_request},
                "triton_per_request": in_triton,
                # The gateway's own timings_ms, mean per answer: where its wall time went.
                "gateway_stages_ms": {k: round(v / n, 3) for k, (v, n) in stages.items()} or None,
            }
        )

    def model_alone(self) -> None:
        images = np.stack(self.tensors)
        for task, precision in self.variants:
            served = model_alone.ServedModel.read(
                self.repository / "cpu" / f"vit_{task}_{precision}"
            )
            print(f"model alone: {served.name} ({served.runtime}) ...", flush=True)
            with self.on("model"):  # its threads (and OpenVINO's) are started in the block
                self.placed("model alone")
                self.alone[f"{task}/{precision}"] = model_alone.limit(
                    served, images, self.args.alone_seconds
                )
            print(
                f"  best {self.alone[f'{task}/{precision}']['best_images_per_s']} img/s", flush=True
            )

    def naive(self) -> None:
        with self.on("all"):
            server = processes.naive(self.repository, self.log("naive"))
        with processes.running(server):
            target = HttpTarget("naive /classify", server.url, "/classify", self.bodies)
            self.measure("naive", "classify", "fp32", target, {"server": server.cpu_seconds}, None)

    def triton_and_stack(self) -> None:
        with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
            # Only the measured variants are loaded: a folder of links to their model folders.
            subset = Path(tmp) / "cpu"
            subset.mkdir()
            for task, precision in self.variants:
                name = f"vit_{task}_{precision}"
                (subset / name).symlink_to((self.repository / "cpu" / name).resolve())
            with self.on("model"):
                triton = processes.triton(Path(tmp), self.log("triton"))
            try:
                self._triton_and_stack(triton)
            finally:
                triton.stop()

    def _triton_and_stack(self, triton: LocalTriton) -> None:
        grpc = f"127.0.0.1:{triton.ports.grpc}"
        assert triton.process is not None  # started
        pid = triton.process.pid
        self.placed("triton", pid)
        triton_cpu = {"triton": lambda: processes.cpu_seconds(pid)}

        def stats(model: str) -> Callable[[], dict[str, float]]:
            return lambda: processes.triton_model_stats(triton.ports.http, model)

        if "triton" in self.args.systems:
            for task, precision in self.variants:
                name = f"vit_{task}_{precision}"
                target: Target = TritonTarget(
                    f"triton gRPC {name}", grpc, name, self.tensors, outputs=()
                )
                limit = self.limit(task, precision)
                self.measure("triton", task, precision, target, triton_cpu, limit, stats(name))
        if "stack" not in self.args.systems:
            return
        gateway = processes.gateway(triton.ports.grpc, self.repository, self.log("gateway"))
        assert gateway.process is not None  # started
        self.placed("gateway", gateway.process.pid)
        with processes.running(gateway):
            cpu = {"gateway": gateway.cpu_seconds, **triton_cpu}
            for task, precision in self.variants:
                target = HttpTarget(
                    f"gateway /{task} {precision}",
                    gateway.url,
                    f"/{task}",
                    self.bodies,
                    {"precision": precision},
                )
                limit = self.limit(task, precision)
                name = f"vit_{task}_{precision}"
                self.measure(
                    "stack", task, precision, target, cpu, limit, stats(name), path=TENSORS
                )

    def floor(self) -> None:
        """The stack (Triton + gateway, started anew) on the null models of loadtest/floor.py,
        /classify by both of its paths: a gateway that decodes and resizes (JPEG_TO_TRITON
        off), and one that sends the JPEG bytes to the null <model>_jpeg (on), interleaved per
        variant."""
        names = [f"vit_{task}_{precision}" for task, precision in self.variants]
        with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp, ExitStack() as stack:
            repository = floor.write_repository(self.repository, Path(tmp), names)
            with self.on("model"):
                triton = processes.triton(repository, self.log("floor-triton"))
            stack.callback(triton.stop)
            grpc, http = triton.ports.grpc, triton.ports.http
            assert triton.process is not None  # started
            pid = triton.process.pid
            self.placed("triton", pid)
            gateways = {
                path: stack.enter_context(
                    processes.running(
                        processes.gateway(
                            grpc, repository, self.log(f"floor-gateway-{path}"), settings
                        )
                    )
                )
                for path, settings in FLOOR_PATHS.items()
                if path == TENSORS or "classify" in self.args.tasks
            }
            for path, gateway in gateways.items():
                assert gateway.process is not None  # started
                self.placed(f"gateway ({path})", gateway.process.pid)
            for (task, precision), name in zip(self.variants, names, strict=True):
                for path, gateway in gateways.items():
                    if path == JPEG_BYTES and task != "classify":
                        continue  # /explain decodes in the gateway whatever the setting
                    model = jpeg_model_name(name) if path == JPEG_BYTES else name
                    target = HttpTarget(
                        f"gateway /{task} {precision}, {path}, null model",
                        gateway.url,
                        f"/{task}",
                        self.bodies,
                        {"precision": precision},
                    )
                    cpu = {
                        "gateway": gateway.cpu_seconds,
                        "triton": lambda: processes.cpu_seconds(pid),
                    }

                    def stats(model: str = model) -> dict[str, float]:
                        return processes.triton_model_stats(http, model)

                    self.measure(
                        "floor", task, precision, target, cpu, None, stats,
                        max_rate=self.args.floor_max_rate, path=path,
                        fixed_rate=self.args.floor_rate,
                    )  # fmt: skip

    def limit(self, task: str, precision: str) -> float | None:
        alone = self.alone.get(f"{task}/{precision}")
        return alone["best_images_per_s"] if alone else None


def bench_model(args: argparse.Namespace, model: str) -> dict:
    with processes.on_cpus(args.cpus["all"] if args.cpus else None):  # a build uses them all
        repository = repository_for(model, args.repository, set(args.systems) <= {"floor"})
    logs = Path(tempfile.mkdtemp(prefix=f"bench-e2e-{model}-"))
    print(f"\n##### {model}: {repository} (server logs in {logs})", flush=True)
    bench = Bench(args, repository, logs)
    started, load_before = time.time(), bench_report.load_average()
    try:
        if "alone" in args.systems:
            bench.model_alone()
        if "naive" in args.systems:
            bench.naive()
        if {"triton", "stack"} & set(args.systems):
            bench.triton_and_stack()
        if "floor" in args.systems:
            bench.floor()
    finally:
        bench.close()
    return bench_report.assemble(args, model, repository, bench, started, load_before)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m loadtest.bench_e2e " + shlex.join(sys.argv[1:] if argv is None else argv)
    # The generator (this thread) and the gateways it starts run on the front's CPUs.
    with processes.on_cpus(args.cpus["front"] if args.cpus else None):
        return bench_models(args, command)


def bench_models(args: argparse.Namespace, command: str) -> int:
    for model in args.models:
        try:
            result = bench_model(args, model)
        except (
            RuntimeError,
            OSError,
            ValueError,
            MetadataError,
            TritonLaunchError,
            subprocess.CalledProcessError,
        ) as exc:
            print(f"error: {model}: {exc}", file=sys.stderr)
            return 2
        result["command"] = command
        paths = bench_report.write(result, args.out, f"{args.prefix}-{bench_report.slug(model)}")
        print(f"wrote {', '.join(str(p) for p in paths)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
