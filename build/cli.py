"""make repo: build a verified Triton model repository from a timm ViT.

  python -m build.cli                                   # offline default: digits ViT trained here
  python -m build.cli --model vit_base_patch16_224.augreg2_in21k_ft_in1k --calib-dir imgs/
  python -m build.cli --model vit_base_patch16_224 --random-weights   # offline, no hub
  python -m build.cli --model deit_small_patch16_224 --checkpoint ckpt.pth

The build writes into a new sibling directory (<out>.staging-<pid>) and swaps it in only after
every check and gate passed: a failed, refused or killed build leaves <out> byte-identical (a
refused one is kept as <out>.rejected for inspection).

Exit codes: 0 built; 2 bad arguments, source or environment; 3 a check failed or a variant was
refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from build import pipeline
from build.model import source
from build.precision.cpu import CALIBRATION_METHODS
from build.precision.modelopt_env import ModelOptimizerMissing
from build.repository.dali_pipeline import DaliMissing
from build.repository.writer import PREPROCESS
from build.tasks import PRECISIONS

log = logging.getLogger("build")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="make repo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default=source.OFFLINE_DEFAULT,
        help=f"timm model name, or the offline default {source.OFFLINE_DEFAULT!r}",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="timm model without pretrained weights (offline)",
    )
    p.add_argument("--checkpoint", type=Path, help="local checkpoint for the timm architecture")
    p.add_argument("--num-classes", type=int, help="classifier size when it differs from timm's")
    p.add_argument("--labels", type=Path, help="text file, one label per line")
    p.add_argument(
        "--calib-dir",
        type=Path,
        help=f"INT8 calibration images (>= {pipeline.MIN_CALIBRATION_IMAGES})",
    )
    p.add_argument(
        "--calib-limit",
        type=int,
        default=pipeline.CALIB_LIMIT,
        help="calibrate on a seeded random sample of at most this many (default %(default)s)",
    )
    p.add_argument(
        "--eval-dir",
        type=Path,
        help="labelled held-out images: <class>/<image>, class = index, label or ImageNet synset",
    )
    p.add_argument(
        "--eval-limit",
        type=int,
        default=pipeline.EVAL_LIMIT,
        help="evaluate on a seeded random sample of at most this many (default %(default)s)",
    )
    p.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list; fp32 always")
    p.add_argument(
        "--allow-int8-drop",
        action="store_true",
        help="keep INT8 even when its top-1 drop exceeds the gate",
    )
    p.add_argument("--out", type=Path, default=Path("model_repository"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    p.add_argument(
        "--cpu-instances",
        type=int,
        default=0,
        help="Triton instances per cpu model, each on an equal share of the cores (0 = one per "
        "core: best throughput; fewer = lower latency of a lone request on many cores)",
    )
    p.add_argument(
        "--preprocess",
        choices=PREPROCESS,
        default="tensor",
        help="what the gpu models take: tensors from the gateway (default), or also JPEG bytes "
        "through DALI ensembles (<model>_jpeg), after the DALI parity gate (docs/build.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> pipeline.Options:
    return pipeline.Options(
        model=args.model,
        random_weights=args.random_weights,
        checkpoint=args.checkpoint,
        num_classes=args.num_classes,
        labels=args.labels,
        calib_dir=args.calib_dir,
        calib_limit=args.calib_limit,
        eval_dir=args.eval_dir,
        eval_limit=args.eval_limit,
        calibration_method=args.calibration_method,
        precisions=pipeline.chosen_precisions(args.precisions.split(",")),
        allow_int8_drop=args.allow_int8_drop,
        out=args.out,
        threads=args.threads,
        cpu_instances=args.cpu_instances,
        preprocess=args.preprocess,
        seed=args.seed,
    )


class _QuietQuantizer(logging.Filter):
    """ONNX Runtime's quantizer logs a pre-processing suggestion per call: noise for this recipe."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietQuantizer())
    args = parse_args(argv)
    try:
        report = pipeline.build(options(args))
    except (source.SourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ModelOptimizerMissing, DaliMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except pipeline.REFUSALS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    for line in pipeline.summary_lines(report):
        log.info("%s", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
