"""torch -> ONNX with the legacy TorchScript exporter, then the ONNX checker.

The legacy exporter (dynamo=False) writes one self-contained file at opset 17 in a fraction of a
second; the dynamo exporter in this torch writes external data and opset 18, which the rollout
graph could not be down-converted from (see docs/build.md).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from build.graphs import DISCARD_RATIO, INPUT_NAME, LOGITS, ROLLOUT_OUTPUTS

log = logging.getLogger(__name__)
OPSET = 17


def export(graph: torch.nn.Module, input_size: tuple[int, int], explain: bool, path: Path) -> None:
    outputs = [LOGITS, *ROLLOUT_OUTPUTS] if explain else [LOGITS]
    inputs = [INPUT_NAME, DISCARD_RATIO] if explain else [INPUT_NAME]
    dummy: tuple[torch.Tensor, ...] = (torch.zeros((2, 3, *input_size), dtype=torch.uint8),)
    if explain:  # one discard ratio per image: [N, 1] float32
        dummy += (torch.zeros((2, 1), dtype=torch.float32),)
    dynamic = {name: {0: "batch"} for name in [*inputs, *outputs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The legacy exporter is deprecated upstream but is the one that exports rollout cleanly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.eval(),
            dummy,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)
    log.info("exported %s (%.1f MB)", path.name, path.stat().st_size / 1e6)
