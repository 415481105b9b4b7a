"""Looking at real processes from the outside (Linux /proc): CPU time, memory, children,
sockets, priority; and free loopback ports to start them on. Used by the launchers here, by
loadtest/ (benches), scripts/ (soak, memory) and the tests."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's choice; free until someone binds it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _parents() -> dict[int, list[int]]:
    """Every live process's children, by parent pid."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    return parents


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a live process and its live descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += times.get(current, 0.0)
        stack.extend(children.get(current, []))
    return total


def lower_priority(pid: int, niceness: int) -> None:
    """Set every thread of a process and of its descendants to `niceness` (Linux: nice is per
    thread; threads and processes started later inherit it from their parent)."""
    pids, stack = [], [pid]
    parents = _parents()
    while stack:
        current = stack.pop()
        pids.append(current)
        stack.extend(parents.get(current, []))
    for process in pids:
        for task in Path(f"/proc/{process}/task").glob("*"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)


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
