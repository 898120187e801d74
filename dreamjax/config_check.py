"""Every field of a run config with its type and range, checked before anything is loaded or written.

`check(config)` raises `ConfigError` (one line naming the field, what it got and what would work) for a value that
cannot work: a wrong type, NaN or inf anywhere, a value out of range, an unknown name, or two fields that disagree
(`distill.t_min` >= `distill.t_max`). `warnings(config)` lists values that can work but are probably a mistake (a
negative guidance scale). `FIELDS` names every field of configs/dreamfusion.py; a preset may not add fields the table
does not know (tests/test_config_check.py keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

INF = math.inf


class ConfigError(ValueError):
  """A config value that cannot work; the message is one line naming the field."""


@dataclasses.dataclass(frozen=True)
class Number:
  """An int or float field in [lo, hi] (ends open where `open_lo` / `open_hi`); always finite."""
  lo: float = -INF
  hi: float = INF
  integer: bool = False
  open_lo: bool = False
  open_hi: bool = False

  def problem(self, v) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.integer and not isinstance(v, int)):
      return f"must be {'an integer' if self.integer else 'a number'}"
    if not math.isfinite(v):
      return "must be a finite number"
    low_ok = v > self.lo if self.open_lo else v >= self.lo
    high_ok = v < self.hi if self.open_hi else v <= self.hi
    if not (low_ok and high_ok):
      if self.hi == INF:
        return f"must be {'>' if self.open_lo else '>='} {_num(self.lo)}"
      if self.lo == -INF:
        return f"must be {'<' if self.open_hi else '<='} {_num(self.hi)}"
      return f"must be in {'(' if self.open_lo else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.open_hi else ']'}"
    return None


@dataclasses.dataclass(frozen=True)
class Interval:
  """A (lo, hi) pair of finite numbers with lo <= hi, both inside `bounds` (open at the low end if `open_lo`)."""
  bounds: Number = Number()

  def problem(self, v) -> str | None:
    if not isinstance(v, (tuple, list)) or len(v) != 2:
      return "must be a pair (lo, hi)"
    for x in v:
      p = self.bounds.problem(x)
      if p:
        return f"entries {p}"
    if v[0] > v[1]:
      return "must satisfy lo <= hi"
    return None


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `options` (a str), or with `many`, a non-empty tuple of them."""
  options: tuple
  many: bool = False

  def problem(self, v) -> str | None:
    values = v if self.many and isinstance(v, (tuple, list)) else [v]
    if self.many and (not isinstance(v, (tuple, list)) or not v):
      return f"must be a non-empty tuple of {', '.join(self.options)}"
    bad = [x for x in values if x not in self.options]
    if bad:
      return f"{bad[0]!r} is unknown; use {'any of' if self.many else 'one of'} {', '.join(self.options)}"
    return None


@dataclasses.dataclass(frozen=True)
class Text:
  """A string."""

  def problem(self, v) -> str | None:
    return None if isinstance(v, str) else "must be a string"


@dataclasses.dataclass(frozen=True)
class Flag:
  """A bool."""

  def problem(self, v) -> str | None:
    return None if isinstance(v, bool) else "must be True or False"


def _num(x: float) -> str:
  return "inf" if x == INF else "-inf" if x == -INF else f"{x:g}"


def Int(lo=-INF, hi=INF) -> Number:  # pylint: disable=invalid-name
  return Number(lo, hi, integer=True)


POSITIVE = Number(0.0, INF, open_lo=True)
NON_NEGATIVE = Number(0.0)
PROB = Number(0.0, 1.0)
FINITE = Number()
COUNT = Int(1)  # a count or interval of at least one
LEARNING_RATE = Number(0.0, 1.0)  # per step, in parameter units; 1 is already far beyond any working value
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "cudnn", "xla", "stock")
GRAFTS = ("sgd", "adagrad", "rmsprop", "sqrt_n", "sgd_normalized", "adagrad_normalized", "rmsprop_normalized")


