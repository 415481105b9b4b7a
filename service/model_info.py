"""What the model expects, read once at start-up from model.json (written by the build stage)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from service.preprocess import Spec


class MetadataError(Exception):
    pass


@dataclass(frozen=True)
class ModelMetadata:
    model_name: str
    spec: Spec
    labels: tuple[str, ...]
    grid: tuple[int, int]
    num_prefix_tokens: int

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        if not path.is_file():
            raise MetadataError(
                f"{path} not found: build the model repository first (make repo), or point "
                "MODEL_METADATA at its model.json"
            )
        try:
            raw = json.loads(path.read_text())
            return cls(
                model_name=raw["model_name"],
                spec=Spec.from_metadata(raw["preprocessing"]),
                labels=tuple(raw["labels"]),
                grid=(int(raw["layout"]["grid"][0]), int(raw["layout"]["grid"][1])),
                num_prefix_tokens=int(raw["layout"]["num_prefix_tokens"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"{path} is not a valid model.json: {exc}") from exc
