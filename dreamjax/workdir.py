"""A run's directory as a resource: checked writable before any work, held by one process at a time, and its
finished exports marked so that an interrupted export is redone on `--resume`.

  with workdir.claim(path) as wd:   # WorkdirError (one line) if path is a file, under a file, not writable, or
    ...                             # held by another live process; folders it created are removed on an error
                                    # before the run has written anything of its own
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
from typing import Iterator

from dreamjax import files

LOCK_NAME = ".dreamjax.lock"
EXPORT_MARKER = "complete.json"


class WorkdirError(Exception):
  """A workdir that cannot be used; the message is one line naming the path and what to do."""


def probe(path: pathlib.Path, flag: str = "--workdir") -> list[pathlib.Path]:
  """Makes `path` (and missing parents) and checks a file can be created in it. Returns the folders it created,
  outermost first. Raises WorkdirError naming `flag` and the path."""
  path = pathlib.Path(path)
  for parent in [path, *path.parents]:
    if parent.exists() and not parent.is_dir():
      where = "is a file" if parent == path else f"lies under {parent}, which is a file"
      raise WorkdirError(f"{flag} {path} {where}; choose a folder path")
  missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
  # One probe file per process: the processes of a --multihost run probe the same shared folder at once.
  probe_file = path / f".dreamjax.probe.{socket.gethostname()}.{os.getpid()}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    with files.atomic_write(probe_file, "w") as f:
      f.write("probe")
    os.remove(probe_file)
  except OSError as e:
    remove_empty(missing)
    raise WorkdirError(f"{flag} {path} is not writable ({e.strerror or e}); choose a folder you can write to") \
        from None
  return missing


def check_output_file(path, flag: str = "--out") -> None:
  """Checks that a file can be written at `path` (its folder is made if missing and removed again): raises
  WorkdirError naming `flag` if the path is a folder or its folder cannot be written."""
  path = pathlib.Path(path)
  if path.is_dir():
    raise WorkdirError(f"{flag} {path} is a folder; give a file path such as {path / 'preview.png'}")
  for parent in path.parents:
    if parent.exists() and not parent.is_dir():
      raise WorkdirError(f"{flag} {path} lies under {parent}, which is a file; choose another path")
  remove_empty(probe(path.parent, flag))


def remove_empty(folders: list[pathlib.Path]) -> None:
  """Removes the folders (innermost first) that are empty."""
  for folder in reversed(folders):
    with contextlib.suppress(OSError):
      folder.rmdir()


class Lock:
  """An exclusive `flock` on <workdir>/.dreamjax.lock, held while the process lives (the kernel drops it when the
  process dies, so a killed run never blocks a later --resume)."""

  def __init__(self, workdir: pathlib.Path):
    self.path = pathlib.Path(workdir) / LOCK_NAME
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "another process"
      os.close(self.fd)
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f"--workdir {workdir} is in use by a running dreamjax process (pid {holder}); wait for "
                           "it to finish or choose another --workdir") from None
      raise
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, str(os.getpid()).encode(), 0)

  def release(self) -> None:
    if self.fd is not None:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None


@contextlib.contextmanager
def claim(path, lock: bool = True) -> Iterator[pathlib.Path]:
  """Probes and locks `path` for the block. If the block fails while the workdir holds nothing but the lock (the
  run wrote nothing yet), the folders the probe created are removed again."""
  path = pathlib.Path(path)
  created = probe(path)
  held = Lock(path) if lock else None
  try:
    yield path
  except BaseException:
    if held:
      held.release()
      held = None
      if created and [p.name for p in path.iterdir()] == [LOCK_NAME]:
        os.remove(path / LOCK_NAME)
    remove_empty(created)
    raise
  finally:
    if held:
      held.release()


def remove_stale_temps(folder: pathlib.Path) -> list[pathlib.Path]:
  """Removes the temp files an interrupted atomic write left in `folder` (`files.atomic_path` names them
  .<stem>.<random>.tmp<suffix>). Returns them."""
  folder = pathlib.Path(folder)
  stale = [p for p in folder.glob(".*.tmp*") if p.is_file()] if folder.is_dir() else []
  for p in stale:
    os.remove(p)
  return stale


def export_complete(export_dir: pathlib.Path, step: int) -> bool:
  """Whether the exports of `step` were all written (the marker is written after the last of them)."""
  try:
    marker = json.loads((pathlib.Path(export_dir) / EXPORT_MARKER).read_text())
  except (OSError, ValueError):
    return False
  written = [pathlib.Path(export_dir) / name for name in marker.get("files", [])]
  return marker.get("step") == step and all(p.is_file() for p in written)


def mark_export_complete(export_dir: pathlib.Path, step: int, written: list[pathlib.Path]) -> None:
  files.write_text(pathlib.Path(export_dir) / EXPORT_MARKER,
                   json.dumps({"step": step, "files": sorted(pathlib.Path(p).name for p in written)}, indent=2))
