"""What the model needs from its callers, written next to the model for the gateway (model.json).

Preprocessing comes from timm's own resolved data config, never hard-coded; the token layout (how
many prefix tokens precede the patch tokens, and the patch grid) is read from the model itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is not needed to read a contract (the TensorRT container has none)
    import torch


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int]  # (height, width) the graph takes
    interpolation: str  # Pillow filter name used by timm's eval transform: bicubic, bilinear, ...
    crop_pct: float  # resize the shorter side to size / crop_pct, then centre-crop to size
    crop_mode: str  # timm's "center" (only mode the gateway implements; others are refused)
    mean: tuple[float, float, float]  # applied inside the graph; recorded for reference
    std: tuple[float, float, float]


@dataclass(frozen=True)
class TokenLayout:
    num_prefix_tokens: int  # CLS + distillation + register tokens in front of the patch tokens
    grid: tuple[int, int]  # patch grid (rows, cols); non-square for non-square inputs
    patch_size: tuple[int, int]
    query: str  # rollout reads the CLS row ("cls", token 0) or the mean of the patch rows ("mean")


@dataclass(frozen=True)
class JpegEnsembles:
    """Which served models also take JPEG bytes (make repo --preprocess dali): on `targets`, the
    model <name><suffix> takes each image's file as UINT8 [1, length] in `input` and answers as
    <name> does. The gateway reads this; the names come from build/names.py."""

    suffix: str
    input: str
    targets: list[str]
    decoder: str  # what decodes and resizes there, for the reader: "dali (nvJPEG, mixed)"


@dataclass(frozen=True)
class ModelContract:
    model_name: str
    origin: str  # offline-digits | timm-pretrained | timm-random | checkpoint
    preprocessing: Preprocessing
    layout: TokenLayout
    labels: list[str] = field(default_factory=list)
    jpeg_ensembles: JpegEnsembles | None = None  # None: every model takes tensors only

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> ModelContract:
        raw = json.loads(path.read_text())
        pre = raw["preprocessing"]
        lay = raw["layout"]
        jpeg = raw.get("jpeg_ensembles")  # absent from builds before issue 16
        return cls(
            model_name=raw["model_name"],
            origin=raw["origin"],
            preprocessing=Preprocessing(
                input_size=tuple(pre["input_size"]),
                interpolation=pre["interpolation"],
                crop_pct=pre["crop_pct"],
                crop_mode=pre["crop_mode"],
                mean=tuple(pre["mean"]),
                std=tuple(pre["std"]),
            ),
            layout=TokenLayout(
                num_prefix_tokens=lay["num_prefix_tokens"],
                grid=tuple(lay["grid"]),
                patch_size=tuple(lay["patch_size"]),
                query=lay["query"],
            ),
            labels=list(raw["labels"]),
            jpeg_ensembles=JpegEnsembles(**jpeg) if jpeg else None,
        )


def timm_attribute(module: torch.nn.Module, name: str) -> Any:
    """A plain attribute timm sets on its modules (num_classes, img_size, ...). nn.Module's typing
    says attributes are tensors or modules (its __getattr__ finds parameters, buffers and
    submodules); plain attributes are found before it, with whatever type timm gave them."""
    return getattr(module, name)


def _rgb(values: Any) -> tuple[float, float, float]:
    red, green, blue = (float(v) for v in values)
    return (red, green, blue)


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def token_layout(model: torch.nn.Module) -> TokenLayout:
    """Read the token layout from a timm VisionTransformer (or subclass such as DeiT distilled)."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not hasattr(model, "blocks"):
        raise ValueError(
            f"{type(model).__name__} is not a timm VisionTransformer-family model "
            "(no patch_embed/blocks): only ViT/DeiT architectures are supported"
        )
    if getattr(model, "dynamic_img_size", False):
        raise ValueError("models created with dynamic_img_size=True are not supported")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    return TokenLayout(
        num_prefix_tokens=prefix,
        grid=_pair(patch_embed.grid_size),
        patch_size=_pair(patch_embed.patch_size),
        # Register-only models (e.g. *_reg4_gap_*) have prefix tokens but no CLS to read.
        query="cls" if getattr(model, "cls_token", None) is not None else "mean",
    )


def preprocessing(model: torch.nn.Module) -> Preprocessing:
    """timm's resolved eval data config for this model.

    The input size is the one the patch embedding was built for: a model created with img_size=...
    keeps its registry's pretrained_cfg (e.g. 224), which would not fit the graph.
    """
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    crop_mode = cfg.get("crop_mode", "center")
    if crop_mode != "center":
        raise ValueError(f"crop_mode {crop_mode!r} is not supported (only 'center')")
    height, width = _pair(timm_attribute(model.get_submodule("patch_embed"), "img_size"))
    return Preprocessing(
        input_size=(height, width),
        interpolation=str(cfg["interpolation"]),
        crop_pct=float(cfg["crop_pct"]),
        crop_mode=crop_mode,
        mean=_rgb(cfg["mean"]),
        std=_rgb(cfg["std"]),
    )
