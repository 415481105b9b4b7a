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


BLOCKS_PROGRAM = """
import io, resource, sys
import numpy as np
from PIL import Image
from service import allocator
from service.images import decode

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def jpeg(w, h):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()

assert allocator.keep_big_buffers_out_of_the_heap()
if sys.argv[1] == "on":
    allocator.reuse_pillow_blocks()
photo, big = jpeg(500, 375), jpeg(4000, 4000)
decode(photo, 10**8)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    decode(photo, 10**8)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 20
before = rss_mib()
decode(big, 10**8)  # 61 MiB decoded
print(faults, rss_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc behaviour, reads /proc")
def test_pillow_keeps_a_few_decode_buffers_and_no_more():
    """reuse_pillow_blocks: a photo's decode reuses the previous one's pages instead of faulting
    in fresh ones, and a 61 MiB decode leaves at most the kept blocks (8 x 2 MiB) resident."""

    def run(mode: str) -> tuple[float, float]:
        out = subprocess.run(
            [sys.executable, "-c", BLOCKS_PROGRAM, mode],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        faults, growth = out.stdout.split()
        return float(faults), float(growth)

    faults_off, _ = run("off")
    faults_on, growth_on = run("on")
    assert faults_on < faults_off / 2, (faults_on, faults_off)  # measured: 0.15 vs 184 per decode
    assert growth_on < 16 + 4, growth_on
