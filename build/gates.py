"""Accuracy gates: a precision variant is only as good as its top-1 on held-out data.

INT8 is refused when its top-1 accuracy drops more than 1.0 point below FP32 on any runtime that
serves it (unless --allow-int8-drop); FP16 is flagged above 0.5 point. Without labelled held-out
data the gates cannot be applied; the report then says so and gives top-1 agreement instead.
"""

from __future__ import annotations

INT8_MAX_DROP_POINTS = 1.0
FP16_FLAG_DROP_POINTS = 0.5


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
    return gates


def raise_if_refused(gates: dict) -> None:
    gate = gates.get("int8")
    if gate and gate["status"] == "refused":
        raise GateRefused(
            f"INT8 refused: {gate['detail']} ({gate['drop_points']}); "
            "rerun with --allow-int8-drop to keep it, or --precisions fp32,fp16 to leave it out"
        )
