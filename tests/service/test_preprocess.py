"""The gateway's preprocessing equals timm's own eval transform (the build's reference).

Parity is measured as mean absolute pixel difference on the 0-255 scale; the contract asks for
<= 1.0, this implementation is exact. /classify's shortcuts are measured too: the JPEG draft
decode, and resizing only the crop region (CROP_RESIZE), against timm and on the default model's
answers.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from timm.data import create_transform

from build.repository import runtimes
from build.repository.writer import onnx_path
from service.images import decode
from service.model_info import ModelMetadata
from service.preprocess import FULL_RESIZE_MAX_AREA, Spec, draft_request, preprocess
from tests.helpers import encode

SPECS = {
    "digits 32 crop 1.0 bicubic": Spec(32, 32, "bicubic", 1.0),
    "224 crop 0.9 bicubic (ViT-B/16)": Spec(224, 224, "bicubic", 0.9),
    "224 crop 0.875 bilinear": Spec(224, 224, "bilinear", 0.875),
    "non-square 32x48 crop 0.9": Spec(32, 48, "bicubic", 0.9),
    "crop_pct 1.1 (pads)": Spec(64, 64, "bilinear", 1.1),
}
SIZES = [(32, 32), (640, 480), (480, 640), (1024, 768), (333, 517), (50, 50), (20, 90)]


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    smooth = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.integers(-20, 20, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(smooth) + noise, 0, 255).astype(np.uint8))


def timm_reference(img: Image.Image, spec: Spec) -> np.ndarray:
    transform = create_transform(
        input_size=(3, spec.height, spec.width),
        interpolation=spec.interpolation,
        crop_pct=spec.crop_pct,
        is_training=False,
        use_prefetcher=True,
    )
    return np.asarray(transform(img))


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_parity_with_timm_eval_transform(spec_name):
    spec = SPECS[spec_name]
    diffs = []
    for i, (w, h) in enumerate(SIZES):
        img = decode(encode(photo(w, h, i), "PNG"), 10**8)
        ours, _ = preprocess(img, spec)
        ref = timm_reference(img, spec)
        assert ours.shape == ref.shape == (3, spec.height, spec.width)
        diffs.append(np.abs(ours.astype(int) - ref.astype(int)).mean())
    assert max(diffs) <= 1.0, diffs
    assert max(diffs) == 0.0, f"expected exact parity, got {diffs}"


def test_crop_box_maps_back_to_the_original():
    _, box = preprocess(photo(640, 480, 0), SPECS["224 crop 0.9 bicubic (ViT-B/16)"])
    # shorter side 480 -> 248; the 224 crop is 224/248 of it, centred
    assert box.top == pytest.approx((248 - 224) / 2 * 480 / 248, abs=0.01)
    assert box.bottom - box.top == pytest.approx(224 * 480 / 248, abs=0.01)
    assert (box.left + box.right) / 2 == pytest.approx(320, abs=1.5)


def test_jpeg_draft_decode_parity_is_measured():
    """Draft (reduced-scale JPEG decode, /classify's default) trades a little parity for speed.
    Measured here on 1024x768 photos for ViT-B/16 preprocessing (docs/gateway.md quotes it)."""
    spec = SPECS["224 crop 0.9 bicubic (ViT-B/16)"]
    diffs = []
    for seed in range(4):
        jpeg = encode(photo(1024, 768, seed), "JPEG", quality=90)
        full, _ = preprocess(decode(jpeg, 10**8), spec)
        fast, _ = preprocess(
            decode(jpeg, 10**8, draft=lambda w, h: draft_request(w, h, spec)), spec
        )
        diffs.append(np.abs(full.astype(int) - fast.astype(int)).mean())
    assert 0 < max(diffs) <= 4.0, diffs


def test_draft_never_decodes_below_the_resize_target():
    spec = SPECS["224 crop 0.9 bicubic (ViT-B/16)"]
    for w, h in [(4000, 3000), (3000, 4000), (1000, 250)]:
        dw, dh = draft_request(w, h, spec)
        img = Image.open(io.BytesIO(encode(photo(w, h, 0), "JPEG")))
        img.draft("RGB", (dw, dh))
        assert min(img.size) >= 248


def test_resize_work_is_bounded_by_the_model_input_not_the_image_shape(monkeypatch):
    """A thin strip's shorter side is scaled to the model's size, so a full resize of an 85-byte
    1x4000 PNG would be 248 x 992,000 pixels (2.45 GB, 9.5 s); 1x40,000,000 overflowed. Only the
    crop region is resized then, so the work is bounded by the model's input whatever the shape."""
    spec = SPECS["224 crop 0.9 bicubic (ViT-B/16)"]
    bound = FULL_RESIZE_MAX_AREA * spec.width * spec.height
    resize = Image.Image.resize

    def bounded_resize(self, size, *args, **kwargs):
        assert size[0] * size[1] <= bound, f"resize of {self.size} to {size}"
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded_resize)
    for width, height in [(1, 4000), (4000, 1), (3, 20_000), (1, 40_000_000)]:
        tensor, box = preprocess(Image.new("RGB", (width, height), (10, 20, 30)), spec)
        assert tensor.shape == (3, 224, 224)
        assert (tensor[:, 5:-5, 5:-5] == np.array([10, 20, 30])[:, None, None]).all()
        assert 0 <= box.left < box.right <= width and 0 <= box.top < box.bottom <= height


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_parity_of_the_crop_region_resize_on_extreme_aspect_ratios(spec_name):
    """Past FULL_RESIZE_MAX_AREA only the crop region is resized (Pillow's resize box, whose
    coordinates are float32): measured against timm, mean abs difference <= 0.5 of 255 (docs/
    reliability.md quotes it). Normal photos never take this path (exact parity above)."""
    spec = SPECS[spec_name]
    diffs = []
    for i, (w, h) in enumerate([(20, 900), (900, 20), (40, 1500), (1500, 30)]):
        img = photo(w, h, i)
        ours, _ = preprocess(img, spec)
        ref = timm_reference(img, spec)
        diffs.append(np.abs(ours.astype(int) - ref.astype(int)).mean())
    assert max(diffs) <= 0.5, diffs


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_crop_region_resize_parity_with_timm(spec_name):
    """CROP_RESIZE (/classify's default) resizes only what the centre crop keeps: Pillow's float32
    box coordinates move a few pixels by a grey level or more. Measured on these photos: mean
    <= 0.26/255 per image (most < 0.001), single pixels up to 8/255 (docs/gateway.md quotes it)."""
    spec = SPECS[spec_name]
    means, peaks = [], []
    for i, (w, h) in enumerate([*SIZES, (333, 517), (233, 350), (300, 700), (1280, 720)]):
        img = photo(w, h, i)
        ours, _ = preprocess(img, spec, crop_region_only=True)
        diff = np.abs(ours.astype(int) - timm_reference(img, spec).astype(int))
        means.append(diff.mean())
        peaks.append(diff.max())
    assert max(means) <= 0.3, means
    assert max(peaks) <= 10, peaks
    assert max(means) > 0  # not the exact path by accident


