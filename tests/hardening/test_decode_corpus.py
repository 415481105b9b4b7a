"""Replays the decode fuzzing corpus (fuzz/corpus/decode: seeds, and every input a fuzzing run
found worth keeping) through the fuzz target: decode, then resize and crop at 32 and 224 px.
Only the allowlisted 4xx errors may come out, and each input is done within the time bound."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fuzz.decode import SEEDS, expected_errors, one_input
from service import images

CORPUS = sorted(SEEDS.iterdir())
TIME_BOUND_S = 2.0
# As in the gateway (which does not turn warnings into errors): Pillow warns about broken EXIF
# and then ignores it; the suite's warnings-as-errors would make that a crash the gateway never has.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")


def test_the_corpus_is_there():
    assert len(CORPUS) >= 30, "fuzz/corpus/decode: run python -m fuzz.decode --write-seeds"


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_replay(path: Path):
    data = path.read_bytes()
    start = time.monotonic()
    one_input(data)  # raises anything outside the allowlist
    assert time.monotonic() - start < TIME_BOUND_S


@pytest.mark.parametrize("path", [p for p in CORPUS if not p.name.startswith("regress-")][:8])
def test_truncations_of_valid_files_are_refused_cleanly(path: Path):
    """Every prefix of a valid file, the way uploads are really cut off."""
    data = path.read_bytes()
    for end in range(0, len(data), max(1, len(data) // 40)):
        one_input(data[:end])


def test_the_allowlist_is_what_the_gateway_answers_4xx_with():
    for error in expected_errors():
        assert 400 <= error.status < 500
    with pytest.raises(expected_errors()):
        images.decode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 40_000_000)
