"""discard_ratio: the explain model's optional second input (vit-explain's attention filtering).

In every layer, after the heads are fused, the lowest `discard_ratio` fraction of the attention
entries is set to zero (the CLS-to-CLS entry is kept), before the identity is added and the rows
are renormalised. 0 keeps every entry: exactly the plain rollout. vit-explain's examples use 0.9.
Repositories built before the input existed still work: they answer discard_ratio=0 only.
"""

from __future__ import annotations

import numpy as np

from service import names
from service.errors import InvalidParameter
from service.triton import Variant

INPUT_NAME = names.DISCARD_RATIO
# The model takes FP32: a ratio just below 1 (e.g. 0.9999999999999998, valid for the API's r < 1)
# rounds to 1.0 there, which the model refuses. It is sent as the largest FP32 below 1 instead.
FP32_BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
DESCRIPTION = (
    "per layer, the lowest fraction of the fused attention set to zero (CLS-to-CLS kept) before "
    "the residual and renormalisation, as in vit-explain (whose examples use 0.9); 0 = plain "
    "rollout. 0 <= r < 1"
)


def supported(variant: Variant) -> bool:
    return INPUT_NAME in variant.inputs


def triton_inputs(variant: Variant, ratio: float) -> dict[str, np.generic]:
    """The scalar inputs to send: the ratio when the model takes it (always, so its config may
    declare it required), nothing when it does not and the request asks for no filtering."""
    if supported(variant):
        return {INPUT_NAME: np.float32(min(ratio, FP32_BELOW_ONE))}
    if ratio > 0:
        raise InvalidParameter(
            f"discard_ratio={ratio:g} needs an explain model with a {INPUT_NAME} input; "
            f"{variant.name} was built without it: rebuild the repository (make repo), or send "
            "discard_ratio=0"
        )
    return {}
