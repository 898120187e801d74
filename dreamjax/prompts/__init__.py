"""Prompt sets shipped with dreamjax.

library.txt: DreamFusion's prompt forms ("a DSLR photo of ...", "a zoomed out DSLR photo of ...").
coco_object_centric_val_captions.txt: the 153 object-centric COCO validation captions of DreamFusion's CLIP
R-Precision evaluation (the Dream Fields set; MS-COCO annotations, CC BY 4.0), as published.
"""

from __future__ import annotations

import pathlib

_HERE = pathlib.Path(__file__).parent


def library() -> list[str]:
  """The prompt library, comments and blank lines removed."""
  lines = (_HERE / "library.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]


def coco_captions(normalize: bool = True) -> list[str]:
  """The 153 evaluation captions; normalised as in the paper (`c.lower().strip(' .,') + '.'`) by default."""
  lines = [l for l in (_HERE / "coco_object_centric_val_captions.txt").read_text().splitlines() if l.strip()]
  return [l.lower().strip(" .,") + "." for l in lines] if normalize else lines
