"""Atomic file writes: every file dreamjax writes (meshes, videos, images, configs, weights) appears whole or not at
all, so a crash or a kill mid-write never leaves a truncated file where a good one was."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[pathlib.Path]:
  """Yields a temp path beside `path` (same suffix); on success it replaces `path`, on error it is removed."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.stem}.', suffix='.tmp' + path.suffix, dir=path.parent)
  os.close(fd)
  try:
    yield pathlib.Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb') -> Iterator[Any]:
  """Yields a file object for a temp file beside `path` (see `atomic_path`); flushed to disk before the rename."""
  with atomic_path(path) as tmp, open(tmp, mode) as f:
    yield f
    f.flush()
    os.fsync(f.fileno())


def write_text(path: PathLike, text: str) -> pathlib.Path:
  """Writes `text` to `path` atomically. Returns the path."""
  with atomic_write(path, 'w') as f:
    f.write(text)
  return pathlib.Path(path)


def write_bytes(path: PathLike, data: bytes) -> pathlib.Path:
  """Writes `data` to `path` atomically. Returns the path."""
  with atomic_write(path, 'wb') as f:
    f.write(data)
  return pathlib.Path(path)
