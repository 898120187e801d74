"""Scoring finished runs: load each run's latest parameters, render the protocol's views, and compute R@1.

Runs of the toy world (`config.prior.kind == "toy"`) are scored with the toy classifier (`dreamjax.toy.evaluate`:
Color, Geo and silhouette IoU over its evaluation views), all others with CLIP models against a caption set.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import numpy as np

from dreamjax import checkpoint as ckpt_lib
from dreamjax import visualize
from dreamjax.evaluate import protocol as proto_lib
from dreamjax.evaluate import retrieval
from dreamjax.nerf.scene import Scene


class EvalError(Exception):
  """A run or an option that cannot be evaluated; the message is one line saying what to do."""


@dataclasses.dataclass
class Run:
  workdir: str
  config: object
  params: dict
  step: int

  @property
  def prompt(self) -> str:
    return str(self.config.prompt)

  @property
  def is_toy(self) -> bool:
    return self.config.prior.kind == "toy"


def load_run(workdir) -> Run:
  """The latest parameters of a finished run (its checkpoint step equals train.num_steps), else EvalError."""
  wd = pathlib.Path(workdir)
  if not wd.is_dir():
    raise EvalError(f"{workdir}: no such run directory")
  config = ckpt_lib.load_config(wd)
  step, total = ckpt_lib.latest_step(wd), int(config.train.num_steps)
  if step is None or step < total:
    raise EvalError(f"{workdir} is unfinished (checkpoint step {step or 0} of {total}); finish it (`python -m "
                    f"dreamjax.train --resume` or `python -m dreamjax.evaluate.launch`) or leave it out")
  restored = ckpt_lib.restore_latest_params(wd)
  return Run(workdir=str(workdir), config=restored.config, params=jax.device_get(restored.params),
             step=restored.step)


def render_run(run: Run, protocol: proto_lib.Protocol, size: int) -> dict:
  """The protocol's {'color', 'geo'} renders [A, size, size, 3] of a run, from its turntable orbit."""
  orbit = visualize.Orbit.from_config(run.config)
  return proto_lib.render(Scene.from_config(run.config), run.params, protocol, orbit, step=run.step, size=size)


def save_renders(images: dict, path) -> None:
  """A PNG of a run's evaluation renders: a row per kind (Color, Geo), a column per azimuth."""
  from dreamjax import video
  stacked = np.concatenate([images[k] for k in proto_lib.KINDS])
  video.save_png(video.image_grid(stacked, rows=len(proto_lib.KINDS), cols=len(images["color"])), path)


def score_clip(runs: list[Run], clips: list, protocol: proto_lib.Protocol, distractors: list[str],
               renders_dir=None) -> dict:
  """R@1 of every run under every CLIP model. Returns the evaluation document:
  {'models': {label: {'source', 'weights', 'input_size', 'color': Summary, 'geo': Summary}},
   'runs': [{'workdir', 'prompt', 'seed', 'step', 'render_seconds', 'scores': {label: {kind: {'hits', 'ranks'}}}}]}.
  Each run is ranked against `distractors` plus its own caption if missing (`retrieval.caption_set`). With
  `renders_dir`, the renders are saved there as `<run name>_<size>.png` (`save_renders`)."""
  renders: dict[tuple, dict] = {}
  rows = [{"workdir": r.workdir, "prompt": r.prompt, "seed": int(r.config.seed), "step": r.step,
           "render_seconds": {}, "scores": {}} for r in runs]
  models = {}
  for clip in clips:
    h, w = clip.input_size
    if h != w:
      raise EvalError(f"CLIP {clip.source!r} takes {h}x{w} inputs; only square inputs are supported")
    if clip.label in models:
      raise EvalError(f"two CLIP models are both labelled {clip.label!r}; pass each model once")
    sets = [retrieval.caption_set(distractors, r.prompt) for r in runs]
    unique = sorted({c for captions, _ in sets for c in captions})
    text = dict(zip(unique, clip.embed_texts(unique)))
    per_kind = {k: [] for k in proto_lib.KINDS}
    for run, row, (captions, true_index) in zip(runs, rows, sets):
      if (run.workdir, h) not in renders:
        t0 = time.time()
        renders[(run.workdir, h)] = render_run(run, protocol, h)
        row["render_seconds"][str(h)] = round(time.time() - t0, 3)
        if renders_dir:
          name = f"{pathlib.Path(run.workdir).name}_{h}.png"
          save_renders(renders[(run.workdir, h)], pathlib.Path(renders_dir) / name)
      text_emb = np.stack([text[c] for c in captions])
      scores = {}
      for kind in proto_lib.KINDS:
        sims = retrieval.similarities(clip.embed_images(renders[(run.workdir, h)][kind]), text_emb)
        r = retrieval.ranks(sims, true_index)
        scores[kind] = {"hits": (r == 0).astype(int).tolist(), "ranks": r.tolist()}
        per_kind[kind].append(retrieval.run_score(r == 0))
      row["scores"][clip.label] = scores
    n_renders = len(runs) * len(protocol.azimuths)
    models[clip.label] = {"source": clip.source, "weights": clip.weights, "input_size": h,
                          **{k: retrieval.summarize(v, n_renders) for k, v in per_kind.items()}}
  return {"kind": "clip", "protocol": protocol.to_json(), "captions": len(distractors), "models": models,
          "runs": rows}


def score_toy(runs: list[Run], num_views: int) -> tuple[dict, list]:
  """Toy R-precision of toy-world runs with the toy classifier (`dreamjax.toy.evaluate.score_params`). Returns the
  evaluation document and the per-run `toy.evaluate.Score`s (for its per-prompt table)."""
  from dreamjax.toy import classifier as clf_lib
  from dreamjax.toy import evaluate as toy_eval
  classifier = clf_lib.load()
  scores, rows = [], []
  for run in runs:
    t0 = time.time()
    s = toy_eval.score_params(run.params, run.config, run.prompt, classifier, num_views=num_views)
    scores.append(toy_eval.Score.from_result(run.prompt, s, time.time() - t0))
    rows.append({"workdir": run.workdir, "prompt": run.prompt, "seed": int(run.config.seed), "step": run.step,
                 **s, "seconds": round(scores[-1].seconds, 3)})
  singles = [s for s in scores if s.color is not None]
  summary = {"iou": retrieval.summarize([s.iou for s in scores], len(scores) * num_views)}
  if singles:
    summary["color"] = retrieval.summarize([s.color for s in singles], len(singles) * num_views)
    summary["geo"] = retrieval.summarize([s.geo for s in singles], len(singles) * num_views)
  pairs = toy_eval.two_part_colour_means(scores)
  if pairs:  # two-part objects: the mean over their parts of the part colour accuracy
    summary["part colour"] = retrieval.summarize(pairs, len(pairs) * num_views)
  doc = {"kind": "toy", "protocol": {"elevation": toy_eval.EVAL_ELEVATION, "views": num_views,
                                     "size": toy_eval.EVAL_SIZE},
         "models": {"toy classifier": summary}, "runs": rows}
  return doc, scores
