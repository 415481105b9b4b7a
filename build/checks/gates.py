"""Accuracy gates: a precision variant is only as good as its top-1 on held-out data.

INT8 is refused when its top-1 accuracy drops more than 1.0 point below FP32 on any runtime that
serves it (unless --allow-int8-drop); FP16 is flagged above 0.5 point. Without labelled held-out
data the gates cannot be applied; the report then says so and gives top-1 agreement instead.

Attribution variants (fp16, int8) have their own gate, which needs no labels: their class-specific
maps must agree with the fp32 graph's (mean per-image Pearson correlation >= 0.95 on every runtime
that serves them, over the images whose top-1 class both give: build/checks/evaluate.py). One that
fails is not served (the build goes on; /explain names the precisions that are), since its classify
and explain variants passed their own gates.
"""

from __future__ import annotations

INT8_MAX_DROP_POINTS = 1.0
FP16_FLAG_DROP_POINTS = 0.5
# fp16/int8 attribution maps on the digits model: 0.998-1.000 (docs/build.md).
ATTRIBUTION_MIN_CORRELATION = 0.95
ATTRIBUTION = "attribution"  # build.names.ATTRIBUTION_TASK: the variants' section


class GateRefused(Exception):
    """The INT8 variant failed its gate; the build stops with this message."""


def _drops(variants: dict, precision: str) -> dict[str, float]:
    drops = {}
    for runtime_name, entry in variants[precision].items():
        base = variants["fp32"][runtime_name]["classify"]["accuracy"]
        drops[runtime_name] = round(100 * (base - entry["classify"]["accuracy"]), 2)
    return drops


def apply_gates(variants: dict, labelled: bool, allow_int8_drop: bool) -> dict:
    gates: dict = {}
    for precision, limit in (("int8", INT8_MAX_DROP_POINTS), ("fp16", FP16_FLAG_DROP_POINTS)):
        if precision not in variants:
            continue
        if not labelled:
            gates[precision] = {
                "status": "not-applicable",
                "detail": "no labelled held-out data (--eval-dir); see top1_agreement_vs_fp32",
            }
            continue
        drops = _drops(variants, precision)
        worst = max(drops.values())
        if worst <= limit:
            status = "passed"
        elif precision == "fp16":
            status = "flagged"
        else:
            status = "overridden" if allow_int8_drop else "refused"
        gates[precision] = {
            "status": status,
            "limit_points": limit,
            "drop_points": drops,
            "detail": f"worst top-1 drop {worst:.2f} points vs fp32, limit {limit}",
        }
    for precision in ("fp16", "int8"):
        if precision in variants:
            gates[f"{ATTRIBUTION}_{precision}"] = attribution_gate(variants, precision)
    return gates


def attribution_gate(variants: dict, precision: str) -> dict:
    correlation = {
        runtime_name: entry[ATTRIBUTION]["map_correlation_vs_fp32"]["mean"]
        for runtime_name, entry in variants[precision].items()
    }
    worst = min(correlation.values())
    return {
        "status": "passed" if worst >= ATTRIBUTION_MIN_CORRELATION else "not-served",
        "limit_correlation": ATTRIBUTION_MIN_CORRELATION,
        "map_correlation_vs_fp32": correlation,
        "detail": f"worst mean map correlation {worst:.4f} vs fp32, limit "
        f"{ATTRIBUTION_MIN_CORRELATION}",
    }


def served_attribution(gates: dict, precisions: tuple[str, ...]) -> tuple[str, ...]:
    """The precisions whose attribution model is written: fp32, and those whose gate passed."""
    return tuple(
        p
        for p in precisions
        if gates.get(f"{ATTRIBUTION}_{p}", {"status": "passed"})["status"] == "passed"
    )


def raise_if_refused(gates: dict) -> None:
    gate = gates.get("int8")
    if gate and gate["status"] == "refused":
        raise GateRefused(
            f"INT8 refused: {gate['detail']} ({gate['drop_points']}); "
            "rerun with --allow-int8-drop to keep it, or --precisions fp32,fp16 to leave it out"
        )