def _fields() -> dict:
  from dreamjax import distill, optim  # the modules own their names
  from dreamjax.priors.load import PRIOR_KINDS
  return {
      "prompt": Text(), "negative_prompt": Text(), "seed": Int(0, 2 ** 31 - 1),
      "camera.elevation_range": Interval(Number(-90.0, 90.0)), "camera.azimuth_range": Interval(Number(-720, 720)),
      "camera.distance_range": Interval(POSITIVE), "camera.uniform_angle_prob": PROB,
      "camera.position_jitter": NON_NEGATIVE, "camera.look_at_std": NON_NEGATIVE, "camera.up_std": NON_NEGATIVE,
      "camera.focal_range": Interval(POSITIVE), "camera.view_dependent_prompt": Flag(),
      "camera.front_deg": Number(0.0, 180.0), "camera.back_deg": Number(0.0, 180.0),
      "camera.overhead_deg": Number(-90.0, 90.0),
      "light.distance_range": Interval(POSITIVE), "light.direction_std": NON_NEGATIVE,
      "shading.albedo_only_steps": Int(0), "shading.shading_prob": PROB, "shading.textureless_prob": PROB,
      "shading.ambient": NON_NEGATIVE, "shading.diffuse": NON_NEGATIVE,
      "nerf.num_freqs": Int(1, 16), "nerf.width": COUNT, "nerf.num_blocks": Int(0), "nerf.blob_strength": FINITE,
      "nerf.blob_width": POSITIVE, "nerf.density_bias_init": FINITE, "nerf.ipe_var_start": NON_NEGATIVE,
      "nerf.ipe_var_end": NON_NEGATIVE, "nerf.ipe_anneal_frac": PROB, "nerf.bg_num_freqs": Int(0, 16),
      "nerf.bg_width": COUNT, "nerf.bg_depth": Int(0),
      "render.height": Int(1, 4096), "render.width": Int(1, 4096), "render.batch": COUNT,
      "render.radius": POSITIVE, "render.near": NON_NEGATIVE, "render.num_coarse": COUNT,
      "render.num_fine": COUNT, "render.resample_padding": NON_NEGATIVE, "render.ray_chunks": COUNT,
      "render.random_background_prob": PROB,
      "loss.orient_start": NON_NEGATIVE, "loss.orient_end": NON_NEGATIVE, "loss.orient_ramp_frac": PROB,
      "loss.opacity": NON_NEGATIVE, "loss.reduction": Choice(("sum", "mean")),
      "loss.emptiness": NON_NEGATIVE, "loss.emptiness_multiplier": NON_NEGATIVE, "loss.emptiness_step_frac": PROB,
      "loss.emptiness_scale": POSITIVE, "loss.center_depth": NON_NEGATIVE,
      "loss.center_depth_border": Number(0.0, 0.5, open_hi=True),
      "prior.kind": Choice(PRIOR_KINDS), "prior.model": Text(), "prior.revision": Text(), "prior.variant": Text(),
      "prior.dtype": Choice(DTYPES), "prior.attention": Choice(ATTENTION), "prior.remat_encoder": Flag(),
      "train.num_steps": COUNT, "train.log_every": COUNT, "train.preview_every": Int(0),
      "train.preview_size": Int(1, 4096), "train.checkpoint_every": COUNT, "train.keep_checkpoints": COUNT,
      "train.disable_jit": Flag(), "train.parallel": Choice(("shard_map", "pmap")), "train.max_skip_streak": COUNT,
      "train.grad_shares_every": Int(0),
      "distill.name": Choice(distill.RULES), "distill.guidance_scale": FINITE,
      "distill.cfg_form": Choice(distill.CFG_FORMS), "distill.weighting": Choice(distill.WEIGHTINGS),
      "distill.t_min": PROB, "distill.t_max": PROB, "distill.clip": NON_NEGATIVE,
      "distill.nfsd_t_threshold": Int(0), "distill.sjc_var_red": Flag(), "distill.negative_prompt": Text(),
      "distill.pds_steps": Int(2, 100000),
      "optim.name": Choice(optim.OPTIMIZERS), "optim.lr_init": LEARNING_RATE, "optim.lr_peak": LEARNING_RATE,
      "optim.lr_end": LEARNING_RATE, "optim.warmup_steps": Int(0), "optim.total_steps": COUNT,
      "optim.beta1": Number(0.0, 1.0, open_hi=True), "optim.beta2": Number(0.0, 1.0),
      "optim.eps": POSITIVE, "optim.block_size": COUNT, "optim.exponent_override": Int(0),
      "optim.graft_type": Choice(GRAFTS), "optim.graft_per_block": Flag(), "optim.nesterov": Flag(),
      "optim.weight_decay": NON_NEGATIVE, "optim.preconditioning_compute_steps": COUNT,
      "optim.start_preconditioning_step": Int(0), "optim.grad_clip_norm": NON_NEGATIVE,
      "export.video_frames": Int(1, 10000), "export.video_fps": POSITIVE, "export.video_size": Int(1, 4096),
      "export.video_elevation": Number(-90.0, 90.0), "export.video_distance": POSITIVE,
      "export.video_focal": POSITIVE, "export.mesh_resolution": Int(8, 1024), "export.mesh_threshold": NON_NEGATIVE,
      "export.mesh_formats": Choice(("obj", "ply", "glb"), many=True),
      # An edit's run (python -m dreamjax.edit) only; OPTIONAL_SECTIONS.
      "edit.source": Text(), "edit.source_prompt": Text(), "edit.source_step": Int(0), "edit.num_steps": Int(0),
      "edit.trainable": Choice(("all", "appearance")), "edit.keep_opacity": NON_NEGATIVE,
  }


