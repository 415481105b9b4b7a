"""Where the model comes from, plus the images used to calibrate and evaluate it.

Three sources: the offline default (a digits ViT trained here), any timm ViT/DeiT name (pretrained
weights from the hub, or random weights with --random-weights when the hub is out of reach), or a
local checkpoint for a timm architecture.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from build.contract import Preprocessing, timm_attribute
from build.model import digits

log = logging.getLogger(__name__)

OFFLINE_DEFAULT = "offline-digits"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


class SourceError(Exception):
    """A model or data source that cannot be used; the message is shown to the user as is."""


@dataclass
class Images:
    """uint8 NCHW images preprocessed as the model expects, with labels where they are known."""

    images: np.ndarray
    labels: np.ndarray | None
    description: str


@dataclass
class LoadedModel:
    model: torch.nn.Module
    name: str
    origin: str
    labels: list[str]
    calibration: Images | None = None
    heldout: Images | None = None
    training: dict | None = None


def offline_default(seed: int = 0) -> LoadedModel:
    train_split, heldout = digits.load_splits(seed)
    start = time.perf_counter()
    model = digits.train(train_split, heldout, seed=seed)
    seconds = time.perf_counter() - start
    accuracy = digits.accuracy(model, heldout)
    return LoadedModel(
        model=model,
        name="vit-digits-32px-p4",
        origin=OFFLINE_DEFAULT,
        labels=digits.DIGIT_LABELS,
        calibration=Images(train_split.images, train_split.labels, "digits train split"),
        heldout=Images(heldout.images, heldout.labels, "digits held-out split (20%, stratified)"),
        training={
            "data": "scikit-learn digits, 8x8 upscaled to 32x32 RGB",
            "train_images": len(train_split.labels),
            "heldout_images": len(heldout.labels),
            "seconds": round(seconds, 1),
            "heldout_accuracy_torch": round(accuracy, 4),
        },
    )


def _labels_for(model: torch.nn.Module, labels_file: Path | None) -> list[str]:
    num_classes = int(timm_attribute(model, "num_classes"))
    if labels_file is not None:
        labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
        if len(labels) != num_classes:
            raise SourceError(
                f"{labels_file} has {len(labels)} labels; the model has {num_classes}"
            )
        return labels
    if num_classes in (1000, 11821, 21841, 21843):
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            return [info.index_to_description(i) for i in range(num_classes)]
    return [f"class_{i}" for i in range(num_classes)]


def timm_model(
    name: str,
    pretrained: bool,
    checkpoint: Path | None,
    num_classes: int | None,
    labels_file: Path | None,
) -> LoadedModel:
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise SourceError(f"unknown timm model {name!r} (see timm.list_models('vit_*'))")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        if checkpoint is not None:
            if not checkpoint.is_file():
                raise SourceError(f"checkpoint {checkpoint} does not exist")
            model = timm.create_model(
                name, pretrained=False, checkpoint_path=str(checkpoint), **kwargs
            )
            origin = "checkpoint"
        else:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
            origin = "timm-pretrained" if pretrained else "timm-random"
    except SourceError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        hint = (
            " (is the Hugging Face hub reachable? use --random-weights or --checkpoint offline)"
            if pretrained and checkpoint is None
            else ""
        )
        raise SourceError(f"cannot create {name}: {str(exc).splitlines()[0]}{hint}") from exc
    return LoadedModel(
        model=model.eval(), name=name, origin=origin, labels=_labels_for(model, labels_file)
    )


def preprocess_files(paths: list[Path], pre: Preprocessing) -> np.ndarray:
    """timm's own eval transform (resize, centre crop) to uint8 CHW, for calibration/evaluation."""
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(
        input_size=(3, *pre.input_size),
        interpolation=pre.interpolation,
        crop_pct=pre.crop_pct,
        crop_mode=pre.crop_mode,
        mean=pre.mean,
        std=pre.std,
        is_training=False,
        use_prefetcher=True,  # stops before ToTensor/Normalize: uint8 out, normalised in-graph
    )
    out = np.empty((len(paths), 3, *pre.input_size), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            out[i] = np.asarray(transform(img.convert("RGB")))
        if (i + 1) % 250 == 0:
            log.info("preprocessed %d/%d images", i + 1, len(paths))
    return out


def imagenet_synsets(num_classes: int) -> list[str] | None:
    """WordNet synset ids (n01440764, ...) in class-index order when the classifier is an ImageNet
    one (timm's ImageNetInfo), so evaluation folders named the ImageNet way resolve."""
    from timm.data import ImageNetInfo

    subsets = {
        1000: "imagenet-1k",
        11821: "imagenet-12k",
        21841: "imagenet-22k",
        21843: "imagenet-21k-goog",
    }
    if num_classes not in subsets:
        return None
    info = ImageNetInfo(subsets[num_classes])
    return [info.index_to_label_name(i) for i in range(num_classes)]


def _class_index(folder: str, labels: list[str], synsets: list[str] | None) -> int | None:
    if folder.isdigit() and int(folder) < len(labels):
        return int(folder)
    for names in (labels, synsets or []):
        if folder in names:
            return names.index(folder)
    return None


def image_folder(
    folder: Path,
    pre: Preprocessing,
    labelled: bool,
    labels: list[str],
    limit: int | None = None,
    seed: int = 0,
) -> Images:
    """Images under folder; with labelled=True, sub-folders name the class: its index, its label,
    or its ImageNet synset id. With more images than `limit`, a seeded random sample of `limit`
    (sorted class folders would otherwise leave whole classes out)."""
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a directory")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    description = str(folder)
    if limit is not None and len(paths) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
        description = f"{folder} (random {limit} of {len(paths)})"
        paths = [paths[i] for i in keep]
    targets = None
    if labelled:
        synsets = imagenet_synsets(len(labels))
        targets = np.empty(len(paths), dtype=np.int64)
        for i, path in enumerate(paths):
            index = _class_index(path.parent.name, labels, synsets)
            if index is None:
                raise SourceError(
                    f"{path}: folder {path.parent.name!r} is neither a class index, a label "
                    "nor an ImageNet synset id of this model"
                )
            targets[i] = index
    return Images(preprocess_files(paths, pre), targets, description)


def digits_stand_in(pre: Preprocessing, count: int = 512) -> Images:
    """Unlabelled real images for models with no user data offline: digits resized to the input.

    Good enough to exercise calibration and measure agreement; not a substitute for a user's
    calibration folder, which the build report says."""
    train_split, _ = digits.load_splits()
    from PIL import Image

    out = np.empty((count, 3, *pre.input_size), dtype=np.uint8)
    for i in range(count):
        chw = train_split.images[i % len(train_split.images)]
        img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))
        resized = img.resize((pre.input_size[1], pre.input_size[0]), Image.Resampling.BICUBIC)
        out[i] = np.asarray(resized).transpose(2, 0, 1)
    return Images(out, None, "digits stand-ins (no --calib-dir given)")
