"""Atomic file writes: a temporary file in the target's directory, then ``os.replace``.

A crash or ``kill -9`` mid-write leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import BadInput


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    ``suffix`` keeps the extension visible to writers that choose a format from it.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(  # the name's shape: temp_name
        prefix=f".{target.name}.", suffix=(suffix or target.suffix) + ".tmp", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; give it the mode a plain open() would (or the old file's)
    umask = os.umask(0)
    os.umask(umask)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~umask
    os.chmod(tmp_path, mode)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _sync_folder(target.parent)  # the rename itself survives a power cut
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temp_name(name: str) -> str:
    """The longest temporary name :func:`atomic_path` makes for ``name`` (mkstemp's random
    part is 8 characters): what must fit the file system's name limit."""
    return f".{name}.{'x' * 8}{Path(name).suffix if name else ''}.tmp"


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a regular file (after symlinks); a FIFO would hang a read, a device
    read forever, a folder fail obscurely: each is refused in one line."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise BadInput(f"{what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise BadInput(f"{what} {path} is {kind}: give a regular file")
    return path


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system holding ``folder`` takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255
