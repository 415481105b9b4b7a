"""Which uploads the gateway may send to Triton as JPEG bytes (service/jpeg_path.py check()): read
from real encoded files' headers only; the rest take the usual path, which names any limit."""

from __future__ import annotations

import pytest
from PIL import Image

from service.jpeg_path import check
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
