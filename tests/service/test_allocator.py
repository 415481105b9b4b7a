"""Memory a worker keeps, measured in fresh processes: freed upload-sized buffers go back to the
OS (service/allocator.py; after one 30 MiB buffer is freed, glibc's dynamic threshold would keep
the next 15 MiB ones resident), and transparent images are composited without extra copies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

PROGRAM = """
import sys
from service.allocator import keep_big_buffers_out_of_the_heap

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "on":
    assert keep_big_buffers_out_of_the_heap()
big = bytearray(30 * 2**20)
del big
before = rss_mib()
for _ in range(4):
    buffers = [bytearray(b"x" * (15 * 2**20)) for _ in range(2)]
    del buffers
print(rss_mib() - before)
"""


def resident_growth_mib(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc behaviour")
def test_freed_big_buffers_do_not_stay_resident():
    assert resident_growth_mib("off") > 20  # the trap this guards against, measured
    assert resident_growth_mib("on") < 5


DECODE_PROGRAM = """
import io, sys
import numpy as np
from PIL import Image
from service.images import decode

def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

side = 4000
rgba = np.zeros((side, side, 4), np.uint8)
rgba[..., 3] = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
buffer = io.BytesIO()
Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=1)
data = buffer.getvalue()
del rgba
before = peak_mib()
decode(data, 10**8)
print(peak_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_transparent_images_are_composited_without_extra_full_size_copies():
    """A 16 M-pixel RGBA upload is 61 MiB decoded: compositing it on the background used to hold
    four such images at once (RGBA, background, composite, RGB); now the decode and the result."""
    out = subprocess.run(
        [sys.executable, "-c", DECODE_PROGRAM], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert float(out.stdout) < 2 * 61, out.stdout  # measured: 49 MiB now, 171 MiB before
