"""Atomic builds: a build writes a complete repository into a new sibling directory and swaps it
in only after every check and gate passed, so a failed, refused or killed build never changes a
byte of what Triton serves (the cpu models hard-link their ONNX inside the same tree, so the old
tree stays whole until the swap).

  model_repository/                   what is served
  model_repository.staging-<pid>/     a build in progress (a killed build's is removed by the next)
  model_repository.rejected/          the last refused build: its report and graphs, to inspect

The swap is one renameat2(RENAME_EXCHANGE) on Linux; elsewhere two renames, with the previous
tree parked at model_repository.previous (restored by the next build if a kill fell in between).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(f"{out.name}.{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(tree: Path, what: str) -> bool:
    """Deletes as much of `tree` as it can and never raises: what is left (files another user
    owns, e.g. root's from a container) is named in one warning, and the next build tries again."""
    shutil.rmtree(tree, ignore_errors=True)
    if not tree.exists():
        return True
    log.warning(
        "could not remove %s (%s): it holds files this user may not delete; the next build "
        "tries again (or: sudo rm -rf %s)",
        tree,
        what,
        tree,
    )
    return False


def recover(out: Path) -> None:
    """Undo what a killed build left behind: its staging tree, or a swap cut in half; remove
    the previous repository a swap could not delete."""
    previous = _sibling(out, "previous")
    if previous.is_dir():
        if out.exists():
            _remove(previous, "the previously served repository")
        else:
            previous.rename(out)
            log.info("restored %s from an interrupted swap", out)
    for stale in out.parent.glob(f"{out.name}.staging-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)) and _remove(stale, "left by an earlier build"):
            log.info("removed %s, left by an earlier build", stale.name)


def new_stage(out: Path) -> Path:
    recover(out)
    stage = _sibling(out, f"staging-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def _exchange(a: Path, b: Path) -> bool:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    c_int, c_path = ctypes.c_int, ctypes.c_char_p
    renameat2.argtypes = [c_int, c_path, c_int, c_path, ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def swap_in(stage: Path, out: Path) -> None:
    """Make the finished stage the served repository; the old one is deleted afterwards. Once
    swapped, nothing raises: an old tree that cannot be deleted is left for the next build."""
    if not out.exists():
        stage.rename(out)
        return
    if _exchange(stage, out):
        _remove(stage, "the previously served repository")  # the stage now holds the old tree
        return
    previous = _sibling(out, "previous")
    _remove(previous, "the previously served repository")
    out.rename(previous)
    stage.rename(out)
    _remove(previous, "the previously served repository")


def reject(stage: Path, out: Path) -> Path:
    """Keep a refused build beside the served one, for its report; returns where."""
    rejected = _sibling(out, "rejected")
    shutil.rmtree(rejected, ignore_errors=True)
    stage.rename(rejected)
    return rejected


def discard(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
