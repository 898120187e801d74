"""`python -m dreamjax.train`: optimise a NeRF so its renders look like samples of a frozen text-to-image prior.

  python -m dreamjax.train --config configs/dreamfusion.py \
      --config.prompt="a DSLR photo of a hamburger" --workdir runs/hamburger [--resume]

The workdir receives config.json, TensorBoard metrics (and metrics.jsonl), previews/step_XXXXXX.png, checkpoints/,
and at the end export/turntable.mp4 and export/mesh.{obj,ply,glb}. A workdir with checkpoints is only continued with
--resume, never overwritten.

Several hosts: every process runs the same command with --multihost (README "Several hosts"; dreamjax/distributed.py).
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np

from dreamjax import checkpoint as ckpt_lib
from dreamjax import cli
from dreamjax import config_check
from dreamjax import distributed
from dreamjax import edit_objective
from dreamjax import metrics_log
from dreamjax import objective
from dreamjax import stop_signals
from dreamjax import train_state as ts_lib
from dreamjax import train_step as step_lib
from dreamjax import visualize
from dreamjax import workdir as workdir_lib
from dreamjax.config_check import ConfigError
from dreamjax.nerf.scene import Scene

# Fields a resumed run may change: its length (and with it the LR schedule's), logging, previews, checkpointing and
# exports. Every other field shapes the trajectory and must match config.json.
RESUMABLE_CHANGES = ("train.num_steps", "optim.total_steps", "train.log_every", "train.preview_every",
                     "train.preview_size", "train.checkpoint_every", "train.keep_checkpoints", "train.disable_jit",
                     "train.parallel", "train.max_skip_streak", "train.grad_shares_every", "export.")
SKIP_CHECK_EVERY = 10  # steps between reads of the non-finite-update streak (a device -> host sync)


class NonFiniteError(Exception):
  """The run kept producing updates that would make parameters non-finite; the message is one line."""


def validate_config(config: ml_collections.ConfigDict, require_prompt: bool = True) -> None:
  """Rejects configs that cannot run (config_check.ConfigError naming the field); prints one line per warning."""
  config_check.check(config, require_prompt=require_prompt)
  for line in config_check.warnings(config):
    print(f"dreamjax: warning: {line}", flush=True)


def _check_resume_config(workdir: pathlib.Path, config, has_checkpoints: bool) -> list[str]:
  """A resumed run must keep every field that shapes its trajectory (all but RESUMABLE_CHANGES). Returns the
  resumable fields that change, as 'field old -> new'. Raises ConfigError if others differ, or if the run has
  checkpoints but its config.json is missing or unreadable."""
  try:
    old = ckpt_lib.load_config(workdir)
  except ckpt_lib.CheckpointError as e:
    if not has_checkpoints:
      return []
    raise ConfigError(f"--resume: {e}; without the run's config the resume cannot be checked (restore config.json "
                      "or start a new --workdir)") from None
  old_leaves, new_leaves = _canon_leaves(old), _canon_leaves(config)
  names = sorted(set(old_leaves) | set(new_leaves))
  differ = [n for n in names if old_leaves.get(n, "<absent>") != new_leaves.get(n, "<absent>")]
  fixed = [n for n in differ if not n.startswith(RESUMABLE_CHANGES)]
  if fixed:
    shown = "; ".join(f"{n}: {old_leaves.get(n, '<absent>')!r} -> {new_leaves.get(n, '<absent>')!r}"
                      for n in fixed[:3])
    more = f" (and {len(fixed) - 3} more)" if len(fixed) > 3 else ""
    raise ConfigError(f"--resume with a different config ({shown}{more}) than {workdir}/config.json; resume with the "
                      "same config or use a new --workdir")
  return [f"{n} {old_leaves.get(n)!r} -> {new_leaves.get(n)!r}" for n in differ]


def _canon_leaves(config) -> dict:
  """{'section.field': value} through the JSON form config.json stores (tuples become lists)."""
  data = json.loads(config.to_json_best_effort(sort_keys=True)) if hasattr(config, "to_json_best_effort") else config
  return config_check.leaves(data)


def _has_checkpoints(workdir: pathlib.Path) -> bool:
  d = workdir / "checkpoints"
  return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, resume: bool = False, prior=None,
                       num_devices: int | None = None, export: bool = True, progress: bool = True,
                       stop_after: int | None = None, optimizer=None, source_params=None):
  """Runs (or continues) a run in `workdir`. Returns the final TrainState.

  Everything that can be checked is checked before anything loads: the config (every field), the workdir (a
  writable folder no other live process holds) and, with `resume`, that the config matches the run's. Ctrl-C or
  SIGTERM saves the current step and raises `stop_signals.Interrupted`; a run whose updates keep turning
  parameters non-finite stops with NonFiniteError, keeping its last good checkpoint.

  `prior` overrides config.prior and `optimizer` config.optim (tests); `num_devices` limits the devices used;
  `stop_after` ends the loop after that many steps as if the run had been interrupted (a checkpoint is written;
  tests of --resume). `source_params` makes the run an edit (`python -m dreamjax.edit`): the frozen source scene,
  described by config.edit, is the starting point and, for DDS / PDS, the reference rendered beside every camera.
  """
  if (source_params is None) != ("edit" not in config):
    raise ConfigError("an edit needs both config.edit and the source parameters: run python -m dreamjax.edit")
  validate_config(config)
  distributed.check_same_config(config)
  if config.train.parallel == "pmap" and jax.process_count() > 1:
    raise ConfigError("config.train.parallel='pmap' runs over one process's devices; a --multihost run needs "
                      "'shard_map' (the default)")
  step_lib.per_device_batch(config.render.batch, num_devices or jax.device_count())
  workdir = pathlib.Path(workdir)
  has_checkpoints = _has_checkpoints(workdir)
  if has_checkpoints and not resume:
    raise ckpt_lib.CheckpointError(f"{workdir} already holds checkpoints of a run; pass --resume to continue it or "
                                   "choose another --workdir (nothing was changed)")
  changed = _check_resume_config(workdir, config, has_checkpoints) if resume else []
  is_main = jax.process_index() == 0
  with workdir_lib.claim(workdir, lock=is_main):
    return _run(config, workdir, resume=resume, changed=changed, prior=prior, num_devices=num_devices,
                export=export, progress=progress, stop_after=stop_after, is_main=is_main, optimizer=optimizer,
                source_params=source_params)


def _run(config, workdir: pathlib.Path, *, resume, changed, prior, num_devices, export, progress, stop_after,
         is_main, optimizer, source_params):
  from dreamjax import export as export_lib
  from dreamjax import video
  from dreamjax.priors.load import load_prior

  if prior is None:
    prior = load_prior(config)
  if is_main and config.prior.kind == "toy":
    from dreamjax.toy import text as toy_text
    unknown = toy_text.unknown_words(config.prompt)
    if unknown:
      print(f"dreamjax: warning: the toy prior does not know {', '.join(map(repr, unknown))}; those words carry no "
            f"meaning (toy prompts: `python -m dreamjax.toy.shapes`)", flush=True)
  warn = lambda line: is_main and print(line, flush=True)
  text = step_lib.text_embeddings(prior, config, warn=warn)
  terms = objective.camera_terms
  if source_params is not None:
    source_config = config.copy_and_resolve_references()
    source_config.prompt = config.edit.source_prompt
    text = edit_objective.EditInputs(text=text, source_text=step_lib.text_embeddings(prior, source_config, warn=warn),
                                     source_params=source_params)
    terms = functools.partial(edit_objective.camera_terms, trainable=config.edit.trainable,
                              keep_opacity=float(config.edit.keep_opacity))

  if is_main and (changed or not ckpt_lib.config_path(workdir).exists()):
    ckpt_lib.save_config(workdir, config)
    if changed:
      print(f"dreamjax: resuming with {'; '.join(changed)} (config.json updated)", flush=True)
  ckpt = ckpt_lib.Checkpointer(workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints)
  tx = optimizer or ts_lib.make_optimizer(config)
  state = ts_lib.create(config, tx)
  restored = None
  if resume:
    restored = ckpt.restore_newest_readable(state, report=lambda line: is_main and print(line, flush=True))
    state = restored or state
  if source_params is not None and restored is None:  # an edit starts from a copy of the source scene (its own
    params = jax.tree_util.tree_map(lambda x: np.array(x, copy=True), source_params)  # buffers: the step donates them)
    state = state.replace(params=params, opt_state=tx.init(params))
  start = int(jax.device_get(state.step))
  if is_main:
    metrics_log.repair(workdir / metrics_log.FILE_NAME, keep_through_step=start)
    for folder in (workdir, workdir / "previews", workdir / "export"):
      workdir_lib.remove_stale_temps(folder)

  mesh = step_lib.make_mesh(num_devices)
  n_dev = mesh.devices.size
  prior_params = step_lib.replicate(prior.params, mesh)
  text = step_lib.replicate(text, mesh)
  state = step_lib.replicate(state, mesh)
  train_step = step_lib.make_train_step(config, prior, tx, mesh, terms=terms)
  shares_every = config.train.grad_shares_every
  gradient_shares = step_lib.make_gradient_shares(config, prior, mesh, terms=terms) if shares_every else None
  scene = Scene.from_config(config)
  orbit = visualize.Orbit.from_config(config)
  source_grid = None

  writer = metrics_log.MetricWriter(workdir) if is_main else None
  total = config.train.num_steps
  end = total if stop_after is None else min(total, stop_after)
  if is_main:
    what = (f"edit of {config.edit.source} ({config.edit.source_prompt!r}, step {config.edit.source_step}) by "
            f"{config.distill.name} toward " if source_params is not None else "")
    print(f"dreamjax: {what}{config.prompt!r}: steps {start}..{total} on {n_dev} device(s) "
          f"({jax.devices()[0].platform}), global batch {config.render.batch} "
          f"({step_lib.per_device_batch(config.render.batch, n_dev)} per device), workdir {workdir}",
          flush=True)
  bar = None
  if progress and is_main and start < end:
    from tqdm import tqdm
    bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, file=sys.stdout)
  t_last, s_last = time.time(), start
  done = start
  try:
    with stop_signals.StopRequest() as stop:
      for step in range(start, end):
        state, metrics = train_step(state, prior_params, text)
        done = step + 1
        if bar:
          bar.update(1)
        shares = None
        if shares_every and done % shares_every == 0 and done < end:  # at the cameras of the next step
          shares = step_lib.host_metrics(gradient_shares(state, prior_params, text))
        if is_main and (done % config.train.log_every == 0 or done == total):
          m = step_lib.host_metrics(metrics)
          now = time.time()
          m["steps_per_sec"] = (done - s_last) / max(now - t_last, 1e-9)
          t_last, s_last = now, done
          writer.write(done, m | (shares or {}))
        elif is_main and shares:
          writer.write(done, shares)
          if bar:
            bar.set_postfix(loss=f"{m['loss']:.3g}", opacity=f"{m['opacity']:.2f}",
                            skipped=int(jax.device_get(state.skipped_updates)))
        if done % SKIP_CHECK_EVERY == 0 or done == end:
          _check_skip_streak(state, done, ckpt, config.train.max_skip_streak)
        if is_main and config.train.preview_every and (done % config.train.preview_every == 0 or done == total):
          grid = visualize.preview_grid(scene, jax.device_get(state.params), orbit, step=done,
                                        size=config.train.preview_size)
          if source_params is not None:  # an edit: the source scene on the left, the edit on the right
            if source_grid is None:
              source_grid = visualize.preview_grid(scene, jax.device_get(source_params), orbit, step=done,
                                                   size=config.train.preview_size)
            grid = visualize.side_by_side(source_grid, grid)
          video.save_png(grid, workdir / "previews" / f"step_{done:06d}.png")
          writer.image(done, "preview", grid)
        # With several processes all stop at the same step (a signal may reach them a step apart).
        if distributed.any_process(stop.requested):
          ckpt.save(done, state, force=True)
          ckpt.wait()
          raise stop_signals.Interrupted(f"stopped by {stop.requested or 'a signal to another process'} after step "
                                         f"{done}; its checkpoint is saved in {workdir / 'checkpoints'}; continue "
                                         "with --resume")
        ckpt.save(done, state, force=(done == end))
  finally:
    if bar:
      bar.close()
    ckpt.wait()
    ckpt.close()
    if writer:
      writer.close()
  if is_main and export and done == total:
    export_dir = workdir / "export"
    if not workdir_lib.export_complete(export_dir, total):
      settings = export_lib.ExportSettings.from_config(config)
      params = jax.device_get(state.params)
      written = export_lib.export_all(scene, params, settings, step=total, out_dir=export_dir)
      workdir_lib.mark_export_complete(export_dir, total, written)
      for p in written:
        print(f"wrote {p}", flush=True)
    elif start == total:
      print(f"dreamjax: {workdir} is a finished run (step {total}, exports complete); nothing to do", flush=True)
  return state


def _check_skip_streak(state, done: int, ckpt, limit: int) -> None:
  """Raises NonFiniteError once `limit` updates in a row were skipped (their parameters would not be finite)."""
  streak = int(jax.device_get(state.skip_streak))
  if streak >= limit:
    last = ckpt.latest_step()
    kept = f"the last checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written"
    raise NonFiniteError(f"stopped after step {done}: the last {streak} updates would have made parameters "
                         f"non-finite and were skipped; {kept}; lower config.optim.lr_peak or check the prior")


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  if f.multihost and not distributed.supervised():
    sys.exit(distributed.run_supervised("train", sys.argv[1:]))
  if f.multihost:
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                           heartbeat_timeout_seconds=f.heartbeat_timeout)
  train_and_evaluate(cli.resolved_config(), f.workdir, resume=f.resume)


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flag("configs/dreamfusion.py")
  flags.DEFINE_string("workdir", None, "Run directory (config, metrics, previews, checkpoints, exports).",
                      required=True)
  flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its latest checkpoint.")
  flags.DEFINE_bool("multihost", False, "One run over several processes (TPU pod slices, multi-node GPU): every "
                    "process runs this command; see README 'Several hosts'.")
  flags.DEFINE_string("coordinator_address", None, "--multihost: host:port of process 0's coordinator (default: "
                      "$JAX_COORDINATOR_ADDRESS, else JAX's cluster detection).")
  flags.DEFINE_integer("num_processes", None, "--multihost: number of processes (default: $JAX_NUM_PROCESSES, else "
                       "detected).")
  flags.DEFINE_integer("process_id", None, "--multihost: this process's index, 0..num_processes-1 (default: "
                       "$JAX_PROCESS_ID, else detected).")
  flags.DEFINE_integer("heartbeat_timeout", 100, "--multihost: seconds after which a silent process counts as dead "
                       "and the others stop.")
  cli.run(main, "train", errors=(ConfigError, ckpt_lib.CheckpointError, workdir_lib.WorkdirError, NonFiniteError),
          interrupted=(stop_signals.Interrupted,))
