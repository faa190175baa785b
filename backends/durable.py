"""Files written so that a crash at any instant leaves the old content or the new, never a mix.

One home for the two steps every durable write of the service takes, the TinyDB store's
and the datastores' files alike: the data fsynced in a temporary file renamed into place,
then the directory fsynced so that the new name survives too.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def fsync_directory(path: Path) -> None:
    """Make a rename inside `path` durable: the new name lives in the directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, tmp: Path | None = None, replace: bool = True) -> None:
    """Put `data` at `path` so that the file is always the old content or the new: a
    temporary file (`tmp`, else a name of its own beside `path`), fsynced, then renamed
    over `path` — or, with `replace` false, linked to it, FileExistsError if one is there.
    The directory is the caller's to fsync. A failure removes the temporary file at once."""
    tmp = tmp if tmp is not None else path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(tmp, path)
            return
        os.link(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            log.warning("Cannot remove %s; the next start removes it", tmp)
        raise
    tmp.unlink()


def write_durably(path: Path, data: bytes, *, replace: bool = True) -> None:
    """`write_atomically`, then the directory fsynced: the write survives a crash whole."""
    write_atomically(path, data, replace=replace)
    fsync_directory(path.parent)
