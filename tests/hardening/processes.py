"""Looking at real processes from the outside (Linux /proc): memory, children, sockets."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def children(pid: int) -> list[int]:
    """Direct children of pid (all its threads' children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return sorted(set(found))


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in children(pid):
        out.append(child)
        out.extend(descendants(child))
    return out


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants (Triton + its python backend stubs)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            total += rss_bytes(p)
    return total


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def established_on_port(pid: int, port: int) -> int:
    """How many established TCP connections to local `port` the process holds."""
    wanted = f"{port:04X}"
    inodes = _socket_inodes(pid)
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = fields[1].split(":")[1], fields[3], fields[9]
            if local_port == wanted and state == "01" and inode in inodes:
                count += 1
    return count
