"""`python -m dreamjax.train`: optimise a NeRF so its renders look like samples of a frozen text-to-image prior.

  python -m dreamjax.train --config configs/dreamfusion.py \
      --config.prompt="a DSLR photo of a hamburger" --workdir runs/hamburger [--resume]

The workdir receives config.json, TensorBoard metrics (and metrics.jsonl), previews/step_XXXXXX.png, checkpoints/,
and at the end export/turntable.mp4 and export/mesh.{obj,ply,glb}. A workdir with checkpoints is only continued with
--resume, never overwritten.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np

from dreamjax import checkpoint as ckpt_lib
from dreamjax import cli
from dreamjax import distill
from dreamjax import optim
from dreamjax import train_state as ts_lib
from dreamjax import train_step as step_lib
from dreamjax import visualize
from dreamjax.nerf.scene import Scene

log = logging.getLogger(__name__)


class ConfigError(ValueError):
  """A config value that cannot work; the message is one line naming the field."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects configs that cannot run, naming the field."""
  def need(ok, msg):
    if not ok:
      raise ConfigError(msg)
  need(isinstance(config.prompt, str) and config.prompt.strip(), "config.prompt is empty: pass "
       "--config.prompt=\"a DSLR photo of a hamburger\"")
  need(config.train.num_steps >= 1, f"config.train.num_steps must be >= 1 (got {config.train.num_steps})")
  need(config.render.height >= 1 and config.render.width >= 1, "config.render.height/width must be >= 1")
  need(config.render.batch_per_device >= 1, "config.render.batch_per_device must be >= 1")
  need(config.render.num_coarse >= 1 and config.render.num_fine >= 1, "config.render.num_coarse/num_fine must be >= 1")
  need(config.render.radius > 0, "config.render.radius must be > 0")
  lo, hi = config.camera.distance_range
  need(0 < lo <= hi, f"config.camera.distance_range must satisfy 0 < lo <= hi (got {lo}, {hi})")
  lo, hi = config.camera.elevation_range
  need(-90 <= lo <= hi <= 90, f"config.camera.elevation_range must lie in [-90, 90] (got {lo}, {hi})")
  lo, hi = config.camera.focal_range
  need(0 < lo <= hi, f"config.camera.focal_range must satisfy 0 < lo <= hi (got {lo}, {hi})")
  for name in ("uniform_angle_prob",):
    need(0 <= config.camera[name] <= 1, f"config.camera.{name} must be in [0, 1]")
  for name in ("shading_prob", "textureless_prob"):
    need(0 <= config.shading[name] <= 1, f"config.shading.{name} must be in [0, 1]")
  need(0 <= config.render.random_background_prob <= 1, "config.render.random_background_prob must be in [0, 1]")
  distill.Rule.from_config(config.distill)  # names and forms of the rule
  optim.check_optimizer_name(config.optim.name)
  need(config.optim.lr_peak > 0, "config.optim.lr_peak must be > 0")
  need(config.optim.warmup_steps <= config.optim.total_steps, f"config.optim.warmup_steps "
       f"({config.optim.warmup_steps}) must be <= the schedule length ({config.optim.total_steps} steps)")
  need(config.train.checkpoint_every >= 1, "config.train.checkpoint_every must be >= 1")
  need(config.train.keep_checkpoints >= 1, "config.train.keep_checkpoints must be >= 1")


def _check_resume_config(workdir, config) -> None:
  """A resumed run must keep the settings that shape its parameters and trajectory; only its length
  (train.num_steps, and with it the LR schedule's length), logging, previews and exports may change."""
  try:
    old = ckpt_lib.load_config(workdir)
  except ckpt_lib.CheckpointError:
    return
  # JSON round trips turn tuples into lists; compare through the same JSON form.
  differing = [k for k in ("prompt", "seed", "nerf", "render", "prior", "distill", "optim")
               if _canon(old.get(k)) != _canon(config.get(k))]
  if differing:
    raise ConfigError(f"--resume with a different config: {', '.join(differing)} differ from {workdir}/config.json; "
                      "resume with the same config or use a new --workdir")


def _canon(x):
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  x = json.loads(json.dumps(x, sort_keys=True, default=str))
  if isinstance(x, dict):
    x.pop("total_steps", None)  # follows train.num_steps, which may grow on resume
  return x


