"""`python -m dreamjax.evaluate`: CLIP R-Precision (DreamFusion Table 1) of finished runs, or toy R-precision of
toy-world runs.

  python -m dreamjax.evaluate --workdirs runs/coco153/* --clip openai/clip-vit-base-patch32 \\
      --clip openai/clip-vit-base-patch16 --clip openai/clip-vit-large-patch14 --out results/table

For each run: its latest checkpoint (the run must be finished), one render per azimuth (default one, azimuth 0) at
30° elevation over white, at each CLIP's input size; Color = shaded, Geo = textureless. Its caption (the run's
prompt, no template) is ranked among the caption set (default: the 153 COCO captions; added if missing). Prints the
table; `--out PREFIX` also writes PREFIX.md and PREFIX.json. Runs with `prior.kind == "toy"` are scored with the toy
classifier instead (Color, Geo, IoU over `--toy_views` views), with no CLIP needed.
"""

from __future__ import annotations

import pathlib
import shlex
import sys

from dreamjax import checkpoint as ckpt_lib
from dreamjax import cli
from dreamjax import files
from dreamjax.evaluate import captions as captions_lib
from dreamjax.evaluate import harness
from dreamjax.evaluate import protocol as proto_lib
from dreamjax.evaluate import table as table_lib


def make_protocol(f) -> proto_lib.Protocol:
  if f.azimuths:
    return proto_lib.Protocol(elevation=f.elevation, azimuths=tuple(float(a) for a in f.azimuths))
  return proto_lib.Protocol.evenly(f.views, elevation=f.elevation)


def write_outputs(prefix: str, markdown: str, json_text: str, command: str) -> None:
  base = prefix[:-3] if prefix.endswith(".md") else prefix[:-5] if prefix.endswith(".json") else prefix
  files.write_text(pathlib.Path(base + ".md"), f"Command: `{command}`\n\n{markdown}\n")
  files.write_text(pathlib.Path(base + ".json"), json_text + "\n")
  print(f"wrote {base}.md and {base}.json")


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  workdirs = list(f.workdirs) + list(argv[1:])  # `--workdirs runs/*`: the shell's expansion lands after the flag
  if not workdirs:
    raise ValueError("pass the runs to evaluate: --workdirs runs/a,runs/b or --workdirs runs/*")
  runs = [harness.load_run(w) for w in workdirs]
  toy = [r.is_toy for r in runs]
  if any(toy) and not all(toy):
    raise ValueError("toy-world and other runs cannot be scored together; evaluate them in two commands")
  command = "python -m dreamjax.evaluate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  if all(toy):
    if f.clip:
      print("dreamjax.evaluate: toy-world runs are scored with the toy classifier; --clip is not used")
    doc, scores = harness.score_toy(runs, f.toy_views)
    from dreamjax.toy import evaluate as toy_eval
    s = doc["models"]["toy classifier"]
    cells = ", ".join(f"{k.capitalize()} {table_lib.cell(v)}" for k, v in s.items() if k != "iou")
    markdown = (f"{toy_eval.table(scores)}\n\nToy R-precision (%, mean ± SEM over runs; {len(runs)} run(s), "
                f"{f.toy_views} views each): {cells or 'no single objects'}; IoU {s['iou'].mean:.2f}.")
  else:
    if not f.clip:
      raise ValueError("pass at least one CLIP model: --clip openai/clip-vit-base-patch32 (hub id or folder)")
    from dreamjax.evaluate import clip_model
    clips = [clip_model.load(c, f.clip_weights) for c in f.clip]
    captions = captions_lib.read(f.captions)
    doc = harness.score_clip(runs, clips, make_protocol(f), captions, renders_dir=f.renders_dir or None)
    markdown = table_lib.clip_markdown(doc["models"], method=f.method, captions=len(captions))
  print(markdown)
  if f.out:
    write_outputs(f.out, markdown, table_lib.to_json(doc), command)


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_list("workdirs", [], "Run directories to evaluate (comma-separated; more may follow as arguments).")
  flags.DEFINE_multi_string("clip", [], "CLIP model: hub id (openai/clip-vit-base-patch32) or folder; repeatable.")
  flags.DEFINE_enum("clip_weights", "auto", ["auto", "msgpack", "safetensors"], "CLIP weight file to read.")
  flags.DEFINE_string("captions", "coco153", "Caption set: coco153, toy, or a text file (one caption a line).")
  flags.DEFINE_integer("views", 1, "Renders per run, at azimuths k * 360 / views.")
  flags.DEFINE_list("azimuths", [], "Explicit azimuths in degrees (overrides --views).")
  flags.DEFINE_float("elevation", 30.0, "Camera elevation in degrees.")
  flags.DEFINE_integer("toy_views", 8, "Views per toy-world run (toy R-precision).")
  flags.DEFINE_string("method", "dreamjax", "The table row's name.")
  flags.DEFINE_string("out", "", "Also write OUT.md and OUT.json.")
  flags.DEFINE_string("renders_dir", "", "Save each run's evaluation renders here (PNG: Color row, Geo row).")
  cli.run(main, "evaluate", errors=(harness.EvalError, ckpt_lib.CheckpointError), takes_arguments=True)
