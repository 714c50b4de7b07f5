"""Writes that land whole or not at all, and a full disk that says so.

Every file saelab writes (an SAE, a checkpoint, a token cache, a manifest) goes to a temporary
file beside its target and is renamed into place when complete, so a kill leaves the previous
file whole. The temporary name carries the writer's host and PID (`.<name>.<host>~<pid>~<tag>.tmp`)
so the next write of the same file on that host removes what a dead writer left behind, and
writers on two hosts sharing a disk never collide. A full disk (or a file-size or quota limit)
surfaces from torch as "unexpected pos 663168 vs 663056" and from safetensors as an "I/O error";
both become a `DiskFullError` naming the path and the free space, and the partial file is
removed so that retries do not fill the disk further.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from saelab.core.locks import alive, swap_in

# ENOSPC: disk full; EDQUOT: quota; EFBIG: a file-size limit (ulimit -f), which is how tests fill
# a disk without one.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# What torch's zip writer and safetensors' Rust writer say instead of an errno.
_NO_SPACE_TEXT = re.compile(
    r"unexpected pos \d+ vs \d+|file write failed|No space left|File too large|quota exceeded"
    r"|os error (28|27|122)\b",
    re.IGNORECASE,
)


class DiskFullError(OSError):
    """A write ran out of space; the message names the file and the free space left."""


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` (from open/write, torch.save or safetensors) means the disk is full."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return True
    return bool(_NO_SPACE_TEXT.search(str(exc)))


def _free(path: Path) -> str:
    for p in (path, *path.parents):
        if p.exists():
            return f"{shutil.disk_usage(p).free / 2**20:,.1f} MiB free there"
    return "free space unknown"


def disk_full(path: Path, exc: BaseException, removed: str = "the partial file") -> DiskFullError:
    """The error to raise for `exc` raised while writing `path`."""
    return DiskFullError(
        errno.ENOSPC,
        f"no space left writing {path} ({_free(path)}; {type(exc).__name__}: {exc}); "
        f"{removed} was removed. Free some space, or write somewhere else",
    )


@contextmanager
def naming_full_disk(path: Path, removed: str = "the partial folder") -> Iterator[None]:
    """Re-raise a full-disk error inside the block as a `DiskFullError` naming `path` (the
    caller removes its own partial output)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_no_space(e):
            raise disk_full(path, e, removed) from e
        raise


def writer_id() -> str:
    """This writer's part of a temporary name: host, PID and a random tag (`host~pid~tag`), so
    writers on two hosts sharing a disk (or two containers with the same PID) never collide."""
    return f"{socket.gethostname()}~{os.getpid()}~{secrets.token_hex(3)}"


def _dead_writer(text: str) -> bool:
    """Whether `host~pid~tag` names a writer on this host whose process no longer runs. A writer
    on another host is never judged dead from here."""
    parts = text.split("~")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    return pid != os.getpid() and not alive(pid)


def remove_leftovers(path: Path, kind: str = "tmp") -> list[Path]:
    """Remove what dead writers of `path` on this host left beside it: files
    `.<name>.<writer>.tmp` (`kind="tmp"`) or folders `.<name>.<kind>-<writer>` (an export's);
    those removed."""
    gone = []
    if kind == "tmp":
        head, tail = f".{path.name}.", ".tmp"
    else:
        head, tail = f".{path.name}.{kind}-", ""
    for left in path.parent.glob(f"{head}*{tail}"):
        if _dead_writer(left.name[len(head) : len(left.name) - len(tail)]):
            if left.is_dir():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)
            gone.append(left)
    return gone


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`.

    On any failure the temporary file is removed; a full disk raises `DiskFullError` naming
    `path`. Temporary files left by killed writers of the same `path` are removed first.
    """
    path = Path(path)
    remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.{writer_id()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, DiskFullError) and is_no_space(e):
            raise disk_full(path, e) from e
        raise
    return path


def export_folder(path: str | os.PathLike, overwrite: bool, label: str,
                  is_export: Callable[[Path], bool], write: Callable[[Path], object],
                  flag: str = "overwrite=True") -> Path:  # fmt: skip
    """Write an export (a folder another library reads) to `path`, whole or not at all.

    `path` must be new or empty, or (with `overwrite`) hold an earlier export of this kind
    (`is_export(path)`, named `label` in errors, `flag` the option to pass); a folder holding
    anything else (a saelab SAE, a run) is never written into. `write(tmp)` fills a temporary
    folder beside `path`, renamed into place when complete; a killed export leaves no half
    folder and the next one removes its temporary folder."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} is a file; export into a new or empty folder")
        names = sorted(p.name for p in path.iterdir())
        if names and is_export(path):
            if not overwrite:
                raise FileExistsError(f"{path} holds a {label} export; pass {flag} to replace "
                                      "it, or choose another folder")  # fmt: skip
        elif names:
            what = "a saelab SAE" if "sae.safetensors" in names else "a run or other files"
            raise FileExistsError(f"{path} holds {what} ({', '.join(names[:4])}); an export "
                                  "never writes into it: choose a new or empty folder")  # fmt: skip
    remove_leftovers(path, "export")  # a killed export's temporary folder
    tmp = path.parent / f".{path.name}.export-{writer_id()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with naming_full_disk(path, "the partial export"):
            write(tmp)
        swap_in(tmp, path)  # over an empty folder or an earlier export
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
