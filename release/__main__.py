"""make publish / make rollback / make versions: python -m release {publish,rollback,status}."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from release.served import ReleaseError
from release.swap import DEFAULT_DRAIN_S, Triton, publish, rollback, status


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m release", description=__doc__)
    parser.add_argument("command", choices=("publish", "rollback", "status"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the served repository (holds cpu/, gpu/, model.json)")  # fmt: skip
    parser.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                        help="what Triton serves: cpu (make serve), gpu (compose)")  # fmt: skip
    parser.add_argument("--from", dest="build", type=Path,
                        help="publish: the new build (make repo REPO=this)")  # fmt: skip
    parser.add_argument("--to", type=int, help="rollback: this version (default: the one before)")
    parser.add_argument("--triton", default=os.environ.get("TRITON_URL", "127.0.0.1:8001"),
                        help="Triton's gRPC address (TRITON_URL); several: a,b")  # fmt: skip
    parser.add_argument("--every-address", action="store_true",
                        help="each --triton host as every address it resolves to: a Kubernetes "
                        "headless Service, one Triton pod each")  # fmt: skip
    parser.add_argument("--drain-s", type=float, default=DEFAULT_DRAIN_S,
                        help="seconds both versions stay loaded once the new one is named: at "
                        "least the gateways' REQUEST_TIMEOUT_S + 2 s")  # fmt: skip
    parser.add_argument("--keep", type=int, default=3, help="publish: versions kept on disk")
    parser.add_argument("--poll", action="store_true",
                        help="Triton polls its repository (--model-control-mode=poll): write the "
                        "configs and wait for it, no load requests")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.monotonic()

    def say(line: str) -> None:  # each step as it ends (a 224-px model loads for ~20 s per step)
        print(f"[release {time.monotonic() - started:5.1f} s] {line}", flush=True)

    try:
        if args.command == "status":
            for line in status(args.repository, args.target):
                print(line)
            return 0
        triton = Triton(args.triton, poll=args.poll, every_address=args.every_address)
        if args.command == "publish":
            if args.build is None:
                raise ReleaseError("publish needs --from BUILD (a repository made by make repo)")
            version = publish(
                args.repository, args.build, args.target, triton, args.drain_s, args.keep, say
            )
            say(f"published: version {version} served")
        else:
            version = rollback(args.repository, args.target, triton, args.to, args.drain_s, say)
            say(f"rolled back: version {version} served")
    except ReleaseError as exc:
        print(f"[release] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
