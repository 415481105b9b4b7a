"""The images a load test sends: a default corpus of real encoded photos of mixed sizes, made
offline, or the user's own files.

Default: the two photographs scikit-learn ships (china.jpg, flower.jpg, 640x427) cut into crops
of many aspect ratios, re-encoded as JPEG with the longer side spread over 300-640 px (most
uploads) plus a few large ones (1024-2048 px, upscaled) whose decode cost dominates. Without
scikit-learn, procedurally generated photo-like images of the same sizes are used instead, and
the corpus says so.
"""

from __future__ import annotations

import importlib.util
import io
import mimetypes
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from service import images, preprocess

SMALL_SIDES = (300, 640)  # longer side of most photos
LARGE_SIDES = (1024, 1280, 1600, 2048)
ASPECTS = (4 / 3, 3 / 2, 1.0, 16 / 9, 3 / 4, 2 / 3)  # width / height
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Corpus:
    source: str  # where the pixels came from, for the report
    photos: list[Photo]

    def summary(self) -> dict:
        sides = [max(p.width, p.height) for p in self.photos]
        return {
            "source": self.source,
            "images": len(self.photos),
            "longer_side_px": [min(sides), max(sides)],
            "large_images": sum(s > SMALL_SIDES[1] for s in sides),
            "mean_kib": round(sum(len(p.data) for p in self.photos) / len(self.photos) / 1024, 1),
        }


def sample_photos() -> list[Image.Image]:
    """scikit-learn's sample photographs, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    return [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.jpg"))]


def generated_photo(rng: random.Random, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Smooth colour gradients, blurred shapes and sensor-like noise: compresses like a photo."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([rng.random() * 255 * (1 - x) + rng.random() * 255 * y for _ in range(3)], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = (x0, y0, x0 + rng.randrange(20, w // 2), y0 + rng.randrange(20, h // 2))
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    img = img.filter(ImageFilter.GaussianBlur(3))
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


def _crop(source: Image.Image, aspect: float, rng: random.Random) -> Image.Image:
    """The largest region of `aspect` that fits, scaled by 60-100%, at a random position."""
    sw, sh = source.size
    w, h = (sw, round(sw / aspect)) if sw / sh < aspect else (round(sh * aspect), sh)
    scale = rng.uniform(0.6, 1.0)
    w, h = max(16, round(w * scale)), max(16, round(h * scale))
    left, top = rng.randrange(sw - w + 1), rng.randrange(sh - h + 1)
    return source.crop((left, top, left + w, top + h))


def default_corpus(count: int = 24, large: int = 4, seed: int = 0) -> Corpus:
    """`count` JPEGs, of which `large` have a longer side of 1024-2048 px."""
    rng = random.Random(seed)
    sources = sample_photos()
    source = "scikit-learn sample photos (china.jpg, flower.jpg)"
    if not sources:
        sources = [generated_photo(rng) for _ in range(2)]
        source = "generated photo-like images (scikit-learn not installed)"
    photos = []
    for index in range(count):
        aspect = ASPECTS[index % len(ASPECTS)]
        is_large = index >= count - large
        side = LARGE_SIDES[index % len(LARGE_SIDES)] if is_large else rng.randint(*SMALL_SIDES)
        size = (side, round(side / aspect)) if aspect >= 1 else (round(side * aspect), side)
        img = _crop(sources[index % len(sources)], aspect, rng).resize(
            size, Image.Resampling.LANCZOS
        )
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=rng.choice((75, 85, 90, 95)), progressive=index % 5 == 0)
        photos.append(
            Photo(
                f"photo-{index:02d}-{size[0]}x{size[1]}.jpg", buffer.getvalue(), "image/jpeg", *size
            )
        )
    return Corpus(source, photos)


def from_paths(paths: list[Path]) -> Corpus:
    """The user's own images: files, or every image file in the folders given."""
    files: list[Path] = []
    for path in paths:
        found = sorted(path.iterdir()) if path.is_dir() else [path]
        files.extend(p for p in found if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(EXTENSIONS))}) in {paths}")
    photos = []
    for file in files:
        data = file.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        photos.append(Photo(file.name, data, kind, width, height))
    return Corpus(", ".join(str(p) for p in paths), photos)


def tensors(corpus: Corpus, spec: preprocess.Spec) -> list[np.ndarray]:
    """Each photo decoded and preprocessed exactly as the gateway does: uint8 [3, H, W]."""
    out = []
    for photo in corpus.photos:
        img = images.decode(photo.data, max_pixels=1 << 31)
        out.append(preprocess.preprocess(img, spec)[0])
    return out
