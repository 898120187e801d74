"""Run directories: the resolved config and orbax checkpoints of the `TrainState`.

A workdir holds `config.json` (the config the run was started with) and `checkpoints/<step>/`. Saving is atomic
(orbax writes to a temporary directory and renames it). A workdir that already holds checkpoints is only ever
continued (`resume=True`), never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from dreamjax import files
from dreamjax import train_state as ts_lib


class CheckpointError(Exception):
  """A workdir or checkpoint that cannot be used; the message is one line saying what to do."""


def config_path(workdir) -> pathlib.Path:
  return pathlib.Path(workdir) / "config.json"


def save_config(workdir, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config as JSON (atomically)."""
  files.write_text(config_path(workdir), config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config a run was started with."""
  path = config_path(workdir)
  try:
    data = json.loads(path.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{workdir} is not a dreamjax run directory (no config.json)") from None
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"cannot read {path}: {e}") from None
  return _to_config(data)


def _to_config(data: Any) -> Any:
  if isinstance(data, dict):
    c = ml_collections.ConfigDict()
    for k, v in data.items():
      c[k] = _to_config(v)
    return c
  if isinstance(data, list):
    return tuple(_to_config(v) for v in data)
  return data


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one workdir."""

  def __init__(self, workdir, every: int = 1000, keep: int = 3, read_only: bool = False):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(every, 1),
                                                             create=not read_only, read_only=read_only))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: ts_lib.TrainState, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.StandardSave(jax.device_get(state)), force=force)

  def restore(self, template: ts_lib.TrainState, step: int | None = None) -> ts_lib.TrainState:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)  # orbax logs the unreadable file's content; the error below says it once
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for unreadable or mismatched files
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise CheckpointError(f"checkpoint {self.directory / str(step)} is unreadable or from another config: "
                            f"{msg[:300]}") from None
    finally:
      absl_logger.setLevel(level)

  def restore_newest_readable(self, template: ts_lib.TrainState, report=print) -> ts_lib.TrainState | None:
    """The newest checkpoint that restores (None when the workdir has none). Newer unreadable ones are moved, never
    deleted, to <workdir>/corrupt_checkpoints/<step>, out of the manager's way, with one `report` line each saying
    which step was skipped and why. If none restores, nothing is moved and CheckpointError says why."""
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.restore(template, step)
      except CheckpointError as e:
        failed.append((step, e))
        continue
      for bad, error in failed:
        aside = self.directory.parent / "corrupt_checkpoints" / str(bad)
        if jax.process_index() == 0:  # one process moves it (a --multihost run shares the folder)
          aside.parent.mkdir(exist_ok=True)
          with contextlib.suppress(FileNotFoundError):
            os.replace(self.directory / str(bad), aside)
        reason = str(error).split(": ", 1)[-1].split(". See full TensorStore", 1)[0][:160]
        report(f"dreamjax: warning: checkpoint step {bad} is unreadable ({reason}); moved it to {aside}; "
               f"resuming from step {step}")
      if failed:
        self.manager.reload()
      return state
    if failed:
      raise failed[0][1]
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


class RestoredRun(NamedTuple):
  params: Any
  step: int
  config: ml_collections.ConfigDict


def restore_latest_params(workdir) -> RestoredRun:
  """Scene parameters, step and config of a run's latest checkpoint (for previews and exports)."""
  config = load_config(workdir)
  ckpt = Checkpointer(workdir)
  if ckpt.latest_step() is None:
    raise CheckpointError(f"no checkpoint in {ckpt.directory}")
  state = ckpt.restore(ts_lib.create(config))
  ckpt.close()
  return RestoredRun(params=state.params, step=int(state.step), config=config)


def restore_params_read_only(workdir, config: ml_collections.ConfigDict, step: int | None = None) -> RestoredRun:
  """Scene parameters of checkpoint `step` (default: the latest) of a run, opened read-only: nothing in the run's
  folder is created, moved or deleted (the source of an edit)."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # orbax warns that a read-only manager saves nothing: that is the point
  try:
    ckpt = Checkpointer(workdir, read_only=True)
  finally:
    absl_logger.setLevel(level)
  try:
    state = ckpt.restore(ts_lib.create(config), step)
  finally:
    ckpt.close()
  return RestoredRun(params=state.params, step=int(state.step), config=config)


def latest_step(workdir) -> int | None:
  """The step of a run's latest checkpoint, or None when it has none (nothing is created)."""
  if not (pathlib.Path(workdir) / "checkpoints").is_dir():
    return None
  ckpt = Checkpointer(workdir)
  step = ckpt.latest_step()
  ckpt.close()
  return step
