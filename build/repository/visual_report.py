"""build_report.html: the build report as pictures, one self-contained file beside
build_report.json (PNG images embedded as data URIs; nothing fetched when it is opened).

* Accuracy and top-1 agreement with fp32, per precision and runtime, as bar charts (plus the
  explain graphs' heatmap correlation with fp32).
* A grid of sample images with their fp32, fp16 and int8 heatmaps side by side (mean fusion,
  discard ratio 0, each variant run as the cpu target serves it), so a user sees what quantization
  did to the explanations.

Usage: python -m build.repository.visual_report [--repository model_repository]
(make repo writes it too)
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from build.repository import runtimes
from build.repository.writer import CPU_PRECISION_HINT, PRECISIONS, TASKS, model_name, onnx_path

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)
SAMPLES = 6
REPORT_NAME = "build_report.html"
RUNTIMES = ("onnxruntime", "openvino")


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar_panel(ax: Axes, variants: dict, task: str, key: str, title: str) -> None:
    precisions = [p for p in PRECISIONS if p in variants]
    width = 0.8 / len(RUNTIMES)
    lows = []
    for i, runtime in enumerate(RUNTIMES):
        values = []
        for p in precisions:
            value = variants[p][runtime][task].get(key)
            values.append(value["mean"] if isinstance(value, dict) else value)
        x = np.arange(len(precisions)) + (i - (len(RUNTIMES) - 1) / 2) * width
        heights = [100 * v if v is not None else 0 for v in values]
        bars = ax.bar(x, heights, width, label=runtime)
        for bar, v in zip(bars, values, strict=True):
            text = f"{100 * v:.2f}" if v is not None else "n/a"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, rotation=90,
                        xytext=(0, 2), textcoords="offset points")  # fmt: skip
        lows += [h for h in heights if h > 0]
    ax.set_xticks(np.arange(len(precisions)), precisions)
    # Zoomed so that a 0.5-point drop is visible; the numbers on the bars are the exact values.
    ax.set_ylim(max(0.0, min(lows, default=0) - 2.0), 101.0)  # headroom for the labels
    ax.set_yticks([t for t in ax.get_yticks() if t <= 100])
    ax.set_title(title, fontsize=10)


def accuracy_chart(report: dict) -> str:
    import matplotlib.pyplot as plt

    variants = report["variants"]
    labelled = report["data"]["evaluation"]["labelled"]
    panels = [("classify", "top1_agreement_vs_fp32", "top-1 agreement with fp32 (%)")]
    if labelled:
        panels.insert(0, ("classify", "accuracy", "held-out top-1 accuracy (%)"))
    panels.append(("explain", "heatmap_correlation_vs_fp32", "heatmap correlation with fp32 x100"))
    panels.append(  # the attribution gate's measure (build/checks/gates.py)
        ("attribution", "map_correlation_vs_fp32", "attribution map correlation with fp32 x100")
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), layout="constrained")
    for ax, (task, key, title) in zip(np.atleast_1d(axes), panels, strict=True):
        _bar_panel(ax, variants, task, key, title)
    handles, names = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(RUNTIMES), fontsize=9)
    images = report["data"]["evaluation"]["images"]
    fig.suptitle(f"{report['model']['name']}: {images} evaluation images", fontsize=11)
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def sample_heatmaps(repository: Path, images: np.ndarray, precisions: tuple[str, ...]) -> dict:
    """Mean-fusion rollout of each sample for every precision, on OpenVINO as served."""
    maps, top1 = {}, {}
    for p in precisions:
        runner = runtimes.create_runner(
            "openvino", str(onnx_path(repository, "explain", p)), 0, CPU_PRECISION_HINT[p], 8
        )
        out = runner.run(images)
        maps[p], top1[p] = out["rollout_mean"], out["logits"].argmax(1)
    return {"maps": maps, "top1": top1}


def heatmap_grid(images: np.ndarray, result: dict, labels: list[str]) -> str:
    import matplotlib.pyplot as plt

    precisions = list(result["maps"])
    fig, axes = plt.subplots(
        len(images), 1 + len(precisions), figsize=(1.9 * (1 + len(precisions)), 1.9 * len(images))
    )
    axes = np.atleast_2d(axes)
    for row, image in enumerate(images):
        rgb = image.transpose(1, 2, 0)
        axes[row, 0].imshow(rgb)
        axes[row, 0].set_title("input" if row == 0 else "", fontsize=9)
        for col, p in enumerate(precisions, start=1):
            heat = result["maps"][p][row]
            ax = axes[row, col]
            ax.imshow(rgb)
            h, w = rgb.shape[:2]
            ax.imshow(
                heat / heat.max() if heat.max() > 0 else heat,
                cmap="jet",
                alpha=0.5,
                extent=(-0.5, w - 0.5, h - 0.5, -0.5),  # the image's own pixel extent
                interpolation="bilinear",
            )
            title = labels[result["top1"][p][row]]
            if p != precisions[0]:  # how far this variant's map is from fp32's
                r = np.corrcoef(heat.ravel(), result["maps"][precisions[0]][row].ravel())[0, 1]
                title += f"  r={r:.4f}"
            ax.set_title(f"{p}: {title}" if row == 0 else title, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def _variant_table(report: dict) -> str:
    rows = []
    for p, per_runtime in report["variants"].items():
        for runtime, entry in per_runtime.items():
            c, e = entry["classify"], entry["explain"]
            acc = f"{100 * c['accuracy']:.2f}%" if "accuracy" in c else "n/a (unlabelled)"
            corr = e["heatmap_correlation_vs_fp32"]
            names = ", ".join(model_name(t, p) for t in TASKS)
            rows.append(
                f"<tr><td>{p}</td><td>{runtime}</td><td>{names}</td><td>{acc}</td>"
                f"<td>{100 * c['top1_agreement_vs_fp32']:.2f}%</td>"
                f"<td>{corr['mean']:.4f} (min {corr['min']:.4f})</td></tr>"
            )
    head = (
        "<tr><th>precision</th><th>runtime</th><th>models</th><th>accuracy</th>"
        "<th>top-1 agreement with fp32</th><th>heatmap correlation with fp32</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def render(report: dict, chart_png: str, grid_png: str | None) -> str:
    gates = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(g['status'])} "
        f"({html.escape(g['detail'])})</li>"
        for name, g in report.get("gates", {}).items()
    )
    grid = (
        "<h2>Heatmaps per precision</h2><p>Mean head fusion, discard ratio 0, OpenVINO as the "
        "cpu target serves each variant; titles give each variant's top-1 class and r, the "
        "correlation of its map with fp32's.</p>"
        f'<img alt="sample heatmaps per precision" src="data:image/png;base64,{grid_png}">'
        if grid_png
        else ""
    )
    model = report["model"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Build report: {html.escape(model["name"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 70rem; }}
img {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }}
td, th {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }}
</style></head><body>
<h1>Build report: {html.escape(model["name"])}</h1>
<p>Origin {html.escape(model["origin"])}, built {html.escape(report["built_at"])}; every number
below is in build_report.json beside this file.</p>
<h2>Accuracy per precision and runtime</h2>
<img alt="accuracy and agreement per precision and runtime" src="data:image/png;base64,{chart_png}">
{_variant_table(report)}
<h2>Gates</h2><ul>{gates}</ul>
{grid}
</body></html>
"""


def write(repository: Path, report: dict, samples: np.ndarray, labels: list[str]) -> Path:
    """Render and write build_report.html (atomically) beside build_report.json."""
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    precisions = tuple(p for p in PRECISIONS if p in report["variants"])
    chart = accuracy_chart(report)
    grid = heatmap_grid(samples, sample_heatmaps(repository, samples, precisions), labels)
    path = repository / REPORT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render(report, chart, grid))
    tmp.replace(path)
    log.info("visual report: %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Re-render the visual report of an existing repository (its evaluation samples)."""
    from build.contract import ModelContract
    from build.model.source import digits_stand_in

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report = json.loads((args.repository / "build_report.json").read_text())
    contract = ModelContract.read(args.repository / "model.json")
    samples = digits_stand_in(contract.preprocessing, SAMPLES).images
    write(args.repository, report, samples, contract.labels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
