"""One writer per run folder and per cache: an OS file lock beside the folder.

Two processes writing one `out_dir` (or one cache path, or one papermill run folder) interleave
their files and lose a result without an error. The lock is `.<name>.<role>.lock` beside the
folder, taken with `flock` before anything is checked or written and held until the writer is
done; the OS releases it when its process dies, so a crash never leaves a folder locked. The file
holds the holder's PID and goes on a clean release: a second writer is refused at once, naming
it, and a lock file left by a process that no longer runs is taken over, and said so. Roles
keep layers apart: the papermill runner holds `run` on its folder while the notebook's own
`sl.train` holds `train` on the same folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Locked(RuntimeError):
    """Another live process is writing the folder."""


def lock_path(folder: str | os.PathLike, role: str) -> Path:
    """The lock file of `folder` for `role` (`train`, `cache`, `run`): a hidden sibling."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.{role}.lock"


def _holder(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (someone else's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextmanager
def writer_lock(folder: str | os.PathLike, role: str) -> Iterator[Path]:
    """Hold `folder`'s `role` lock for the block (yields the lock file's path).

    Raises `Locked` at once, naming the holder's PID, when another process holds it.
    """
    path = lock_path(folder, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, folder, role)
    previous = _holder(fd)
    if previous not in (None, os.getpid()) and not alive(previous):
        warnings.warn(
            f"{folder}: took over the {role} lock of process {previous}, which no longer runs "
            "(it stopped without releasing it; what it left is checked as usual)",
            stacklevel=3,
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # still held: a newcomer makes a fresh file (`_acquire`)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(path: Path, folder, role: str) -> int:
    """Open and lock `path`; the open file descriptor. Retries when the file was removed by its
    releasing holder between our open and our lock (then we hold a lock on a dead file)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise Locked(
                f"{folder} is being written by {who} ({role} lock {path}); wait for it to "
                "finish, stop it, or choose another folder"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # released and removed meanwhile: lock the file that is there now


def swap_in(tmp: Path, path: Path) -> None:
    """A writer's last step: rename the complete folder `tmp` to `path`; a folder already at
    `path` (the caller decided it may go) is renamed aside first and removed after, so a kill
    at any point leaves either the old folder or the new one whole."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old)