class MetricWriter:
  """TensorBoard scalars (tensorboardX) and a metrics.jsonl beside them."""

  def __init__(self, workdir):
    self.jsonl = open(pathlib.Path(workdir) / "metrics.jsonl", "a")
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
    except ImportError:
      self.tb = None

  def write(self, step: int, metrics: dict) -> None:
    self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, resume: bool = False, prior=None,
                       num_devices: int | None = None, export: bool = True, progress: bool = True,
                       stop_after: int | None = None):
  """Runs (or continues) a run in `workdir`. Returns the final TrainState.

  `prior` overrides config.prior (tests); `num_devices` limits the devices used; `stop_after` ends the loop after
  that many steps as if the run had been interrupted (a checkpoint is written; tests of --resume).
  """
  from dreamjax import export as export_lib
  from dreamjax import video
  from dreamjax.priors.load import load_prior

  validate_config(config)
  workdir = pathlib.Path(workdir)
  ckpt = None
  has_checkpoints = (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())
  if has_checkpoints and not resume:
    raise ckpt_lib.CheckpointError(f"{workdir} already holds checkpoints of a run; pass --resume to continue it or "
                                   "choose another --workdir (nothing was changed)")
  if resume:
    _check_resume_config(workdir, config)
  if prior is None:
    prior = load_prior(config)
  is_main = jax.process_index() == 0
  if is_main and config.prior.kind == "toy":
    from dreamjax.toy import text as toy_text
    unknown = toy_text.unknown_words(config.prompt)
    if unknown:
      print(f"dreamjax: warning: the toy prior does not know {', '.join(map(repr, unknown))}; those words carry no "
            f"meaning (toy prompts: `python -m dreamjax.toy.shapes`)", flush=True)

  workdir.mkdir(parents=True, exist_ok=True)
  if is_main and (not resume or not ckpt_lib.config_path(workdir).exists()):
    ckpt_lib.save_config(workdir, config)
  ckpt = ckpt_lib.Checkpointer(workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints)

  tx = ts_lib.make_optimizer(config)
  state = ts_lib.create(config, tx)
  if resume and ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    log.info("resumed from step %d", int(state.step))
  mesh = step_lib.make_mesh(num_devices)
  n_dev = mesh.devices.size
  text = step_lib.text_embeddings(prior, config)
  prior_params = step_lib.replicate(prior.params, mesh)
  text = step_lib.replicate(text, mesh)
  state = step_lib.replicate(state, mesh)
  train_step = step_lib.make_train_step(config, prior, tx, mesh)
  scene = Scene.from_config(config)
  orbit = visualize.Orbit.from_config(config)

  writer = MetricWriter(workdir) if is_main else None
  start = int(jax.device_get(state.step))
  total = config.train.num_steps
  if is_main:
    print(f"dreamjax: {config.prompt!r}: steps {start}..{total} on {n_dev} device(s) "
          f"({jax.devices()[0].platform}), global batch {n_dev * config.render.batch_per_device}, workdir {workdir}",
          flush=True)
  bar = None
  if progress and is_main:
    from tqdm import tqdm
    bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, file=sys.stdout)
  t_last, s_last = time.time(), start
  metrics = None
  end = total if stop_after is None else min(total, stop_after)
  for step in range(start, end):
    state, metrics = train_step(state, prior_params, text)
    done = step + 1
    if bar:
      bar.update(1)
    if is_main and (done % config.train.log_every == 0 or done == total):
      m = step_lib.host_metrics(metrics)
      now = time.time()
      m["steps_per_sec"] = (done - s_last) / max(now - t_last, 1e-9)
      t_last, s_last = now, done
      writer.write(done, m)
      if bar:
        bar.set_postfix(loss=f"{m['loss']:.3g}", opacity=f"{m['opacity']:.2f}", nonfinite=int(m["nonfinite_grads"]))
    if is_main and config.train.preview_every and (done % config.train.preview_every == 0 or done == total):
      grid = visualize.preview_grid(scene, jax.device_get(state.params), orbit, step=done,
                                    size=config.train.preview_size)
      video.save_png(grid, workdir / "previews" / f"step_{done:06d}.png")
      writer.image(done, "preview", grid)
    ckpt.save(done, state, force=(done == end))
  if bar:
    bar.close()
  ckpt.wait()
  ckpt.close()
  if is_main and export and start < end == total:
    params = jax.device_get(state.params)
    settings = export_lib.ExportSettings.from_config(config)
    for p in export_lib.export_all(scene, params, settings, step=total, out_dir=workdir / "export"):
      print(f"wrote {p}", flush=True)
  if writer:
    writer.close()
  return state


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  f = flags.FLAGS
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  if f.multihost:
    jax.distributed.initialize()
  train_and_evaluate(cli.resolved_config(), f.workdir, resume=f.resume)


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flag("configs/dreamfusion.py")
  flags.DEFINE_string("workdir", None, "Run directory (config, metrics, previews, checkpoints, exports).",
                      required=True)
  flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its latest checkpoint.")
  flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-process TPU/GPU launches).")
  cli.run(main, "train", errors=(ConfigError, ckpt_lib.CheckpointError))
