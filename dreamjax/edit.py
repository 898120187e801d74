"""`python -m dreamjax.edit`: edit a finished run toward a new prompt, keeping what the prompt does not change.

  python -m dreamjax.edit --source runs/red_cube --prompt "a blue cube" --method pds --workdir runs/blue_cube

Methods: pds (Posterior Distillation Sampling), dds (Delta Denoising Score), sds (plain SDS toward the new prompt,
starting from the source scene). The source run's config, checkpoint (its latest, read-only) and prompt (override
with --source_prompt) are loaded; its parameters are the starting point and, for pds / dds, the frozen reference
rendered at every training camera. The source folder is never written to. The edit's own settings come from
configs/edit_<method>.py (or --config), fields overridable as --config.section.field=value; every other setting is
the source run's. Outputs as for training: config.json, metrics, previews (source | edit), checkpoints, export/,
and --resume continues an interrupted edit.
"""

from __future__ import annotations

import pathlib
import sys

import ml_collections

from dreamjax import checkpoint as ckpt_lib
from dreamjax import cli
from dreamjax import config_check
from dreamjax import stop_signals
from dreamjax import train
from dreamjax import workdir as workdir_lib
from dreamjax.config_check import ConfigError

METHODS = ("pds", "dds", "sds")
# Fields added to run configs since older runs were written, with the value those runs used.
LEGACY_VALUES = {"loss.reduction": "mean"}


def method_argument(argv) -> str | None:
  """The value of --method in argv (`--method=X` or `--method X`), else None."""
  found = None
  for i, arg in enumerate(argv):
    if arg.startswith("--method="):
      found = arg.split("=", 1)[1]
    elif arg == "--method" and i + 1 < len(argv):
      found = argv[i + 1]
  return found


def upgrade(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A source run's config with the fields added since it was written: the value such runs used
  (`LEGACY_VALUES`), else configs/dreamfusion.py's default."""
  from configs import dreamfusion
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for name, value in config_check.leaves(dreamfusion.get_config()).items():
      section, field = name.rsplit(".", 1) if "." in name else ("", name)
      node = c
      for part in filter(None, section.split(".")):
        if part not in node:
          node[part] = ml_collections.ConfigDict()
        node = node[part]
      if field not in node:
        node[field] = LEGACY_VALUES.get(name, value)
  return c


def edit_config(source_config: ml_collections.ConfigDict, overlay: ml_collections.ConfigDict, *, prompt: str,
                source_prompt: str, source: str, source_step: int) -> ml_collections.ConfigDict:
  """The edit's run config: the source run's, with the target prompt, the overlay's distillation rule (the whole
  section), every other field the overlay sets, its length, and the step-dependent schedules held at their end
  values (the source scene is past its orientation ramp, IPE anneal and albedo-only phase). `config.edit` records
  where the source came from."""
  c = upgrade(source_config)
  n = int(overlay.edit.num_steps) or int(c.train.num_steps)
  c.prompt = prompt
  c.distill = overlay.distill.copy_and_resolve_references()
  for name, value in config_check.leaves(overlay).items():
    section, field = name.rsplit(".", 1) if "." in name else ("", name)
    if section in ("edit", "distill"):
      continue
    node = c
    for part in filter(None, section.split(".")):
      node = node[part]
    if field not in node:
      raise ConfigError(f"the edit config sets {name}, which run configs do not have; remove it")
    node[field] = value
  c.train.num_steps = n
  c.optim.total_steps = n
  c.optim.warmup_steps = min(int(c.optim.warmup_steps), n)
  c.loss.orient_start = c.loss.orient_end
  c.nerf.ipe_var_start = c.nerf.ipe_var_end
  c.shading.albedo_only_steps = 0
  with c.unlocked():
    c.edit = ml_collections.ConfigDict({"source": source, "source_prompt": source_prompt, "source_step": source_step,
                                        "num_steps": int(overlay.edit.num_steps),
                                        "trainable": overlay.edit.get("trainable", "all"),
                                        "keep_opacity": float(overlay.edit.get("keep_opacity", 0.0))})
  return c


def check_paths(source: pathlib.Path, workdir: pathlib.Path) -> None:
  """One-line errors for a source that is not a finished run folder, or a workdir that overlaps it."""
  if not source.is_dir():
    raise ConfigError(f"--source {source} is not a folder; give the --workdir of a python -m dreamjax.train run")
  s, w = source.resolve(), workdir.resolve()
  if s == w or s in w.parents or w in s.parents:
    raise ConfigError(f"--workdir {workdir} overlaps --source {source}; the source is never written to: choose a "
                      "folder outside it")
  if not (source / "config.json").is_file() or ckpt_lib.latest_step(source) is None:
    raise ConfigError(f"--source {source} holds no config.json and checkpoint; give the --workdir of a "
                      "python -m dreamjax.train run")


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  overlay = cli.resolved_config()
  method = overlay.distill.name
  if f.method and f.method != method:
    raise ConfigError(f"--method {f.method} but the --config file is a {method} config; drop one of them")
  if method not in METHODS:
    raise ConfigError(f"config.distill.name {method!r} cannot edit; use one of {', '.join(METHODS)}")
  if not f.prompt.strip():
    raise ConfigError("--prompt is empty: give the target prompt, e.g. --prompt \"a blue cube\"")
  source, workdir = pathlib.Path(f.source).expanduser(), pathlib.Path(f.workdir).expanduser()
  check_paths(source, workdir)
  source_config = ckpt_lib.load_config(source)
  step = None
  if f.resume and (workdir / "config.json").is_file():  # continue with the source step the edit started from
    step = ckpt_lib.load_config(workdir).get("edit", {}).get("source_step")
  source_config = upgrade(source_config)
  config_check.check(source_config)
  restored = ckpt_lib.restore_params_read_only(source, source_config, step)
  config = edit_config(source_config, overlay, prompt=f.prompt, source_prompt=f.source_prompt or source_config.prompt,
                       source=str(source.resolve()), source_step=restored.step)
  train.train_and_evaluate(config, workdir, resume=f.resume, source_params=restored.params)


def define_flags() -> None:
  from absl import flags
  method = method_argument(sys.argv) or "pds"
  cli.define_config_flag(f"configs/edit_{method if method in METHODS else 'pds'}.py")
  flags.DEFINE_string("source", None, "The --workdir of the run to edit (read only).", required=True)
  flags.DEFINE_string("prompt", None, "The target prompt.", required=True)
  flags.DEFINE_string("source_prompt", "", "The source scene's prompt (default: the source run's).")
  flags.DEFINE_enum("method", None, METHODS, "pds | dds | sds (default: the --config file's; configs/edit_pds.py "
                    "without either).")
  flags.DEFINE_string("workdir", None, "The edit's run directory (must not overlap --source).", required=True)
  flags.DEFINE_bool("resume", False, "Continue the edit in --workdir from its latest checkpoint.")


if __name__ == "__main__":
  define_flags()
  cli.run(main, "edit", errors=(ConfigError, ckpt_lib.CheckpointError, workdir_lib.WorkdirError,
                                train.NonFiniteError), interrupted=(stop_signals.Interrupted,))
