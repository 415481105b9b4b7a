"""PNG plots from the report data: p99 against offered rate (one line per system), and latency
percentiles over the time of one run. Each function returns the figure it saved, so tests read
the plotted data back from its Line2D objects."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def p99_vs_rate(
    series: dict[str, list[tuple[float, float, bool]]],
    slo_p99_ms: float | None,
    path: Path,
    title: str,
) -> Figure:
    """series: system -> [(offered req/s, p99 ms, valid)]. One line per system through its valid
    runs; runs where the generator fell behind are crosses off the line (not the server's p99)."""
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    # 20 distinct colours, the ten strong ones first: every system its own.
    tab20 = plt.get_cmap("tab20")
    colours = [tab20(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    for index, (system, points) in enumerate(series.items()):
        valid = sorted((rate, p99) for rate, p99, ok in points if ok)
        (line,) = ax.plot(
            [r for r, _ in valid],
            [p for _, p in valid],
            marker="o",
            label=system,
            color=colours[index % len(colours)],
        )
        invalid = [(rate, p99) for rate, p99, ok in points if not ok]
        if invalid:
            ax.plot(
                *zip(*invalid, strict=True),
                linestyle="none",
                marker="x",
                color=line.get_color(),
                label="_generator behind",
            )
    if slo_p99_ms is not None:
        ax.axhline(slo_p99_ms, color="red", linestyle="--", linewidth=1, label="_slo")
        ax.annotate(
            f"SLO p99 {slo_p99_ms:g} ms",
            (0.01, slo_p99_ms),
            xycoords=("axes fraction", "data"),
            color="red",
            va="bottom",
            fontsize=8,
        )
    ax.set(
        xlabel="offered load (req/s, open loop; x = generator behind, invalid)",
        ylabel="p99 latency (ms)",
        title=title,
    )
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not over data
    return _save(fig, path)


def latency_over_time(timeline: list[dict[str, float]], path: Path, title: str) -> Figure:
    """timeline: rows of t_s, p50, p90, p99, max (openloop.timeline)."""
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    t = [row["t_s"] for row in timeline]
    for key in ("p50", "p90", "p99", "max"):
        ax.plot(t, [row[key] for row in timeline], marker=".", label=key)
    ax.set(xlabel="send time in the run (s)", ylabel="latency (ms)", title=title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Figure:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig
