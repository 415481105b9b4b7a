"""method= and target_class= of /explain: which explanation, of which class.

rollout (the default) is attention rollout: where the model looked, one map whatever the class
(the explain model; head_fusion and discard_ratio tune it). attribution is Chefer et al.'s
class-specific transformer attribution: which patches speak for one class (the attribution model,
input target_class INT32 [N, 1], -1 = the top-1 class). Parameters of one method given with the
other are refused (422), not ignored: a caller who sends them expects them to change the map.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Container, Sequence
from typing import Any, Literal

import numpy as np

from service import discard_ratio, names
from service.errors import InvalidParameter
from service.triton import Variant

Method = Literal["rollout", "attribution"]
TRITON_TASK: dict[str, str] = {"rollout": names.EXPLAIN_TASK, "attribution": names.ATTRIBUTION_TASK}
INPUT_NAME = names.TARGET_CLASS
OUTPUT_NAME = names.ATTRIBUTION
TOP1 = names.TOP1  # the model's own choice: argmax of the logits, first index on ties
ROLLOUT_ONLY = ("head_fusion", "discard_ratio")
_INDEX = re.compile(r"^[+-]?[0-9]+$")  # ASCII digits only (int() would take other scripts' too)

DESCRIPTION = (
    "method=attribution only: the class to explain, as a class index (an integer) or a label of "
    "the model (exactly as written in its labels). Default: the top-1 class of each image"
)


def check_parameters(method: Method, given: Container[str], target: str | None) -> None:
    """Refuse what the other method takes (only what the request names, `given`: defaults are
    fine)."""
    if method == "rollout" and target is not None:
        raise InvalidParameter(
            "target_class needs method=attribution: rollout is class-agnostic (one map for every "
            "class); send method=attribution&target_class=... for a class-specific map"
        )
    if method == "attribution":
        named = " and ".join(name for name in ROLLOUT_ONLY if name in given)
        if named:
            raise InvalidParameter(
                f"method=attribution does not take {named} (rollout parameters): leave them out, "
                "or use method=rollout"
            )


def resolve(target: str | None, labels: Sequence[str]) -> int:
    """The class index to send: TOP1 when none is named, else the index or the label's index."""
    if target is None:
        return TOP1
    count = len(labels)
    valid = f"a class index 0-{count - 1} or one of the model's {count} labels"
    if _INDEX.match(target):
        index = int(target)
        if not 0 <= index < count:
            raise InvalidParameter(
                f"target_class={target} is out of range: the model has {count} classes, "
                f"0-{count - 1} (leave target_class out for the top-1 class)"
            )
        return index
    matches = [i for i, label in enumerate(labels) if label == target]
    if len(matches) == 1:
        return matches[0]
    if matches:  # e.g. ImageNet's two "crane" classes: only an index can tell them apart
        raise InvalidParameter(
            f"target_class {target!r} names {len(matches)} classes "
            f"({', '.join(str(i) for i in matches[:10])}): give its index instead"
        )
    close = difflib.get_close_matches(target, list(labels), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InvalidParameter(
        f"target_class {target!r} is not a label of this model: give {valid}{hint}"
    )


def triton_inputs(index: int) -> dict[str, np.generic]:
    return {INPUT_NAME: np.int32(index)}


def model_call(
    method: Method, variant: Variant, target: int, head_fusion: str, ratio: float
) -> tuple[str, dict[str, np.generic]]:
    """The map output to ask the variant for and the scalar inputs to send it: rollout's output
    for the head fusion, with the discard ratio when the model takes one; attribution's map, with
    the class to explain."""
    if method == "rollout":
        return names.rollout_output(head_fusion), discard_ratio.triton_inputs(variant, ratio)
    return OUTPUT_NAME, triton_inputs(target)


def explained_index(logits: np.ndarray, index: int) -> np.ndarray:
    """Per image, the class the map explains: the named one, or each image's top-1 (argmax, first
    index on ties: what the model resolves -1 to)."""
    if index == TOP1:
        return np.argmax(logits, axis=1)
    return np.full(len(logits), index)


def openapi_schema(labels: Sequence[str]) -> dict[str, Any]:
    """target_class in the OpenAPI page: an index in range, or a label that names one class (a
    label two classes share is reachable by index only, so it is left out)."""
    counts = Counter(labels)
    return {
        "title": "Target Class",
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": len(labels) - 1},
            {"type": "string", "enum": [label for label in counts if counts[label] == 1]},
        ],
    }
