"""What a starting tritonserver is doing, for a launcher that waits as long as it makes progress.

Triton opens its HTTP endpoint only after every model has loaded (--load-model=* at start), so
while a 224-px repository loads on 2 cores (minutes: OpenVINO compiles and warms every batch
bucket of every instance) the only signs of life are its log and its CPU time. This module reads
both: which models loaded or failed (Triton's own log lines), and the CPU seconds of its process
session (tritonserver and its python-backend stubs). A hung load shows neither.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

# Triton 2.51's model_lifecycle.cc lines (the message may be wrapped in double quotes):
#   I1203 12:00:01.000 42 model_lifecycle.cc:849] "successfully loaded 'vit_classify_fp32'"
#   E1203 12:00:01.000 42 model_lifecycle.cc:654] "failed to load 'vit_x' version 1: Internal: ..."
_LOADED = re.compile(r"successfully loaded '([^']+)'")
_FAILED = re.compile(r"failed to load '([^']+)'(?: version \d+)?: (.*)")


def repository_models(repository: Path) -> list[str]:
    """The models Triton will load from a repository (every folder with a config.pbtxt)."""
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


class LoadProgress:
    """Models loaded and failed so far, fed line by line from Triton's output (any thread)."""

    def __init__(self, expected: Iterable[str]) -> None:
        self.expected = list(expected)
        self.loaded: list[str] = []
        self.failed: dict[str, str] = {}
        self._lock = threading.Lock()

    def feed(self, line: str) -> bool:
        """Reads one log line; True when it finished a model (loaded or failed)."""
        if match := _LOADED.search(line):
            with self._lock:
                self.loaded.append(match[1])
            return True
        if match := _FAILED.search(line):
            reason = match[2].strip().rstrip('"').replace('\\"', '"')
            with self._lock:
                self.failed.setdefault(match[1], reason)
            return True
        return False

    @property
    def finished(self) -> int:
        with self._lock:
            return len(self.loaded) + len(self.failed)

    def loading(self) -> list[str]:
        with self._lock:
            done = {*self.loaded, *self.failed}
        return [m for m in self.expected if m not in done]

    def summary(self) -> str:
        """One line: e.g. '4/9 models loaded; still loading vit_explain_fp32, vit_...'."""
        with self._lock:
            loaded, failed = len(self.loaded), dict(self.failed)
        text = f"{loaded}/{len(self.expected)} models loaded"
        if failed:
            name, reason = next(iter(failed.items()))
            text += f"; {name} failed to load: {reason.splitlines()[0][:300]}"
        waiting = self.loading()
        if waiting:
            shown = ", ".join(waiting[:3]) + (
                f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
            )
            text += f"; still loading {shown}"
        return text


def session_cpu_seconds(session_id: int, proc: Path = Path("/proc")) -> float:
    """User + system CPU seconds of every live process in a session (Linux /proc): tritonserver
    was started as a session leader, its python-backend stubs are its children in that session."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # Fields after the command name (which may hold spaces and parentheses): state is
        # field 3, session field 6, utime and stime fields 14 and 15 (proc(5)).
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 12 and int(fields[3]) == session_id:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


class LogFollower:
    """Forwards Triton's output line by line to `sink` (a log file or the terminal) and feeds
    each line to `progress`; runs in a daemon thread until the pipe closes."""

    def __init__(self, stream: IO[bytes], sink: IO[str], progress: LoadProgress) -> None:
        self.progress = progress
        self.last_finished = time.monotonic()
        self._stream = stream
        self._sink = sink
        self._thread = threading.Thread(target=self._follow, name="triton-log", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            try:
                self._sink.write(line)
                self._sink.flush()
            except (OSError, ValueError):  # the sink was closed: keep draining the pipe
                pass
            if self.progress.feed(line):
                self.last_finished = time.monotonic()
        self._stream.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
