"""The offline default model: a small ViT trained at build time on scikit-learn's digits.

No network is needed: scikit-learn ships the 1,797 8x8 digit images. They are upscaled to 32x32 RGB
uint8 images (what a user would upload), split 80/20 stratified, and a timm VisionTransformer with
4x4 patches (an 8x8 token grid, so every patch is one original digit pixel) is trained on them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SIZE = 32
PATCH_SIZE = 4
DIGIT_LABELS = [str(d) for d in range(10)]
# Normalisation of the default model: digits are dark-on-light-free grey strokes, so a plain
# 0.5/0.5 scaling (timm's ViT default) is enough; it travels with the model like any other config.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class DigitsSplit:
    """uint8 NCHW images at IMAGE_SIZE, int64 labels, and the original 8x8 intensities (0-16)."""

    images: np.ndarray
    labels: np.ndarray
    strokes: np.ndarray


def to_rgb_uint8(digits_8x8: np.ndarray) -> np.ndarray:
    """Upscale 8x8 intensities (0-16) to IMAGE_SIZE RGB uint8 images, NCHW, with Pillow bicubic."""
    out = np.empty((len(digits_8x8), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, d in enumerate(digits_8x8):
        grey = Image.fromarray(np.round(d * (255.0 / 16.0)).astype(np.uint8), mode="L")
        big = np.asarray(grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
        out[i] = big[None]
    return out


def load_splits(seed: int = 0) -> tuple[DigitsSplit, DigitsSplit]:
    """Train and held-out splits (20%, stratified, fixed seed) of the digits data set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    raw = data.images.astype(np.float32)
    idx_train, idx_test = train_test_split(
        np.arange(len(raw)), test_size=0.2, stratify=data.target, random_state=seed
    )
    images = to_rgb_uint8(raw)

    def split(idx: np.ndarray) -> DigitsSplit:
        return DigitsSplit(images[idx], data.target[idx].astype(np.int64), raw[idx])

    return split(idx_train), split(idx_test)


def create_model() -> torch.nn.Module:
    """The default architecture: ViT with a CLS token, 8x8 grid, 4 blocks of width 96."""
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        embed_dim=96,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=10,
        pretrained_cfg_overlay=dict(
            input_size=(3, IMAGE_SIZE, IMAGE_SIZE),
            crop_pct=1.0,
            interpolation="bicubic",
            mean=MEAN,
            std=STD,
            num_classes=10,
        ),
    )


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random +-10% shift, +-12 degree rotation and +-10% scale, applied as one affine warp."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(12)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.10
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.20  # grid units: 0.2 = 10% of width
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images_uint8.float() / 255.0 - mean) / std


@torch.no_grad()
def accuracy(model: torch.nn.Module, split: DigitsSplit) -> float:
    model.eval()
    logits = model(_normalise(torch.from_numpy(split.images)))
    return float((logits.argmax(1).numpy() == split.labels).mean())


def train(
    train_split: DigitsSplit,
    heldout: DigitsSplit,
    epochs: int = 40,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.nn.Module:
    """Train the default model; logs one progress line per epoch (loss, held-out accuracy, time)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = create_model()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(train_split.labels) / batch_size)
    total = epochs * steps_per_epoch
    warmup = 2 * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * s / total)),
    )
    x_all = torch.from_numpy(train_split.images)
    y_all = torch.from_numpy(train_split.labels)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(y_all), generator=generator)
        running = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = _augment(_normalise(x_all[idx]), generator)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += loss.item() * len(idx)
        if epoch % 5 == 0 or epoch == epochs:
            log.info(
                "train digits: epoch %d/%d loss %.3f held-out acc %.1f%% (%.0fs)",
                epoch,
                epochs,
                running / len(y_all),
                100 * accuracy(model, heldout),
                time.perf_counter() - start,
            )
    return model.eval()
