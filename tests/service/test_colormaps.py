"""Colormaps come from the `cmap` library: parity with the hand-kept tables they replaced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.colormaps import COLORMAPS, DEFAULT_COLORMAP, hex_table, lut

# The tables service/colormaps.py held before it used `cmap`, captured byte for byte.
BEFORE = json.loads((Path(__file__).parent / "data" / "colormaps_before_cmap.json").read_text())


@pytest.mark.parametrize("name", sorted(BEFORE["tables"]))
def test_library_tables_equal_the_hand_kept_ones(name):
    before = np.frombuffer(bytes.fromhex(BEFORE["tables"][name]), np.uint8).reshape(256, 3)
    assert np.array_equal(lut(name), before)


def test_every_colormap_is_256_rgb_entries_dark_to_bright():
    assert DEFAULT_COLORMAP in COLORMAPS and set(BEFORE["tables"]) <= set(COLORMAPS)
    for name in COLORMAPS:
        table = lut(name)
        assert table.shape == (256, 3) and table.dtype == np.uint8
        assert not table.flags.writeable  # shared across requests: nobody may change it
        assert len(np.unique(table, axis=0)) > 200  # a real gradient, not a few colours
        assert bytes.fromhex(hex_table(name)) == table.tobytes()
    for name in ("inferno", "viridis", "magma", "plasma", "cividis"):  # sequential: luminance up
        luminance = lut(name).astype(float) @ [0.2126, 0.7152, 0.0722]
        assert luminance[-1] > luminance[0] + 150
