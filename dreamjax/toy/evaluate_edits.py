"""Editing in the toy world: each (source prompt -> target prompt) pair edited by several methods, scored by the toy
classifier and by how much of the source's shape the edit keeps.

  python -m dreamjax.toy.evaluate_edits --root runs/edits --steps 200 --out docs/edits.md \\
      [--pairs "a red cube>a blue cube;a red sphere>a red cube"] [--methods pds,dds,sds] [--trainable appearance]
      [--keep_opacity 1000] [--shard 0/2]

Sources are trained with configs/toy.py into ROOT/source/<prompt> (kept: a source that exists is reused); each edit
runs `python -m dreamjax.edit`'s code into ROOT/<method>/<source>__<target> and writes score.json there (an edit with a
score is not repeated). Per edit, on the 8 evaluation views at 30° elevation:
  * colour / shape: the fraction of shaded views whose classifier top-1 colour (shape) is the target's;
  * kept IoU: silhouette IoU (opacity > 0.5) between the source and the edit on 8 held-out azimuths (identity);
  * target IoU: silhouette IoU of the edit against the analytic target object.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
import sys
import time

import jax
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import checkpoint as ckpt_lib
from dreamjax import cli
from dreamjax import config_check
from dreamjax import stop_signals
from dreamjax import edit as edit_lib
from dreamjax import train
from dreamjax import workdir as workdir_lib
from dreamjax.nerf.scene import Scene
from dreamjax.toy import classifier as clf_lib
from dreamjax.toy import evaluate as toy_eval
from dreamjax.toy import shapes
from dreamjax.visualize import preview_lights

DEFAULT_PAIRS = "a red cube>a blue cube;a red sphere>a red cube;a green cone>a yellow cone"


@dataclasses.dataclass
class EditScore:
  method: str
  source: str
  target: str
  colour: float  # fraction of shaded views whose top-1 colour is the target's
  shape: float  # fraction whose top-1 shape is the target's
  kept_iou: float  # silhouette IoU source vs edit, held-out views
  target_iou: float  # silhouette IoU edit vs the analytic target
  seconds: float


def parse_pairs(text: str) -> list[tuple[str, str]]:
  pairs = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    src, sep, tgt = part.partition(">")
    if not sep:
      raise ValueError(f"--pairs: {part!r} is not 'source prompt>target prompt'")
    for p in (src.strip(), tgt.strip()):
      try:
        shapes.object_for_prompt(p)
      except KeyError as e:
        raise ValueError(f"--pairs: {e.args[0]}") from None
    pairs.append((src.strip(), tgt.strip()))
  return pairs


def _silhouettes(scene, params, cams, step) -> np.ndarray:
  out = scene.render_chunked(params, cams, step=step, light_pos=preview_lights(cams), height=toy_eval.EVAL_SIZE,
                             width=toy_eval.EVAL_SIZE, keep=("opacity",), all_modes=False)
  return out["opacity"] > 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean((a & b).sum(axis=(1, 2)) / np.maximum((a | b).sum(axis=(1, 2)), 1)))


def score_edit(source_params, edit_params, config, target: str, classifier) -> dict:
  """Classifier colour / shape agreement with `target` and the kept / target silhouette IoU (see the module doc)."""
  obj = shapes.object_for_prompt(target)
  step = config.train.num_steps
  scene = Scene.from_config(config)
  cams = toy_eval.eval_cameras(8)
  out = scene.render_chunked(edit_params, cams, step=step, light_pos=preview_lights(cams),
                             height=toy_eval.EVAL_SIZE, width=toy_eval.EVAL_SIZE)
  s, c = classifier.predict(out["rgb_modes"][..., cam_lib.SHADED, :])
  held_out = toy_eval.eval_cameras(8, offset_deg=180.0 / 8)
  edit_sil = _silhouettes(scene, edit_params, held_out, step)
  truth = np.asarray(shapes.silhouette(obj.arrays(), held_out, toy_eval.EVAL_SIZE, toy_eval.EVAL_SIZE))
  return {"colour": float(np.mean(c == shapes.COLOUR_NAMES.index(obj.parts[0].colour))),
          "shape": float(np.mean(s == shapes.SHAPES.index(obj.parts[0].shape))),
          "kept_iou": _iou(_silhouettes(scene, source_params, held_out, step), edit_sil),
          "target_iou": _iou(edit_sil, truth)}


def table(scores: list[EditScore]) -> str:
  rows = ["| edit | method | colour (%) | shape (%) | kept IoU | target IoU | s |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
  rows += [f"| {s.source} → {s.target} | {s.method} | {100 * s.colour:.0f} | {100 * s.shape:.0f} | "
           f"{s.kept_iou:.2f} | {s.target_iou:.2f} | {s.seconds:.0f} |" for s in scores]
  return "\n".join(rows)


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  pairs = parse_pairs(f.pairs)
  methods = [m.strip() for m in f.methods.split(",") if m.strip()]
  for m in methods:
    if m not in edit_lib.METHODS:
      raise ValueError(f"--methods: {m!r} is not one of {', '.join(edit_lib.METHODS)}")
  if f.steps < 1:
    raise ValueError(f"--steps must be >= 1 (got {f.steps})")
  index, count = cli.parse_shard(f.shard)
  if f.out:
    workdir_lib.check_output_file(f.out)
  base = cli.resolved_config()
  base.train.preview_every = 0
  config_check.check(base, require_prompt=False)
  root = pathlib.Path(f.root)
  classifier = clf_lib.load()
  jobs = [(m, s, t) for s, t in pairs for m in methods]
  for n, (method, src, tgt) in enumerate(jobs):
    wd = root / method / f"{src.replace(' ', '_')}__{tgt.replace(' ', '_')}"
    if n % count != index or (wd / "score.json").exists():
      continue
    src_dir = root / "source" / src.replace(" ", "_")
    if not (src_dir / "export" / "complete.json").exists() and ckpt_lib.latest_step(src_dir) != base.train.num_steps:
      toy_eval.run_prompt(src, base, src_dir, classifier)
    source_config = edit_lib.upgrade(ckpt_lib.load_config(src_dir))
    restored = ckpt_lib.restore_params_read_only(src_dir, source_config)
    overlay = importlib.import_module(f"configs.edit_{method}").get_config()
    overlay.edit.num_steps = f.steps
    overlay.edit.trainable = f.trainable
    if f.keep_opacity >= 0:
      overlay.edit.keep_opacity = f.keep_opacity
    if method == "sds":  # plain SDS continues with the source run's own rule (the toy's guidance 30)
      overlay.distill = source_config.distill
    config = edit_lib.edit_config(source_config, overlay, prompt=tgt, source_prompt=src, source=str(src_dir.resolve()),
                                  source_step=restored.step)
    config.train.preview_every = 0
    t0 = time.time()
    state = train.train_and_evaluate(config, wd, resume=(wd / "checkpoints").is_dir(), export=False, progress=False,
                                     source_params=restored.params)
    s = score_edit(restored.params, jax.device_get(state.params), config, tgt, classifier)
    score = EditScore(method, src, tgt, seconds=time.time() - t0, **s)
    (wd / "score.json").write_text(json.dumps(dataclasses.asdict(score)))
    print(f"{method}: {src} -> {tgt}: colour {score.colour:.2f}, shape {score.shape:.2f}, kept IoU "
          f"{score.kept_iou:.2f}, target IoU {score.target_iou:.2f} ({score.seconds:.0f} s)", flush=True)
  scores = []
  for method, src, tgt in jobs:
    path = root / method / f"{src.replace(' ', '_')}__{tgt.replace(' ', '_')}" / "score.json"
    if path.exists():
      scores.append(EditScore(**json.loads(path.read_text())))
  text = table(scores)
  print(text)
  if f.out:
    out = pathlib.Path(f.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Toy edits\n\nCommand: `python -m dreamjax.toy.evaluate_edits {' '.join(sys.argv[1:])}`\n\n"
                   f"{text}\n")


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flag("configs/toy.py")
  flags.DEFINE_string("pairs", DEFAULT_PAIRS, "';'-separated 'source>target' toy prompt pairs.")
  flags.DEFINE_string("methods", "sds,dds,pds", "Comma-separated edit methods.")
  flags.DEFINE_integer("steps", 200, "Steps per edit.")
  flags.DEFINE_string("root", "runs/edits", "Sources and edits go below this folder.")
  flags.DEFINE_enum("trainable", "all", ["all", "appearance"], "What the edits may change (config.edit.trainable).")
  flags.DEFINE_float("keep_opacity", -1.0, "config.edit.keep_opacity of the edits (default: each method's config).")
  flags.DEFINE_string("shard", "0/1", "i/n: run every n-th edit starting at i.")
  flags.DEFINE_string("out", "", "Write the markdown table here too.")
  cli.run(main, "toy.evaluate_edits", errors=(config_check.ConfigError, workdir_lib.WorkdirError,
                                               ckpt_lib.CheckpointError), interrupted=(stop_signals.Interrupted,))
