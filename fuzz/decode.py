"""Decode fuzzing: atheris (coverage-guided, libFuzzer) over what the gateway does with untrusted
bytes: decode (format sniffing, header checks, EXIF, mode conversion), then the model's resize and
crop at the default 32-px spec and at 224 px, then the overlay's display copy.

  python -m fuzz.decode --seconds 60     # fuzz; new inputs go to .run/fuzz-decode/corpus
  python -m fuzz.decode --write-seeds    # (re)write the seed corpus in fuzz/corpus/decode

A crash is any exception other than the service's own 4xx errors (the allowlist: what the API
answers bad images with). libFuzzer writes the input that crashed to .run/fuzz-decode/crash-*;
copy it into fuzz/corpus/decode/ so that tests/hardening/test_decode_corpus.py replays it forever.
"""

from __future__ import annotations

import argparse
import io
import sys
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "corpus" / "decode"
WORK = ROOT / ".run" / "fuzz-decode"
MAX_PIXELS = 40_000_000  # the gateway's defaults (service/config.py)
MAX_ASPECT_RATIO = 50.0
DISPLAY_SIDE = 256


def specs() -> list:
    from service.preprocess import Spec

    return [Spec(32, 32, "bicubic", 1.0), Spec(224, 224, "bicubic", 0.9)]


def expected_errors() -> tuple[type[Exception], ...]:
    """The allowlist: what the gateway answers a bad image with (400, 413, 415, 422)."""
    from service.errors import (
        CorruptImage,
        PayloadTooLarge,
        UnprocessableImage,
        UnsupportedMediaType,
    )

    return (CorruptImage, PayloadTooLarge, UnprocessableImage, UnsupportedMediaType)


def one_input(data: bytes) -> None:
    """The target: returns normally or raises one of expected_errors(), which it swallows; any
    other exception is a finding."""
    from service import heatmap, images, preprocess

    try:
        for spec in specs():
            img, _size = images.decode_sized(
                data,
                MAX_PIXELS,
                (255, 255, 255),
                draft=partial(preprocess.draft_request, spec=spec),
                max_aspect_ratio=MAX_ASPECT_RATIO,
            )
            tensor, _box = preprocess.preprocess(img, spec)
            assert tensor.shape == (3, spec.height, spec.width) and tensor.dtype == np.uint8
            heatmap.display_copy(img, DISPLAY_SIDE)
    except expected_errors():
        pass


def seeds() -> dict[str, bytes]:
    """Small valid files of every format and the modes that matter (each a few hundred bytes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "RGB")
    files: dict[str, bytes] = {}

    def save(name: str, img: Image.Image, fmt: str, **options: object) -> None:
        buffer = io.BytesIO()
        img.save(buffer, format=fmt, **options)
        files[name] = buffer.getvalue()

    save("rgb.png", rgb, "PNG")
    save("rgba.png", rgb.convert("RGBA"), "PNG")
    save("la.png", rgb.convert("LA"), "PNG")
    save("l_trns.png", rgb.convert("L"), "PNG", transparency=0)
    save("rgb_trns.png", rgb, "PNG", transparency=(0, 0, 0))
    save("p_trns.png", rgb.convert("P"), "PNG", transparency=3)
    save("bilevel.png", rgb.convert("1"), "PNG")
    save("i16.png", Image.fromarray(np.arange(192, dtype=np.uint16).reshape(12, 16) * 300), "PNG")
    save("baseline.jpg", rgb, "JPEG")
    save("progressive.jpg", rgb, "JPEG", progressive=True)
    save("cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    save("grey.jpg", rgb.convert("L"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif6.jpg", rgb, "JPEG", exif=exif)
    save("lossy.webp", rgb, "WEBP")
    save("lossless.webp", rgb.convert("RGBA"), "WEBP", lossless=True)
    frames = [rgb.rotate(90 * i) for i in range(3)]
    save("animated.webp", frames[0], "WEBP", save_all=True, append_images=frames[1:])
    save("still.gif", rgb.convert("P"), "GIF")
    save("animated.gif", frames[0].convert("P"), "GIF", save_all=True, append_images=frames[1:])
    save("rgb.bmp", rgb, "BMP")
    save("p.bmp", rgb.convert("P"), "BMP")
    save("strip.png", Image.new("L", (1, 60)), "PNG")
    return files


def write_seeds() -> None:
    SEEDS.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (SEEDS / name).write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {SEEDS}")


def fuzz(seconds: int) -> None:
    import atheris

    # Pillow must not be imported before this: its Python plugins (headers, chunks, EXIF) are
    # what atheris can instrument; the C decoders behind them are exercised, not instrumented.
    assert "PIL" not in sys.modules, "import Pillow only inside instrument_imports"
    with atheris.instrument_imports(include=["PIL", "service"]):
        from PIL import (  # noqa: F401
            BmpImagePlugin,
            GifImagePlugin,
            Image,
            ImageOps,
            JpegImagePlugin,
            PngImagePlugin,
            TiffImagePlugin,
            WebPImagePlugin,
        )  # fmt: skip

        from service import heatmap, images, preprocess  # noqa: F401

    def target(data: bytes) -> None:
        one_input(data)

    corpus = WORK / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        "-timeout=10",  # one input taking longer is a finding (unbounded work)
        "-rss_limit_mb=3072",
        f"-artifact_prefix={WORK}/",
        str(corpus),  # new inputs are written to the first directory
        str(SEEDS),
    ]
    atheris.Setup(args, target)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60, help="time box for the fuzzing")
    parser.add_argument("--write-seeds", action="store_true")
    args = parser.parse_args(argv)
    if args.write_seeds:
        write_seeds()
        return 0
    fuzz(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
