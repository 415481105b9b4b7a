"""API fuzzing: schemathesis (fuzz/schemathesis.toml, all checks, positive and negative) against a
live gateway with a real Triton behind it.

  python -m fuzz.api                         # starts Triton + gateway on the default repository
  python -m fuzz.api --max-time 600          # fuzz for longer (default 120 s, > 1,000 cases)
  python -m fuzz.api --url http://host:8080  # against a gateway that is already running

Writes <out>/report.json (schemathesis's run report) and <out>/summary.json (cases, failures,
seconds); exits non-zero on any failure or when fewer cases than --min-cases ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "fuzz" / "schemathesis.toml"


@dataclass
class Summary:
    cases: int
    failures: int
    errors: int
    seconds: float
    exit_code: int
    command: list[str]


def count_cases(report: dict) -> tuple[int, int, int]:
    """(cases, failures, errors) from schemathesis's JSON run report."""
    cases = int(report["test_cases"]["generated"])
    failures = sum(int(f.get("count", 1)) for f in report.get("failures", []))
    return cases, failures, len(report.get("errors", []))


def run_schemathesis(
    base_url: str,
    out: Path,
    max_examples: int | None = None,
    max_time_s: int | None = None,
    seed: int | None = None,
    timeout_s: float | None = None,
) -> Summary:
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
        f"{base_url}/openapi.json", "--report", "json,junit",
        "--report-json-path", str(report), "--report-junit-path", str(out / "junit.xml"),
        "--no-color",
    ]  # fmt: skip
    if max_examples:
        command += ["--max-examples", str(max_examples)]
    if max_time_s:
        command += ["--max-time", str(max_time_s)]
    if seed is not None:
        command += ["--seed", str(seed)]
    start = time.monotonic()
    with (out / "schemathesis.log").open("w") as log:
        env = dict(os.environ, PYTHONPATH=str(ROOT))  # the hooks module: fuzz.api_hooks
        try:
            returncode = subprocess.run(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                check=False, timeout=timeout_s,
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            returncode = -1
            log.write(f"\nstopped: the run took more than {timeout_s} s\n")
    seconds = round(time.monotonic() - start, 1)
    cases, failures, errors = (
        count_cases(json.loads(report.read_text())) if report.is_file() else (0, 0, 0)
    )
    summary = Summary(cases, failures, errors, seconds, returncode, command)
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="a running gateway (default: start Triton + gateway here)")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--max-examples", type=int, default=150, help="per operation and phase")
    parser.add_argument(
        "--max-time", type=int, default=120, help="seconds: fuzzing repeats until they are spent"
    )
    parser.add_argument("--min-cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / ".run" / "fuzz-api")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.url or start_stack(stack, args.repository, args.out)
        print(f"schemathesis against {url} (log: {args.out / 'schemathesis.log'})", flush=True)
        summary = run_schemathesis(url, args.out, args.max_examples, args.max_time, args.seed)
    print(json.dumps(asdict(summary) | {"command": " ".join(summary.command)}, indent=2))
    if summary.exit_code != 0 or summary.failures or summary.errors:
        print(f"FAILED: see {args.out / 'schemathesis.log'}", file=sys.stderr)
        return 1
    if summary.cases < args.min_cases:
        print(f"only {summary.cases} cases ran (< {args.min_cases})", file=sys.stderr)
        return 1
    return 0


def start_stack(stack: ExitStack, repository: Path, out: Path) -> str:
    from local_triton.gateway import local_stack

    return local_stack(stack, repository, out)[1].url


if __name__ == "__main__":
    sys.exit(main())
