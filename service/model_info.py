"""What the model expects (model.json, written by the build stage): read at start-up from
MODEL_METADATA, and per served version from Triton's model config (make publish writes it there,
release/; service/triton.py reads it), so preprocessing and labels follow the version served."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from service.preprocess import Spec

# The model-config parameters make publish writes (release/) and the gateway reads: the version
# new requests go to, and that version's model.json (JSON text).
SERVING_VERSION_PARAMETER = "vit_serving_version"
CONTRACT_PARAMETER = "vit_model_json"


class MetadataError(Exception):
    pass


@dataclass(frozen=True)
class JpegEnsembles:
    """Triton's <model><suffix> takes each image's JPEG file as UINT8 [1, length] in `input`
    (make repo --preprocess dali; service/jpeg_path.py)."""

    suffix: str
    input: str


@dataclass(frozen=True)
class ModelMetadata:
    model_name: str
    spec: Spec
    labels: tuple[str, ...]
    grid: tuple[int, int]
    num_prefix_tokens: int
    jpeg_ensembles: JpegEnsembles | None = None

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        if not path.is_file():
            raise MetadataError(
                f"{path} not found: build the model repository first (make repo), or point "
                "MODEL_METADATA at its model.json"
            )
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"{path} is not a valid model.json: {exc}") from exc

    @classmethod
    def from_dict(cls, raw: dict) -> ModelMetadata:
        """Raises KeyError, TypeError or ValueError on a malformed model.json."""
        jpeg = raw.get("jpeg_ensembles")  # absent unless built with --preprocess dali
        return cls(
            model_name=raw["model_name"],
            spec=Spec.from_metadata(raw["preprocessing"]),
            labels=tuple(raw["labels"]),
            grid=(int(raw["layout"]["grid"][0]), int(raw["layout"]["grid"][1])),
            num_prefix_tokens=int(raw["layout"]["num_prefix_tokens"]),
            jpeg_ensembles=JpegEnsembles(str(jpeg["suffix"]), str(jpeg["input"])) if jpeg else None,
        )
