"""make bench-faithfulness: is the class-specific attribution map faithful to the model, and more
so than attention rollout? A deletion test (build/bench/deletion.py) on the offline digits model's
held-out images, writing docs/benchmarks/faithfulness.{json,md,png}.

  python -m build.bench.faithfulness [--repository model_repository] [--source auto] [--images 0]

For each held-out image the served classifier (onnx/classify_fp32.onnx, OpenVINO f32 as the cpu
target serves it) gives the top-1 and top-2 classes; each map method gives a map per target class;
the patches are masked most relevant first and the target's probability is read again by the same
classifier. Lower area under that curve = more faithful. Methods:

* attribution: Chefer et al. 2021 transformer attribution for the target class, from the served
  graph (onnx/attribution_fp32.onnx, OpenVINO f32 as the cpu target serves it) or, with --source
  reference or when no graph was built, from the plain-PyTorch reference
  (build/checks/attribution_reference.py); the JSON and the table say which.
* rollout: the served explain graph's attention rollout (mean heads, discard 0: the product's
  default; max heads with discard 0.9 as vit-explain users run it). The same map for every class.
* attribution (fp16), attribution (int8): the served lower-precision attribution graphs
  (onnx/attribution_{fp16,int8}.onnx, OpenVINO as the cpu target serves them), when built.
* random: uniform noise maps, the mean over several seeds.

Masked patches take a neutral value. The main table uses grey 128, i.e. ~0 after the model's
normalisation (mean 0.5, std 0.5): the value the digits model saw wherever its training
augmentation moved the image out of the frame (zero padding after normalisation), so masking does
not show it something new. Black (the digits' background: the stroke is erased) and a blurred copy
of the image (blur radius one patch) are reported for the top-1 class too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from build.bench import deletion, map_sources
from build.contract import ModelContract
from build.repository import runtimes
from build.repository.writer import ATTRIBUTION_CPU_RUNTIME, onnx_path

if TYPE_CHECKING:  # matplotlib is imported where the plot is drawn
    from matplotlib.figure import Figure

BASELINES = ("grey", "black", "blur")
MAIN_BASELINE = "grey"
TARGETS = ("top-1", "top-2")
ATTRIBUTION = "attribution"
ROLLOUTS = {  # method name -> (head fusion, discard ratio)
    "rollout (mean, discard 0)": ("mean", 0.0),
    "rollout (max, discard 0.9)": ("max", 0.9),
}
# The served lower-precision attribution graphs (when the repository has them): is their map as
# faithful as fp32's? Always from the served graphs, whatever --source says for fp32.
VARIANTS = {"attribution (fp16)": "fp16", "attribution (int8)": "int8"}
RANDOM = "random"
# The top-2 class deleted with the top-1 class's attribution map: if attribution is class-specific,
# the top-2 class's own map must find its evidence faster than this one does.
CROSS = "attribution of the top-1 class"
METHODS = (ATTRIBUTION, *VARIANTS, *ROLLOUTS, RANDOM, CROSS)  # order of the tables and the plot


def baseline_images(images: np.ndarray, name: str, patch_size: int) -> np.ndarray:
    """What a masked patch shows: broadcastable to images (uint8 NCHW)."""
    if name == "grey":
        return np.full((1, *images.shape[1:]), 128, np.uint8)
    if name == "black":
        return np.zeros((1, *images.shape[1:]), np.uint8)
    if name == "blur":
        from PIL import Image, ImageFilter

        blurred = np.empty_like(images)
        for i, chw in enumerate(images):
            img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))
            out = img.filter(ImageFilter.GaussianBlur(radius=patch_size))
            blurred[i] = np.asarray(out).transpose(2, 0, 1)
        return blurred
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")


CLASSIFIER_BATCH = 16  # the fastest per image here (1 ms at 16, 1.6 ms at 64; ONNX Runtime: 2+)


def classifier(repository: Path, threads: int) -> deletion.Probabilities:
    """Softmax of the fp32 classify graph as the cpu target serves it (OpenVINO, f32)."""
    path = onnx_path(repository, "classify", "fp32")
    runner = runtimes.create_runner("openvino", str(path), threads, "f32", CLASSIFIER_BATCH)

    def probabilities(images: np.ndarray) -> np.ndarray:
        step = CLASSIFIER_BATCH
        logits = [runner.run(images[i : i + step])["logits"] for i in range(0, len(images), step)]
        return deletion.softmax(np.concatenate(logits).astype(np.float64))

    return probabilities


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Spearman correlation between paired maps (ranks by argsort: maps have no exact ties)."""
    ranks = [m.reshape(len(m), -1).argsort(axis=1).argsort(axis=1).astype(float) for m in (a, b)]
    ra, rb = (r - r.mean(axis=1, keepdims=True) for r in ranks)
    return (ra * rb).sum(1) / np.sqrt((ra**2).sum(1) * (rb**2).sum(1))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
    return 1.0 - (fa * fb).sum(1) / np.maximum(norms, 1e-30)