def test_crop_region_resize_keeps_the_default_models_answers(repository, heldout):
    """The default model's 360 held-out digits as photo-sized JPEGs (320-1024 px, five aspect
    ratios, the digit centred), preprocessed as timm does and with CROP_RESIZE: the tensors and
    the model's top-1 (ONNX Runtime, fp32). Measured: mean 0.00003/255, max 1/255, the same top-1
    on every image."""
    spec = ModelMetadata.load(repository / "model.json").spec
    rng = np.random.default_rng(0)
    exact, cropped = [], []
    for i, chw in enumerate(heldout.images):
        side, aspect = int(rng.integers(320, 1025)), (4 / 3, 3 / 4, 1.0, 16 / 9, 2 / 3)[i % 5]
        size = (side, round(side / aspect)) if aspect >= 1 else (round(side * aspect), side)
        digit = Image.fromarray(chw.transpose(1, 2, 0))
        canvas = Image.new(
            "RGB", (round(32 * size[0] / min(size)), round(32 * size[1] / min(size)))
        )
        canvas.paste(digit, ((canvas.width - 32) // 2, (canvas.height - 32) // 2))
        img = decode(
            encode(canvas.resize(size, Image.Resampling.BICUBIC), "JPEG", quality=90), 10**8
        )
        exact.append(preprocess(img, spec)[0])
        cropped.append(preprocess(img, spec, crop_region_only=True)[0])
    diff = np.abs(np.stack(exact).astype(int) - np.stack(cropped).astype(int))
    assert diff.mean() <= 0.01 and diff.max() <= 2, (diff.mean(), diff.max())
    model = runtimes.create_runner("onnxruntime", str(onnx_path(repository, "classify", "fp32")))
    top1 = [model.run(np.stack(t))["logits"].argmax(1) for t in (exact, cropped)]
    assert (top1[0] == heldout.labels).mean() >= 0.95  # the photos are still digits to the model
    assert (top1[0] == top1[1]).mean() == 1.0