OPTIONAL_SECTIONS = ("edit",)  # sections that only some runs have; when present, all their fields are checked


def _cross_field_rules() -> Sequence[tuple[Callable[[Any], bool], str]]:
  """(holds(config), message) pairs between fields."""
  from dreamjax import distill
  return (
      (lambda c: c.prompt.strip() != "", "config.prompt is empty: pass --config.prompt=\"a DSLR photo of a "
       "hamburger\""),
      (lambda c: c.distill.t_min < c.distill.t_max, "config.distill.t_min ({c.distill.t_min}) must be < "
       "config.distill.t_max ({c.distill.t_max})"),
      (lambda c: c.optim.warmup_steps <= c.optim.total_steps, "config.optim.warmup_steps ({c.optim.warmup_steps}) "
       "must be <= the schedule length config.optim.total_steps ({c.optim.total_steps})"),
      (lambda c: c.optim.lr_peak > 0, "config.optim.lr_peak must be > 0 (got {c.optim.lr_peak})"),
      (lambda c: c.distill.name not in distill.EDIT_RULES or c.get("edit") is not None,
       "config.distill.name {c.distill.name!r} edits an existing run: use python -m dreamjax.edit --source RUN "
       "--method {c.distill.name} (python -m dreamjax.train takes sds, nfsd or sjc)"),
      (lambda c: c.render.num_fine >= 1 and c.render.num_coarse >= 1, "config.render.num_coarse/num_fine must "
       "be >= 1"),
  )


def leaves(config, prefix: str = "") -> dict:
  """{'section.field': value} of every leaf of a (nested) ConfigDict or dict."""
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check(config, require_prompt: bool = True) -> None:
  """Raises ConfigError for the first field (in table order) that cannot work, then for disagreeing fields (an
  empty prompt only with `require_prompt`)."""
  fields = _fields()
  values = leaves(config)
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(f"config.{unknown[0]} is not a field dreamjax knows; remove it or check its spelling")
  present = {name.split(".")[0] for name in values}
  for name, spec in fields.items():
    if name.split(".")[0] in OPTIONAL_SECTIONS and name.split(".")[0] not in present:
      continue
    if name not in values:
      raise ConfigError(f"config.{name} is missing; start from a config in configs/ (they all import "
                        "configs/dreamfusion.py)")
    problem = spec.problem(values[name])
    if problem:
      raise ConfigError(f"config.{name} {problem} (got {values[name]!r})")
  for holds, message in _cross_field_rules():
    if not holds(config) and (require_prompt or "config.prompt" not in message):
      raise ConfigError(message.format(c=config))


def warnings(config) -> list[str]:
  """One line per value that can run but is probably a mistake."""
  out = []
  if config.distill.guidance_scale < 0:
    out.append(f"config.distill.guidance_scale is negative ({config.distill.guidance_scale}): guidance then "
               "pushes away from the prompt")
  return out
