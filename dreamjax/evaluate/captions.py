"""Caption sets of the evaluation: the distractors a run's caption is ranked among, and the captions launch trains."""

from __future__ import annotations

import pathlib


def read(spec: str) -> list[str]:
  """'coco153' (the shipped captions, normalised as in the paper), 'toy' (every toy prompt) or a text file (one
  caption a line)."""
  if spec == "coco153":
    from dreamjax import prompts
    return prompts.coco_captions()
  if spec == "toy":
    from dreamjax.toy import shapes
    return list(shapes.PROMPTS)
  path = pathlib.Path(spec).expanduser()
  if not path.is_file():
    raise ValueError(f"--captions {spec!r}: use coco153, toy or a text file with one caption a line")
  captions = [l.strip() for l in path.read_text().splitlines() if l.strip()]
  if not captions:
    raise ValueError(f"--captions {spec!r} holds no captions")
  return captions
