"""The upload -> tensor pipeline's budgets, with the real thread pool and real encoded images:
a per-request decoded-pixel budget checked before any pixel is decoded, pool jobs that skip a
request already past its deadline, full-scale sizes under JPEG draft decoding, and overlay copies
kept only at the size that will be rendered."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from service.config import Settings
from service.errors import DeadlineExceeded, PayloadTooLarge
from service.inputs import Upload
from service.model_info import ModelMetadata
from service.pipeline import Pipeline
from tests.helpers import encode


@pytest.fixture
def make_pipeline(repository):
    executors = []

    def make(**settings) -> Pipeline:
        executor = ThreadPoolExecutor(max_workers=2)
        executors.append(executor)
        config = Settings(model_metadata=repository / "model.json", **settings)
        return Pipeline(config, ModelMetadata.load(config.model_metadata), executor)

    yield make
    for executor in executors:
        executor.shutdown()


@pytest.fixture
def decoded(monkeypatch):
    """Sizes of the images whose pixels were decoded."""
    sizes: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def counted_load(self):
        sizes.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    return sizes


def prepare(pipeline: Pipeline, uploads: list[Upload], *, deadline_in_s: float = 10.0, **kw):
    kw.setdefault("shortcuts", False)
    kw.setdefault("display_side", None)
    return asyncio.run(
        pipeline.prepare(
            uploads, "classify", {}, deadline=time.perf_counter() + deadline_in_s, **kw
        )
    )


def palette_png(side: int) -> bytes:
    """Compresses to a few KiB however large: the cost is in the decoded pixels."""
    return encode(Image.new("P", (side, side), 3), "PNG")


def test_request_pixel_budget_is_checked_before_any_pixel_is_decoded(make_pipeline, decoded):
    pipeline = make_pipeline(max_request_pixels=10_000_000)
    uploads = [Upload(f"{i}.png", palette_png(2000)) for i in range(3)]  # 3 x 4M pixels
    with pytest.raises(PayloadTooLarge, match=r"12000000 pixels.*MAX_REQUEST_PIXELS.*10000000"):
        prepare(pipeline, uploads)
    assert decoded == []
    assert len(prepare(pipeline, uploads[:2]).tensors) == 2  # 8M: within the budget


def test_jobs_of_a_request_past_its_deadline_are_skipped(make_pipeline, decoded):
    pipeline = make_pipeline()
    uploads = [Upload(f"{i}.png", palette_png(500)) for i in range(4)]
    with pytest.raises(DeadlineExceeded, match="deadline"):
        prepare(pipeline, uploads, deadline_in_s=-0.001)
    assert decoded == []


def test_jpeg_draft_reports_the_full_scale_size_and_crop_box(make_pipeline):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize((3000, 2000), Image.Resampling.BILINEAR)
    jpeg = [Upload("big.jpg", encode(photo, "JPEG", quality=85))]
    full = prepare(make_pipeline(jpeg_draft=False), jpeg)
    draft = prepare(make_pipeline(jpeg_draft=True), jpeg, shortcuts=True)
    assert draft.sizes == full.sizes == [(3000, 2000)]
    assert draft.boxes[0].left == pytest.approx(full.boxes[0].left, abs=8)
    assert draft.boxes[0].right == pytest.approx(full.boxes[0].right, abs=8)


def test_overlay_copies_are_kept_only_at_the_rendered_size(make_pipeline):
    photo = encode(Image.new("RGB", (3000, 1500), (9, 9, 9)), "PNG")
    out = prepare(make_pipeline(), [Upload(None, photo)], display_side=300)
    assert out.displays[0] is not None and out.displays[0].size == (300, 150)
    assert out.sizes == [(3000, 1500)]
    assert prepare(make_pipeline(), [Upload(None, photo)]).displays == [None]


def test_crop_resize_is_a_classify_shortcut_only(make_pipeline):
    """CROP_RESIZE changes /classify's tensors (shortcuts=True) and nothing else: /explain, and
    /classify with CROP_RESIZE=false, resize the whole image as timm does."""
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    upload = [Upload(None, encode(noisy, "PNG"))]
    fast = prepare(make_pipeline(), upload, shortcuts=True).tensors
    exact = prepare(make_pipeline(crop_resize=False), upload, shortcuts=True).tensors
    explain = prepare(make_pipeline(), upload, shortcuts=False).tensors
    assert np.array_equal(explain, exact)
    assert not np.array_equal(fast, exact)
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() <= 0.3