def attribution_source(
    repository: Path, source: str, threads: int
) -> tuple[str, map_sources.MapSource]:
    """(description for the report, maps): the served graph when asked or, with "auto", when
    the repository has one; else the PyTorch reference."""
    served = map_sources.attribution_onnx(repository)
    if source == "served" or (source == "auto" and served.is_file()):
        where = f"onnx/{served.name}, {ATTRIBUTION_CPU_RUNTIME} f32 as the cpu target serves it"
        return f"served graph ({where})", (
            map_sources.served_attribution(repository, threads=threads)
        )
    return "plain-PyTorch reference (build/checks/attribution_reference.py)", (
        map_sources.reference_attribution(repository)
    )


def _mean_sem(values: np.ndarray) -> tuple[float, float]:
    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return round(float(values.mean()), 4) + 0.0, round(float(sem), 4)


def curve_summary(fractions: np.ndarray, curves: np.ndarray) -> dict:
    auc, sem = _mean_sem(deletion.area_under(fractions, curves))
    return {"auc": auc, "auc_sem": sem, "curve": [round(float(v), 4) for v in curves.mean(0)]}


def paired_differences(aucs: dict[tuple[str, str], np.ndarray]) -> list[dict]:
    """Per target class: every other map's AUC minus attribution's, image by image (mean and
    standard error of the paired difference: positive = attribution is more faithful). Pairing
    removes the spread between images, which dominates the AUCs' own standard errors."""
    rows = []
    for (method, target), values in aucs.items():
        if method != ATTRIBUTION and (ATTRIBUTION, target) in aucs:
            mean, sem = _mean_sem(values - aucs[ATTRIBUTION, target])
            rows.append({"method": method, "target": target, "minus_attribution": mean, "sem": sem})
    return rows


def collect_maps(
    repository: Path,
    x: np.ndarray,
    targets: dict[str, np.ndarray],
    attribution: map_sources.MapSource,
    grid: tuple[int, int],
    random_seeds: int,
    threads: int,
) -> dict[tuple[str, str], list[np.ndarray]]:
    """(method, target) -> maps, one array per seed (one for every method but random)."""
    maps: dict[tuple[str, str], list[np.ndarray]] = {}
    explain = map_sources.explain_runner(repository, threads)
    for method, (fusion, ratio) in ROLLOUTS.items():
        rollout = map_sources.rollout(explain, fusion, ratio)
        for target, classes in targets.items():  # the graph has no class input: same maps
            maps[method, target] = [rollout(x, classes)]
    for method, precision in VARIANTS.items():
        if map_sources.attribution_onnx(repository, precision).is_file():
            served = map_sources.served_attribution(
                repository, threads=threads, precision=precision
            )
            for target, classes in targets.items():
                maps[method, target] = [served(x, classes)]
    for target, classes in targets.items():
        maps[ATTRIBUTION, target] = [attribution(x, classes)]
        maps[RANDOM, target] = [
            map_sources.random_maps(grid, seed)(x, classes) for seed in range(random_seeds)
        ]
    maps[CROSS, "top-2"] = maps[ATTRIBUTION, "top-1"]
    return maps


def map_agreement(maps: dict[tuple[str, str], list[np.ndarray]]) -> dict:
    """How alike each method's top-1 and top-2 maps are, mean over images."""
    differ = {}
    for method in (ATTRIBUTION, *VARIANTS, *ROLLOUTS):
        if (method, "top-1") not in maps:
            continue
        a, b = maps[method, "top-1"][0], maps[method, "top-2"][0]
        differ[method] = {
            "rank_correlation": round(float(rank_correlation(a, b).mean()), 4) + 0.0,
            "cosine_distance": round(float(cosine_distance(a, b).mean()), 4) + 0.0,
        }
    return differ


