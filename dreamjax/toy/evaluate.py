"""Toy R-precision: text-to-3D in the toy world, scored like DreamFusion's CLIP R-Precision.

For each toy prompt a NeRF is trained with configs/toy.py (or a given config), then rendered at 30° elevation from
several azimuths. The independent (shape, colour) classifier (dreamjax/toy/classifier.py) plays CLIP's part:
  * Color: shaded colour renders; a view counts when both the intended shape and colour win (single objects).
  * Geo:   textureless renders (geometry only); a view counts when the intended shape wins (single objects).
  * IoU:   silhouette IoU (opacity > 0.5) against the analytic object on held-out azimuths (all objects).
  * Back-facing: the normal energy the orientation loss penalises, sum w max(0, n.v)^2 / sum w over the held-out
    views (0 = no visible normal faces away from the camera).
  * Floaters: mean opacity of the held-out pixels outside the analytic silhouette (dilated by one pixel, so the
    object's anti-aliased rim does not count).
  * Part colour: per part of the object, the fraction of held-out views (where that part shows at least
    MIN_PART_PIXELS pixels) in which most of the part's visible pixels have a rendered albedo nearest, of the
    world's four colours, to the part's prompted colour; `part_pixels` is the mean fraction of such pixels
    (`part_colour_fractions`). The only colour score of two-part objects.

  python -m dreamjax.toy.evaluate --out docs/toy_results.md [--prompts "a red cube;a blue torus"] [--steps 600]

This command trains and scores in one go. The paper's evaluation entry point scores toy-world runs the same way
(`score_params`, through `dreamjax.evaluate.harness.score_toy`): `python -m dreamjax.evaluate.launch --config
configs/toy.py --captions toy --seeds 0 --workdir_root runs/toy` to train, then `python -m dreamjax.evaluate
--workdirs runs/toy/*`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time

import jax
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import cli
from dreamjax import config_check
from dreamjax import stop_signals
from dreamjax import workdir as workdir_lib
from dreamjax.nerf.scene import Scene
from dreamjax.visualize import preview_lights
from dreamjax.toy import classifier as clf_lib
from dreamjax.toy import shapes

EVAL_ELEVATION = 30.0  # degrees, as DreamFusion's evaluation
EVAL_SIZE = 32  # pixels (the classifier's resolution)
EVAL_DISTANCE = 1.25
EVAL_FOCAL = 1.0  # × width
MIN_PART_PIXELS = 8  # a part counts as visible in a 32² view from this many pixels of its own surface


@dataclasses.dataclass
class Score:
  prompt: str
  color: float | None  # fraction of views with shape and colour right (None for two-part objects)
  geo: float | None  # fraction of textureless views with the shape right
  iou: float  # mean silhouette IoU over held-out views
  seconds: float
  backfacing: float = float("nan")  # sum w max(0, n.v)^2 / sum w over held-out views
  floaters: float = float("nan")  # mean opacity outside the (dilated) analytic silhouette, held-out views
  part_colour: list | None = None  # per part: fraction of held-out views where most of its pixels are right
  part_pixels: list | None = None  # per part: mean fraction of its visible pixels with the right albedo colour

  @classmethod
  def from_result(cls, prompt: str, result: dict, seconds: float) -> "Score":
    """The Score of `score_params`' result dict (its keys are this class's fields)."""
    keep = {f.name for f in dataclasses.fields(cls)} - {"prompt", "seconds"}
    return cls(prompt=prompt, seconds=seconds, **{k: v for k, v in result.items() if k in keep})


def eval_cameras(num_views: int, offset_deg: float = 0.0) -> cam_lib.Cameras:
  az = offset_deg + np.arange(num_views) * 360.0 / num_views
  return cam_lib.orbit_cameras(np.full(num_views, EVAL_ELEVATION), az, EVAL_DISTANCE, EVAL_FOCAL * EVAL_SIZE)


def _dilate(mask: np.ndarray) -> np.ndarray:
  """mask [N, H, W] grown by one pixel (3x3 neighbourhood)."""
  padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
  h, w = mask.shape[1:]
  return np.any([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def part_colour_fractions(albedo: np.ndarray, opacity: np.ndarray, visible: np.ndarray,
                          colours: list[str]) -> np.ndarray:
  """How much of each part carries its colour? albedo [N, H, W, 3] (the renderer's weight-summed albedo), opacity
  [N, H, W], visible [N, H, W] int (the analytic part each pixel shows, -1 none: shapes.visible_part), colours [P]
  the parts' prompted colour names. Returns [N, P] float: the fraction of the part's visible pixels whose surface
  albedo (albedo / opacity) is nearest, in RGB, to the part's prompted colour among shapes.COLOURS and which the
  NeRF covers (opacity >= 0.5); NaN where the part shows fewer than MIN_PART_PIXELS pixels. Judged per pixel, so
  a part painted half in each of two colours is not taken for their mixture's nearest colour."""
  palette = np.array([shapes.COLOURS[c] for c in shapes.COLOUR_NAMES], np.float64)
  surface = np.asarray(albedo, np.float64) / np.maximum(np.asarray(opacity, np.float64), 1e-6)[..., None]
  nearest = np.argmin(np.sum((surface[..., None, :] - palette) ** 2, axis=-1), axis=-1)
  covered = opacity >= 0.5
  out = np.full((visible.shape[0], len(colours)), np.nan)
  for p, name in enumerate(colours):
    mask = visible == p
    count = mask.sum(axis=(1, 2))
    right = np.sum(mask & covered & (nearest == shapes.COLOUR_NAMES.index(name)), axis=(1, 2))
    out[:, p] = np.where(count >= MIN_PART_PIXELS, right / np.maximum(count, 1), np.nan)
  return out


def part_colour_scores(fractions: np.ndarray) -> tuple[list, list]:
  """Per part: the fraction of views where most (over half) of the part's pixels are right (the part colour
  accuracy), and the mean fraction of right pixels; NaN for a part no view shows. fractions [N, P]."""
  acc, pix = [], []
  for f in np.asarray(fractions).T:
    seen = f[np.isfinite(f)]
    acc.append(float(np.mean(seen > 0.5)) if seen.size else float("nan"))
    pix.append(float(np.mean(seen)) if seen.size else float("nan"))
  return acc, pix


def score_params(params, config, prompt: str, classifier: clf_lib.Classifier, num_views: int = 8) -> dict:
  """Color, Geo, IoU, back-facing normal energy and floaters of trained scene params for a toy prompt."""
  obj = shapes.object_for_prompt(prompt)
  step = config.train.num_steps
  scene = Scene.from_config(config)
  cams = eval_cameras(num_views)
  out = scene.render_chunked(params, cams, step=step, light_pos=preview_lights(cams), height=EVAL_SIZE,
                             width=EVAL_SIZE)
  result = {"color": None, "geo": None, "colour_only": None}
  if obj.is_single:
    want_s, want_c = shapes.SHAPES.index(obj.parts[0].shape), shapes.COLOUR_NAMES.index(obj.parts[0].colour)
    s, c = classifier.predict(out["rgb_modes"][..., cam_lib.SHADED, :])
    result["color"] = float(np.mean((s == want_s) & (c == want_c)))
    result["colour_only"] = float(np.mean(c == want_c))  # the colour head alone (shape ignored)
    s, _ = classifier.predict(out["rgb_modes"][..., cam_lib.TEXTURELESS, :])
    result["geo"] = float(np.mean(s == want_s))
  held_out = eval_cameras(num_views, offset_deg=180.0 / num_views)
  out = scene.render_chunked(params, held_out, step=step, light_pos=preview_lights(held_out), height=EVAL_SIZE,
                             width=EVAL_SIZE, keep=("opacity", "loss_orient", "albedo"), all_modes=False)
  visible = np.asarray(shapes.visible_part(obj.arrays(), held_out, EVAL_SIZE, EVAL_SIZE))
  truth = visible >= 0
  pred = out["opacity"] > 0.5
  inter = (pred & truth).sum(axis=(1, 2))
  union = np.maximum((pred | truth).sum(axis=(1, 2)), 1)
  result["iou"] = float(np.mean(inter / union))
  opacity = np.asarray(out["opacity"], np.float64)
  result["backfacing"] = float(np.sum(out["loss_orient"]) / max(np.sum(opacity), 1e-12))
  outside = ~_dilate(truth)
  result["floaters"] = float(np.sum(opacity * outside) / max(np.sum(outside), 1))
  fractions = part_colour_fractions(out["albedo"], out["opacity"], visible, [q.colour for q in obj.parts])
  result["part_colour"], result["part_pixels"] = part_colour_scores(fractions)
  return result


def run_prompt(prompt: str, config, workdir, classifier, progress: bool = False) -> Score:
  """Trains one prompt into `workdir` (continuing it if it already holds checkpoints) and scores it."""
  from dreamjax import train
  config = config.copy_and_resolve_references()
  config.prompt = prompt
  t0 = time.time()
  wd = pathlib.Path(workdir)
  resume = (wd / "checkpoints").is_dir()
  state = train.train_and_evaluate(config, wd, resume=resume, export=False, progress=progress)
  s = score_params(jax.device_get(state.params), config, prompt, classifier)
  return Score.from_result(prompt, s, time.time() - t0)


def part_colour_text(part_colour, part_pixels=None) -> str:
  """'0 / 100 (px 35 / 98)': per part, the part colour accuracy and the mean right-pixel fraction (%); '–' when
  not scored."""
  if not part_colour:
    return "–"
  pct = lambda vs: " / ".join("–" if np.isnan(v) else f"{100 * v:.0f}" for v in vs)
  return pct(part_colour) + (f" (px {pct(part_pixels)})" if part_pixels else "")


def two_part_colour_means(scores) -> list[float]:
  """For each two-part object among `scores` (Score or dicts), the mean of its parts' colour accuracy."""
  get = lambda s, k: s[k] if isinstance(s, dict) else getattr(s, k)
  return [float(np.nanmean(get(s, "part_colour"))) for s in scores
          if get(s, "part_colour") and len(get(s, "part_colour")) > 1]


def mean_part_colour(scores) -> float | None:
  """Mean over the two-part objects among `scores` of their parts' mean colour accuracy; None if there are none."""
  vals = two_part_colour_means(scores)
  return float(np.mean(vals)) if vals else None


def table(scores: list[Score]) -> str:
  """A markdown table with a mean row (Color/Geo over single objects, part colour over two-part objects, the rest
  over all)."""
  fmt = lambda v: "–" if v is None else f"{100 * v:.0f}"
  rows = ["| prompt | Color R-prec. (%) | Geo R-prec. (%) | part colour (%) | IoU | back-facing | floaters | "
          "train+eval s |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  rows += [f"| {s.prompt} | {fmt(s.color)} | {fmt(s.geo)} | {part_colour_text(s.part_colour, s.part_pixels)} | "
           f"{s.iou:.2f} | "
           f"{s.backfacing:.4f} | {s.floaters:.4f} | {s.seconds:.0f} |" for s in scores]
  singles = [s for s in scores if s.color is not None]
  mean = lambda xs: float(np.mean(xs)) if xs else None
  rows.append(f"| **mean** | {fmt(mean([s.color for s in singles]))} | {fmt(mean([s.geo for s in singles]))} | "
              f"{fmt(mean_part_colour(scores))} | "
              f"{np.mean([s.iou for s in scores]):.2f} | {np.mean([s.backfacing for s in scores]):.4f} | "
              f"{np.mean([s.floaters for s in scores]):.4f} | {sum(s.seconds for s in scores):.0f} |")
  return "\n".join(rows)


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  if f.steps < 0:
    raise ValueError(f"--steps must be >= 1, or 0 for the config's train.num_steps (got {f.steps})")
  config = cli.resolved_config()
  if f.steps:
    config.train.num_steps = f.steps
  config.train.preview_every = 0
  config_check.check(config, require_prompt=False)
  if f.out:
    workdir_lib.check_output_file(f.out)
  prompts = [p.strip() for p in f.prompts.split(";")] if f.prompts else list(shapes.PROMPTS)
  for p in prompts:
    try:
      shapes.object_for_prompt(p)
    except KeyError as e:
      raise ValueError(e.args[0]) from None
  classifier = clf_lib.load()
  root = pathlib.Path(f.workdir_root)
  scores = []
  for p in prompts:
    s = run_prompt(p, config, root / p.replace(" ", "_"), classifier)
    print(f"{p}: Color {s.color}, Geo {s.geo}, part colour {part_colour_text(s.part_colour, s.part_pixels)}, "
          f"IoU {s.iou:.3f}, back-facing {s.backfacing:.4f}, floaters {s.floaters:.4f} ({s.seconds:.0f} s)", flush=True)
    scores.append(s)
  text = table(scores)
  print(text)
  if f.out:
    out = pathlib.Path(f.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Toy R-precision\n\nCommand: `python -m dreamjax.toy.evaluate {' '.join(sys.argv[1:])}`\n\n"
                   f"{text}\n")


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flag("configs/toy.py")
  flags.DEFINE_string("prompts", "", "';'-separated toy prompts (default: every prompt of the toy world).")
  flags.DEFINE_integer("steps", 0, "Override train.num_steps.")
  flags.DEFINE_string("workdir_root", "runs/toy_eval", "One run directory per prompt below this.")
  flags.DEFINE_string("out", "", "Write the markdown table here too.")
  cli.run(main, "toy.evaluate", errors=(config_check.ConfigError, workdir_lib.WorkdirError),
          interrupted=(stop_signals.Interrupted,))
