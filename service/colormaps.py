"""Perceptual colormaps as 256-entry RGB lookup tables (uint8), from the `cmap` library.

`cmap` ships the published colormap data (matplotlib's inferno, viridis, magma, plasma and cividis
by van der Walt, Smith and Nuñez; Google's turbo) and needs only numpy, so the gateway carries
neither matplotlib nor hand-kept tables. The tables equal the ones this module used to hold
(tests/service/test_colormaps.py).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from cmap import Colormap

# API name -> cmap catalog name (namespaced, so a catalog change cannot swap the data silently).
_CATALOG = {
    "inferno": "bids:inferno",
    "viridis": "bids:viridis",
    "magma": "bids:magma",
    "plasma": "bids:plasma",
    "cividis": "cividis:cividis",
    "turbo": "google:turbo",
}
COLORMAPS = tuple(_CATALOG)
DEFAULT_COLORMAP = "inferno"


@cache
def lut(name: str) -> np.ndarray:
    """(256, 3) uint8 table for a colormap name (read-only; computed once per name)."""
    rgba = Colormap(_CATALOG[name]).lut(256)
    table = np.clip(np.rint(rgba[:, :3] * 255.0), 0, 255).astype(np.uint8)
    table.setflags(write=False)
    return table


def hex_table(name: str) -> str:
    """The table as 768 hex digit pairs (RGB per entry): compact for the demo page."""
    return lut(name).tobytes().hex()
