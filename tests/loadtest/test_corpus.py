"""The default corpus: real encoded photos of mixed sizes, made offline and deterministically,
and their preprocessed tensors identical to what the gateway computes."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

from loadtest import corpus as corpora
from service import images, preprocess

SPEC_224 = preprocess.Spec(224, 224, "bicubic", 0.9)


def test_default_corpus_is_real_jpeg_photos_of_mixed_sizes():
    corpus = corpora.default_corpus()
    assert corpus.source.startswith("scikit-learn sample photos")
    assert len(corpus.photos) == 24
    sides = []
    for photo in corpus.photos:
        with Image.open(io.BytesIO(photo.data)) as img:
            assert img.format == "JPEG" and img.size == (photo.width, photo.height)
            img.load()  # decodes completely
        sides.append(max(photo.width, photo.height))
    small = [s for s in sides if s <= 640]
    assert len(small) == 20 and min(small) >= 300 and max(small) - min(small) > 200
    assert sorted(s for s in sides if s > 640) == [1024, 1280, 1600, 2048]
    assert len({round(p.width / p.height, 2) for p in corpus.photos}) >= 5  # mixed aspect ratios
    # Real photo content: JPEG sizes vary widely with the picture (not flat synthetic colour).
    assert np.std([len(p.data) / (p.width * p.height) for p in corpus.photos]) > 0.02
    assert [p.data for p in corpora.default_corpus().photos] == [p.data for p in corpus.photos]


def test_generated_photos_are_the_offline_fallback():
    img = corpora.generated_photo(random.Random(0), (320, 240))
    assert img.size == (320, 240) and np.asarray(img).std() > 10


def test_tensors_are_the_gateways_preprocessing():
    corpus = corpora.default_corpus(count=3, large=1)
    tensors = corpora.tensors(corpus, SPEC_224)
    assert [t.shape for t in tensors] == [(3, 224, 224)] * 3 and tensors[0].dtype == np.uint8
    expected, _ = preprocess.preprocess(images.decode(corpus.photos[2].data, 10**8), SPEC_224)
    assert np.array_equal(tensors[2], expected)


def test_users_own_images_from_a_folder(tmp_path: Path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    Image.new("RGB", (20, 50), "blue").save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    corpus = corpora.from_paths([tmp_path])
    assert [(p.name, p.content_type, p.width, p.height) for p in corpus.photos] == [
        ("a.png", "image/png", 40, 30),
        ("b.jpg", "image/jpeg", 20, 50),
    ]