def run(
    repository: Path,
    source: str = "auto",
    images: int = 0,
    steps: int = 16,
    random_seeds: int = 3,
    threads: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    from build.model import digits

    contract = ModelContract.read(repository / "model.json")
    if contract.origin != "offline-digits":
        raise ValueError(
            f"{repository} holds {contract.model_name}: this benchmark needs the offline digits "
            "model (its held-out split is the data); build it with `make repo`"
        )
    threads = threads or runtimes.default_threads()
    heldout = digits.load_splits()[1]
    count = images or len(heldout.labels)
    x, labels = heldout.images[:count], heldout.labels[:count]
    probabilities = classifier(repository, threads)
    ranked = probabilities(x).argsort(axis=1)[:, ::-1]
    targets = {"top-1": ranked[:, 0].copy(), "top-2": ranked[:, 1].copy()}
    layout = contract.layout
    described, attribution = attribution_source(repository, source, threads)
    log(f"{count} held-out images, attribution from the {described}")

    start = time.perf_counter()
    maps = collect_maps(repository, x, targets, attribution, layout.grid, random_seeds, threads)
    log(f"maps computed in {time.perf_counter() - start:.1f}s")

    rows = []
    jobs = [
        (m, t, b)
        for t in TARGETS
        for m in METHODS
        for b in BASELINES
        if (m, t) in maps and (t == "top-1" or b == MAIN_BASELINE)
    ]
    baselines = {b: baseline_images(x, b, layout.patch_size[0]) for b in BASELINES}
    aucs = {}
    for i, (method, target, baseline) in enumerate(jobs, 1):
        curves = []
        for seed, method_maps in enumerate(maps[method, target]):
            fractions, c = deletion.deletion_curves(
                probabilities, x, method_maps, targets[target], baselines[baseline],
                layout.patch_size, steps, seed,
            )  # fmt: skip
            curves.append(c)
        mean_curves = np.mean(curves, axis=0)  # random: each image's mean over the seeds
        if baseline == MAIN_BASELINE:
            aucs[method, target] = deletion.area_under(fractions, mean_curves)
        row = {"method": method, "target": target, "baseline": baseline}
        row.update(curve_summary(fractions, mean_curves))
        rows.append(row)
        log(f"[{i}/{len(jobs)}] {method:32s} {target} class, {baseline:5s}: AUC {row['auc']:.4f}")

    return {
        "model": contract.model_name,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "images": count,
        "heldout_accuracy": round(float((targets["top-1"] == labels).mean()), 4),
        "attribution_source": described,
        "probabilities_from": "onnx/classify_fp32.onnx in OpenVINO f32 (as the cpu target "
        "serves it), softmax",
        "steps": steps,
        "random_seeds": random_seeds,
        "baselines": {
            "grey": "uint8 128: ~0 after normalisation (mean 0.5, std 0.5), what the training "
            "augmentation padded with",
            "black": "uint8 0: the digits' background (the stroke is erased)",
            "blur": f"Gaussian blur, radius {layout.patch_size[0]} px (one patch)",
        },
        "fractions": [round(float(f), 4) for f in fractions],
        "rows": rows,
        "paired": paired_differences(aucs),
        "maps_differ_between_classes": map_agreement(maps),
    }


def auc_of(result: dict, method: str, target: str, baseline: str = MAIN_BASELINE) -> float:
    for row in result["rows"]:
        if (row["method"], row["target"], row["baseline"]) == (method, target, baseline):
            return row["auc"]
    raise KeyError((method, target, baseline))


def _cell(row: dict) -> str:
    return f"{row['auc']:.3f} ± {row['auc_sem']:.3f}"


def markdown(result: dict, plot_name: str) -> str:
    keyed = {(r["method"], r["target"], r["baseline"]): r for r in result["rows"]}
    methods = [m for m in METHODS if any(r["method"] == m for r in result["rows"])]
    lines = [
        f"# Faithfulness of the explanation maps: {result['model']}",
        "",
        f"Measured {result['measured_at']} with `make bench-faithfulness` on {result['images']} "
        f"held-out digits (top-1 accuracy {100 * result['heldout_accuracy']:.1f}%). Deletion "
        "test: mask the k% most relevant patches by each map (k = 0..100% in "
        f"{result['steps']} steps) and read the target class's probability again; the number is "
        "the area under that curve (mean ± standard error over images). **Lower is more "
        f"faithful.** Attribution maps come from the {result['attribution_source']}; "
        f"probabilities from {result['probabilities_from']}; random: mean of "
        f"{result['random_seeds']} seeds."
        + (
            " The fp16 and int8 rows are the served lower-precision attribution graphs "
            "(onnx/attribution_{fp16,int8}.onnx, OpenVINO at its default precision, as the cpu "
            "target serves them)."
            if any(r["method"] in VARIANTS for r in result["rows"])
            else ""
        ),
        "",
        f"Masked patches are grey: {result['baselines']['grey']}.",
        "",
        "| map | target: top-1 class | target: top-2 class |",
        "|---|---:|---:|",
    ]
    for method in methods:
        cells = [keyed.get((method, t, MAIN_BASELINE)) for t in TARGETS]
        lines.append(f"| {method} | " + " | ".join(_cell(c) if c else "" for c in cells) + " |")
    lines += [
        "",
        "Paired by image (the same images and target for both maps), each map's AUC minus "
        "attribution's: positive = attribution is more faithful.",
        "",
        "| map | target | AUC - attribution's AUC |",
        "|---|---|---:|",
    ]
    for p in sorted(result["paired"], key=lambda p: (METHODS.index(p["method"]), p["target"])):
        lines.append(
            f"| {p['method']} | {p['target']} class | "
            f"{p['minus_attribution']:+.3f} ± {p['sem']:.3f} |"
        )
    lines += [
        "",
        f"The '{CROSS}' row deletes the top-2 class's probability in the order of the top-1 "
        "class's map: a class-specific map for the top-2 class should do better than it.",
        "",
        "Other masking values, top-1 class:",
        "",
        "| map | " + " | ".join(BASELINES) + " |",
        "|---|" + "---:|" * len(BASELINES),
    ]
    for method in methods:
        if (method, "top-1", MAIN_BASELINE) in keyed:
            aucs = [_cell(keyed[method, "top-1", b]) for b in BASELINES]
            lines.append(f"| {method} | " + " | ".join(aucs) + " |")
    lines += [
        "",
        "; ".join(f"{name}: {text}" for name, text in result["baselines"].items()) + ".",
        "",
        "Maps for two different target classes of the same image (top-1 vs top-2), mean over "
        "images: Spearman rank correlation (1 = same ranking of patches) and cosine distance "
        "(0 = same map). Rollout takes no class, so its two maps are identical by construction.",
        "",
        "| map | rank correlation | cosine distance |",
        "|---|---:|---:|",
    ]
    for method, d in result["maps_differ_between_classes"].items():
        lines.append(f"| {method} | {d['rank_correlation']:.3f} | {d['cosine_distance']:.3f} |")
    lines += ["", f"![deletion curves]({plot_name})", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Figure:
    """Mean deletion curves, one panel per target class, one line per map method (main baseline).
    Returns the saved figure (tests read its lines back)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGETS), figsize=(11, 4.5), dpi=110, sharey=False)
    for ax, target in zip(axes, TARGETS, strict=True):
        rows = [
            r for r in result["rows"] if (r["target"], r["baseline"]) == (target, MAIN_BASELINE)
        ]
        for row in sorted(rows, key=lambda r: METHODS.index(r["method"])):
            ax.plot(
                result["fractions"],
                row["curve"],
                marker=".",
                label=f"{row['method']} (AUC {row['auc']:.3f})",
                linestyle=":"
                if row["method"] in VARIANTS
                else "--"
                if row["method"] in (RANDOM, CROSS)
                else "-",
            )
        ax.set(
            xlabel="fraction of patches masked, most relevant first",
            ylabel=f"probability of the {target} class",
            title=f"target: {target} class",
        )
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Deletion test, {result['model']}, {result['images']} held-out images")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--source",
        choices=("auto", "served", "reference"),
        default="auto",
        help="attribution maps: the served graph, the PyTorch reference, or the graph if built",
    )
    parser.add_argument("--images", type=int, default=0, help="first N held-out images (0: all)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--name", default="faithfulness")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args(argv)
    try:
        result = run(
            args.repository, args.source, args.images, args.steps, args.random_seeds, args.threads
        )
    except (FileNotFoundError, ValueError) as exc:  # no build, another model, no served graph
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / f"{args.name}.png")
    (args.out / f"{args.name}.md").write_text(markdown(result, f"{args.name}.png"))
    print(f"wrote {args.out / args.name}.json, .md and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
