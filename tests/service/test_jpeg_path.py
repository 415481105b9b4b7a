"""Which uploads the gateway may send to Triton as JPEG bytes (service/jpeg_path.py check()): read
from real encoded files' headers only; the rest take the usual path, which names any limit."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.inputs import Upload
from service.jpeg_path import INLINE_HEADER_BYTES, JpegPath, check
from service.model_info import JpegEnsembles
from service.triton import Variant
from tests.helpers import encode

LIMIT = 40_000_000


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    import random

    from loadtest.corpus import generated_photo

    return generated_photo(random.Random(0), (320, 200))


def test_a_complete_ycbcr_or_greyscale_jpeg_goes_as_bytes(photo):
    assert check(encode(photo, "JPEG"), LIMIT, 50.0) == (320, 200)
    assert check(encode(photo.convert("L"), "JPEG", progressive=True), LIMIT, 50.0) == (320, 200)


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_the_size_is_reported_after_exif_orientation(photo, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation  # these turn the image by 90 degrees, as DALI's decoder does
    assert check(encode(photo, "JPEG", exif=exif.tobytes()), LIMIT, 50.0) == (200, 320)


def test_other_files_take_the_usual_path(photo):
    jpeg = encode(photo, "JPEG")
    assert check(jpeg[: len(jpeg) // 2], LIMIT, 50.0) is None  # truncated: no end marker
    assert check(jpeg + b"trailing bytes", LIMIT, 50.0) is None
    assert check(encode(photo.convert("CMYK"), "JPEG"), LIMIT, 50.0) is None
    assert check(encode(photo, "PNG"), LIMIT, 50.0) is None
    assert check(b"\xff\xd8 not really a JPEG \xff\xd9", LIMIT, 50.0) is None
    assert check(b"", LIMIT, 50.0) is None


def test_limits_send_the_upload_the_usual_way_which_names_them(photo):
    jpeg = encode(photo, "JPEG")
    assert check(jpeg, 320 * 200 - 1, 50.0) is None  # MAX_IMAGE_PIXELS
    assert check(jpeg, LIMIT, 1.5) is None  # MAX_ASPECT_RATIO (320 / 200 = 1.6)
    assert check(jpeg, LIMIT, None) == (320, 200)


def test_a_header_longer_than_the_inline_bound_is_not_read_past_it(photo):
    jpeg = encode(photo, "JPEG")
    assert len(jpeg.split(b"\xff\xda")[0]) < INLINE_HEADER_BYTES  # a usual header
    assert check(jpeg, LIMIT, 50.0, INLINE_HEADER_BYTES) == (320, 200)
    profiled = encode(photo, "JPEG", icc_profile=b"\0" * 10_000)  # the header runs past it
    assert check(profiled, LIMIT, 50.0, INLINE_HEADER_BYTES) is None
    assert check(profiled, LIMIT, 50.0) == (320, 200)  # the pool's check has no bound


class CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.jobs = 0

    def submit(self, fn, /, *args, **kwargs):
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


class SentTriton:
    """What JpegPath needs of TritonBackend: the ensemble is ready, and files are recorded."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def is_ready(self, model: str) -> bool:
        return model == "vit_classify_fp32_jpeg"

    async def infer_jpeg(self, model, input_name, files, outputs, deadline_s):
        self.sent.append(files)
        return {"logits": np.zeros((len(files), 10), np.float32)}


@pytest.mark.parametrize(
    ("case", "pool_jobs"),
    [("one upload, a usual header", 0), ("one upload, a long header", 1), ("two uploads", 1)],
)
def test_headers_are_checked_on_the_event_loop_only_for_one_short_header(
    photo, repository, case, pool_jobs
):
    """One upload with a short header skips the hop to the pool (service/jpeg_path.py
    INLINE_HEADER_BYTES); a longer header, or several uploads, are checked there; all go as
    bytes."""
    usual = encode(photo, "JPEG")
    uploads = {
        "one upload, a usual header": [usual],
        "one upload, a long header": [encode(photo, "JPEG", icc_profile=b"\0" * 10_000)],
        "two uploads": [usual, usual],
    }[case]
    pool, triton = CountingPool(), SentTriton()
    path = JpegPath(
        Settings(model_metadata=repository / "model.json"),
        JpegEnsembles("_jpeg", "jpeg"),
        triton,
        pool,
    )
    variant = Variant("vit_classify_fp32", "classify", "fp32", 8)
    try:
        got = asyncio.run(
            path.classify(variant, [Upload(None, d) for d in uploads], "classify", {}, 5.0)
        )
    finally:
        pool.shutdown()
    assert got is not None and got.sizes == [(320, 200)] * len(uploads)
    assert triton.sent == [uploads] and pool.jobs == pool_jobs


def test_a_version_older_than_the_newest_loaded_is_decoded_here(photo, repository):
    """While a rollback has the newer version still loaded, the ensemble (which runs the newest)
    is not the request's version: the gateway decodes, and its tensors name the version."""
    pool, triton = CountingPool(), SentTriton()
    path = JpegPath(
        Settings(model_metadata=repository / "model.json"),
        JpegEnsembles("_jpeg", "jpeg"),
        triton,
        pool,
    )
    older = Variant("vit_classify_fp32", "classify", "fp32", 8, version="1", latest=False)
    try:
        got = asyncio.run(
            path.classify(older, [Upload(None, encode(photo, "JPEG"))], "classify", {}, 5.0)
        )
    finally:
        pool.shutdown()
    assert got is None and triton.sent == [] and pool.jobs == 0
