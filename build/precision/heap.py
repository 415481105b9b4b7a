"""Hands freed heap back to the operating system (stdlib only: the Model Optimizer process imports
it too).

glibc keeps freed blocks below its mmap threshold (which grows to 32 MB once a large block is
freed) in the process's heap, so after a stage that allocated gigabytes of mid-sized tensors (ONNX
Runtime outputs, calibration batches, protobuf copies of a graph) the resident size stays at that
stage's peak until malloc_trim(3) returns the free pages. The build calls it between stages so a
child process started next (Model Optimizer) is not charged for memory the parent no longer uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os


def resident_bytes() -> int:
    """This process's resident set size (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release() -> int:
    """Collect garbage, return free heap pages to the OS; the bytes of resident memory released
    (0 where the C library has no malloc_trim, e.g. musl or macOS)."""
    before = resident_bytes()
    gc.collect()
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)
    return max(0, before - resident_bytes())
