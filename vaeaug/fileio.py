"""Writing output files so that a kill at any instant leaves either the old file or the new one.

A file is written to a hidden temp name in its own folder, flushed and fsynced, then `os.replace`d
over the target (atomic on POSIX within one file system), and the folder is fsynced so the rename
survives a power cut. A writer that raises leaves the old file untouched and no temp file behind.
A disk-full error names the file and, when known, how many bytes were being written
(`needed_bytes`), for the one-line error of `vaeaug.cli.run`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], *, size_hint: int | None = None) -> str:
  """Writes `path` through `write(binary_file)`, atomically; returns the sha256 of what was written.
  `size_hint` (bytes) is reported if the disk fills up."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w+b") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
      # Digest of the bytes on disk (np.savez seeks back, so hashing the writes would be wrong).
      f.seek(0)
      digest = hashlib.file_digest(f, "sha256").hexdigest()
    os.replace(tmp, path)
  except BaseException as error:
    Path(tmp).unlink(missing_ok=True)
    if isinstance(error, OSError):
      # A failed write() carries no file name; name the file the user knows, not the temp one.
      if error.filename is None or str(error.filename) == tmp:
        error.filename = str(path)
      if error.errno in _OUT_OF_SPACE and size_hint is not None and getattr(error, "needed_bytes", None) is None:
        error.needed_bytes = size_hint
    raise
  _fsync_dir(path.parent)
  return digest


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
  """`atomic_write` of `data`; returns its sha256."""
  return atomic_write(path, lambda f: f.write(data), size_hint=len(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
  """`atomic_write` of `text` as UTF-8; returns its sha256."""
  return atomic_write_bytes(path, text.encode())


def _fsync_dir(folder: Path) -> None:
  # Best effort: some file systems refuse to open or fsync a directory.
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
