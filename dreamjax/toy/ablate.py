"""Ablations in the toy world: the toy R-precision (`toy.evaluate`) of several config variants ("cells") over a set of
prompts, one table.

  python -m dreamjax.toy.ablate --cells "off=loss.orient_end:0,loss.orient_start:0;default=" \\
      --prompts "a red cube;a green sphere" --root runs/ablate --out docs/ablation.md [--shard 0/2]

A cell is `name=field:value,field:value` (fields of the run config, values parsed like --config overrides: numbers,
true/false, text); an empty list is the config unchanged. Every (cell, prompt) run trains into ROOT/CELL/PROMPT and
writes its score to ROOT/CELL/PROMPT/score.json; a run with a score is not repeated, so the command resumes, and
`--shard i/n` takes every n-th run (two shards side by side share a 2-core CPU better than one). The table is written
from every score present. `--rescore` scores the finished runs again from their checkpoints (no training), e.g.
after a new metric was added.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import sys

import numpy as np

from dreamjax import cli
from dreamjax import config_check
from dreamjax import files
from dreamjax import stop_signals
from dreamjax import workdir as workdir_lib
from dreamjax.toy import classifier as clf_lib
from dreamjax.toy import evaluate as toy_eval
from dreamjax.toy import shapes


def parse_cells(text: str) -> list[tuple[str, dict]]:
  """'a=x.y:1,z.w:2;b=' -> [('a', {'x.y': 1, 'z.w': 2}), ('b', {})]; ValueError naming a malformed cell."""
  cells = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    name, sep, body = part.partition("=")
    if not sep or not name.strip():
      raise ValueError(f"--cells: {part!r} is not NAME=field:value,...")
    overrides = {}
    for item in filter(None, (i.strip() for i in body.split(","))):
      field, sep, value = item.partition(":")
      if not sep:
        raise ValueError(f"--cells: {item!r} in cell {name!r} is not field:value")
      overrides[field.strip()] = _value(value.strip())
    cells.append((name.strip(), overrides))
  if not cells:
    raise ValueError("--cells is empty: give at least one NAME=... cell")
  if len({n for n, _ in cells}) != len(cells):
    raise ValueError("--cells: two cells share a name")
  return cells


def _value(text: str):
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply(config, overrides: dict):
  """A copy of `config` with `overrides` {'section.field': value}; ConfigError for a field the config lacks."""
  c = config.copy_and_resolve_references()
  for field, value in overrides.items():
    *path, leaf = field.split(".")
    node = c
    for p in path:
      if p not in node:
        raise config_check.ConfigError(f"--cells: config.{field} is not a field of the config")
      node = node[p]
    if leaf not in node:
      raise config_check.ConfigError(f"--cells: config.{field} is not a field of the config")
    node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (int, float)) and not isinstance(
        node[leaf], bool) else value
  return c


def run_dir(root: pathlib.Path, cell: str, prompt: str) -> pathlib.Path:
  return root / cell / prompt.replace(" ", "_")


def table(cells: list[str], prompts: list[str], scores: dict) -> str:
  """Per cell: means over the prompts scored so far (Color/Geo over single objects) and the per-prompt IoU."""
  fmt = lambda v: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else v
  head = ("| cell | runs | Color (%) | Geo (%) | part colour (%) | IoU | back-facing | floaters | " +
          " | ".join(f"{p}: IoU, part colours" if not shapes.object_for_prompt(p).is_single else f"IoU {p}"
                     for p in prompts) + " |")
  rows = [head, "|" + " --- |" * (8 + len(prompts))]
  for cell in cells:
    got = [scores[(cell, p)] for p in prompts if (cell, p) in scores]
    if not got:
      continue
    singles = [s for s in got if s["color"] is not None]
    mean = lambda key, xs: float(np.mean([s[key] for s in xs])) if xs else None
    pct = lambda v: fmt(None if v is None else f"{100 * v:.0f}")
    per = [_per_prompt(scores.get((cell, p)), shapes.object_for_prompt(p).is_single) for p in prompts]
    rows.append(f"| {cell} | {len(got)} | {pct(mean('color', singles))} | {pct(mean('geo', singles))} | "
                f"{pct(toy_eval.mean_part_colour(got))} | {mean('iou', got):.2f} | {mean('backfacing', got):.4f} | "
                f"{mean('floaters', got):.4f} | " +
                " | ".join(per) + " |")
  return "\n".join(rows)


def _per_prompt(score: dict | None, single: bool) -> str:
  if score is None:
    return "–"
  if single:
    return f"{score['iou']:.2f}"
  return f"{score['iou']:.2f}, {toy_eval.part_colour_text(score.get('part_colour'), score.get('part_pixels'))}"


def rescore(wd: pathlib.Path, classifier) -> dict:
  """The score of a finished run in `wd`, computed again from its latest checkpoint (the training time kept)."""
  from dreamjax.evaluate import harness
  run = harness.load_run(wd)
  old = json.loads((wd / "score.json").read_text())
  s = toy_eval.score_params(run.params, run.config, run.prompt, classifier)
  return dataclasses.asdict(toy_eval.Score.from_result(run.prompt, s, old["seconds"]))


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  cells = parse_cells(f.cells)
  prompts = [p.strip() for p in f.prompts.split(";") if p.strip()]
  for p in prompts:
    try:
      shapes.object_for_prompt(p)
    except KeyError as e:
      raise ValueError(e.args[0]) from None
  index, count = cli.parse_shard(f.shard)
  base = cli.resolved_config()
  base.train.preview_every = 0
  configs = {name: apply(base, overrides) for name, overrides in cells}
  for c in configs.values():
    config_check.check(c, require_prompt=False)
  if f.out:
    workdir_lib.check_output_file(f.out)
  root = pathlib.Path(f.root)
  classifier = clf_lib.load()
  jobs = [(cell, p) for cell, _ in cells for p in prompts]
  for n, (cell, prompt) in enumerate(jobs):
    wd = run_dir(root, cell, prompt)
    if n % count != index:
      continue
    if (wd / "score.json").exists():
      if f.rescore:
        files.write_text(wd / "score.json", json.dumps(rescore(wd, classifier)))
        print(f"{cell} / {prompt}: rescored", flush=True)
      continue
    s = toy_eval.run_prompt(prompt, configs[cell], wd, classifier)
    files.write_text(wd / "score.json", json.dumps(dataclasses.asdict(s)))
    print(f"{cell} / {prompt}: Color {s.color}, Geo {s.geo}, part colour "
          f"{toy_eval.part_colour_text(s.part_colour, s.part_pixels)}, "
          f"IoU {s.iou:.3f}, back-facing {s.backfacing:.4f}, floaters {s.floaters:.4f} ({s.seconds:.0f} s)",
          flush=True)
  scores = {}
  for cell, p in jobs:
    path = run_dir(root, cell, p) / "score.json"
    if path.exists():
      scores[(cell, p)] = json.loads(path.read_text())
  text = table([c for c, _ in cells], prompts, scores)
  print(text)
  if f.out:
    cell_lines = "\n".join(f"- **{name}**: {', '.join(f'{k}={v}' for k, v in o.items()) or 'the config as is'}"
                           for name, o in cells)
    out = pathlib.Path(f.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Toy ablation\n\nCommand: `python -m dreamjax.toy.ablate {' '.join(sys.argv[1:])}`\n\n"
                   f"{cell_lines}\n\n{text}\n")


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flag("configs/toy.py")
  flags.DEFINE_string("cells", None, "';'-separated cells NAME=field:value,... (see the module docstring).",
                      required=True)
  flags.DEFINE_string("prompts", "a red cube;a green sphere;a blue torus;a yellow cone", "';'-separated toy prompts.")
  flags.DEFINE_string("root", "runs/ablate", "Runs go to ROOT/CELL/PROMPT.")
  flags.DEFINE_string("shard", "0/1", "i/n: run every n-th (cell, prompt) starting at i.")
  flags.DEFINE_string("out", "", "Write the markdown table here too.")
  flags.DEFINE_bool("rescore", False, "Score the finished runs again from their checkpoints (no training).")
  cli.run(main, "toy.ablate", errors=(config_check.ConfigError, workdir_lib.WorkdirError),
          interrupted=(stop_signals.Interrupted,))
