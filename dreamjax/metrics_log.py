"""A run's metrics: TensorBoard scalars (tensorboardX, when installed) and metrics.jsonl beside them.

metrics.jsonl is strict JSON Lines: one object per line, `{"step": int, name: float | null, ...}` with NaN and +-inf
written as null (strict JSON has no such numbers). On resume, `repair` first drops a truncated last line (a kill
mid-write) and the records of steps after the restored checkpoint, so no step is logged twice.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from dreamjax import files

FILE_NAME = "metrics.jsonl"


def _strict(value):
  value = float(value)
  return value if math.isfinite(value) else None


def repair(path: pathlib.Path, keep_through_step: int) -> int:
  """Rewrites `path` (atomically) keeping the complete records with step <= keep_through_step. Returns how many
  lines were dropped (0: the file was left untouched)."""
  path = pathlib.Path(path)
  if not path.exists():
    return 0
  lines = path.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if line.endswith("\n") and isinstance(record, dict) and int(record.get("step", -1)) <= keep_through_step:
      kept.append(line)
  dropped = len(lines) - len(kept)
  if dropped:
    files.write_text(path, "".join(kept))
  return dropped


class MetricWriter:
  """Appends metrics to <workdir>/metrics.jsonl and TensorBoard (<workdir>/tensorboard)."""

  def __init__(self, workdir):
    self.jsonl = open(pathlib.Path(workdir) / FILE_NAME, "a")
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
    except ImportError:
      self.tb = None

  def write(self, step: int, metrics: dict) -> None:
    record = {"step": int(step), **{k: _strict(v) for k, v in metrics.items()}}
    self.jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    self.jsonl.flush()
    if self.tb:
      for k, v in metrics.items():
        self.tb.add_scalar(k, v, step)

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    if self.tb:
      self.tb.add_image(name, image, step, dataformats="HWC")

  def close(self) -> None:
    self.jsonl.close()
    if self.tb:
      self.tb.close()
