"""Writing files that hold secrets or state: whole or not at all, and never readable by others."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes, mode: int = 0o600, *, replace: bool = True) -> None:
    """Write `data` to `path` with permissions `mode`, flushed to disk before this returns.

    The mode is set on the open descriptor, so the umask cannot loosen it, and the file is
    never readable by others, not even for a moment. With `replace` the data goes to a
    temporary file in the same directory that then replaces `path` (os.replace): a reader or a
    power cut sees the old file or the new one, never a torn one. Without it `path` is created
    exclusively (FileExistsError when anything is there, even a dangling link) and removed
    again if writing fails. The directory must exist."""
    if replace:
        fd, written = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        written = str(path)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(written, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(written)
        raise
