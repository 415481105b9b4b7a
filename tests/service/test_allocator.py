"""Freed upload-sized buffers go back to the OS (service/allocator.py), in a fresh process:
after one 30 MiB buffer is freed, glibc's dynamic threshold would keep the next 15 MiB ones
resident."""

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
