"""The shipped prompt sets."""

from dreamjax import prompts


def test_coco_captions_are_the_153_and_normalised_as_in_the_paper():
  """153 captions; normalisation = lower case, strip ' .,' at both ends, one trailing period (checked per caption
  against the raw text)."""
  raw = prompts.coco_captions(normalize=False)
  norm = prompts.coco_captions()
  assert len(raw) == len(norm) == 153
  for r, n in zip(raw, norm):
    assert n.endswith(".") and not n.endswith("..") and n == n.lower()
    assert n[:-1] == r.lower().strip(" .,")


def test_library_has_the_paper_forms():
  lib = prompts.library()
  assert len(lib) >= 10 and all(not p.startswith("#") for p in lib)
  assert any(p.startswith("a DSLR photo of") for p in lib)
  assert any(p.startswith("a zoomed out DSLR photo of") for p in lib)
