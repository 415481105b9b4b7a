"""JPEG uploads to Triton as bytes (gpu target built with make repo --preprocess dali): Triton's
<model>_jpeg ensemble decodes, resizes and crops them on the GPU (DALI), so the gateway does not.

Only /classify, and only when every upload of the request qualifies; otherwise the request takes
the usual path (decode and resize here), which also names any limit an upload breaks:
  * model.json names the ensembles, JPEG_TO_TRITON is on, and Triton serves <model><suffix>;
  * the upload is a JPEG (sniffed from its bytes), YCbCr or greyscale (CMYK and the rest decode
    here), within MAX_IMAGE_PIXELS and MAX_ASPECT_RATIO, the request within MAX_REQUEST_PIXELS:
    the same header checks as every upload, before anything is sent (on the event loop for one
    upload with a short header, else in the pool: INLINE_HEADER_BYTES);
  * the file ends with the JPEG end-of-image marker: Triton's DALI backend answers every request
    of a batch with the error of one undecodable file, so a truncated upload must not reach it.
If the ensemble still fails (triton_error or triton_unavailable), the request is decoded here and
sent as tensors: a bad file then gets the usual 4xx, the rest their answer. Queue-full and timeout
errors are not retried (that would add load when there is least room).
/explain always decodes here: its overlay and crop box need the decoded image.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service import images, metrics, names
from service.config import Settings
from service.errors import TritonFailed, TritonUnavailable
from service.inputs import Upload
from service.model_info import JpegEnsembles
from service.triton import TritonBackend, Variant

DECODED_BY_DALI = ("RGB", "L")  # Pillow's modes for YCbCr and greyscale JPEGs
END_OF_IMAGE = b"\xff\xd9"
# A one-upload request whose JPEG header (everything before the scan) fits in this many bytes is
# checked on the event loop: ~0.1 core-ms a check there against ~0.2 with the hop to a pool thread
# and back (scripts/bench_jpeg_call.py, docs/benchmarks.md). The bound caps what a hostile header
# costs the loop: Pillow parses a segment in 2-5 µs, and 1,000 tiny ones took 1.5-5 ms. Longer
# headers (EXIF thumbnails, ICC profiles) and several uploads are checked in the pool.
INLINE_HEADER_BYTES = 4096


def check(
    data: bytes, max_pixels: int, max_aspect_ratio: float | None, header_bytes: int | None = None
) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation if this upload may go to Triton as bytes, from its
    header alone; None if it takes the usual path. header_bytes: parse at most the file's first
    header_bytes (None: no bound); a header longer than that answers None."""
    if not data.endswith(END_OF_IMAGE):
        return None
    head = data if header_bytes is None else data[:header_bytes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(head), formats=("JPEG",)) as img:
                width, height = img.size
                if img.mode not in DECODED_BY_DALI or width <= 0 or height <= 0:
                    return None
                orientation = img.getexif().get(images.ORIENTATION, 1)
        except Exception:  # not a JPEG Pillow can read: the usual path says why
            return None
    if width * height > max_pixels:
        return None
    if max_aspect_ratio is not None and max(width, height) / min(width, height) > max_aspect_ratio:
        return None
    return (height, width) if orientation in images.SWAPS_SIDES else (width, height)


@dataclass
class Classified:
    logits: np.ndarray
    sizes: list[tuple[int, int]]


class JpegPath:
    def __init__(
        self,
        settings: Settings,
        ensembles: JpegEnsembles,
        triton: TritonBackend,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.settings = settings
        self.ensembles = ensembles
        self.triton = triton
        self.executor = executor

    def _check_all(
        self, uploads: list[Upload], header_bytes: int | None = None
    ) -> list[tuple[int, int]] | None:
        s = self.settings
        sizes = []
        for upload in uploads:
            size = check(upload.data, s.max_image_pixels, s.max_aspect_ratio, header_bytes)
            if size is None:
                return None
            sizes.append(size)
        if sum(w * h for w, h in sizes) > s.max_request_pixels:
            return None
        return sizes

    async def classify(
        self,
        variant: Variant,
        uploads: list[Upload],
        endpoint: str,
        timings: dict[str, float],
        deadline_s: float,
    ) -> Classified | None:
        """Logits from the variant's JPEG ensemble, or None: decode here instead."""
        model = variant.name + self.ensembles.suffix
        # The ensemble runs the newest loaded version of its model (its steps name no version):
        # that is the request's only when the variant's version is the newest (not while a
        # rollback has the newer one still loaded; docs/versions.md).
        if not variant.latest or not self.triton.is_ready(model):
            return None
        loop = asyncio.get_running_loop()
        with metrics.stage(endpoint, "header", timings):
            sizes = self._check_all(uploads, INLINE_HEADER_BYTES) if len(uploads) == 1 else None
            if sizes is None:  # a longer header, several uploads, or not for Triton after all
                sizes = await loop.run_in_executor(self.executor, self._check_all, uploads)
        if sizes is None:
            return None
        try:
            with metrics.stage(endpoint, "triton", timings):
                files = [u.data for u in uploads]
                out = await self.triton.infer_jpeg(
                    model, self.ensembles.input, files, [names.LOGITS], deadline_s
                )
        except (TritonFailed, TritonUnavailable):
            metrics.JPEG_IMAGES.labels("fallback").inc(len(uploads))
            return None
        metrics.JPEG_IMAGES.labels("sent").inc(len(uploads))
        return Classified(out[names.LOGITS], sizes)
