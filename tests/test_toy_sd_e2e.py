"""End to end through the Stable Diffusion code path: configs/toy_sd.py loads the shipped toy latent-diffusion model
(a diffusers SD folder) with `StableDiffusion.from_pretrained`, and text-to-3D runs as with SD 1.5: CLIP tokenizer
and text encoder with view suffixes, the VAE encoder differentiated, latents x scaling_factor, CFG and SDS on
latents. The judge is independent of the prior: the toy classifier's colour head on shaded renders, and the
analytic silhouette.

What this model delivers today (docs/toy_sd.md) is the prompt's colour on an object, not the shape: the runs fill
much of the scene bound. So the test asserts the colour (measured: 100% of the views for both prompts, at 150 steps
with the config's guidance 100, at 200 with 30 and at 600 with 30 and 100; and at 150 steps again after the config
put a random solid background in every view) and an IoU above the untrained density blob's (0.25-0.26 against the
cube and the sphere; measured 0.45-0.48 at 150 steps, 0.45 / 0.47 with the solid backgrounds, 0.47-0.50 at 200).

Whether the SD code path itself can carry a shape is tested without the toy UNet: SDS against the exact latent
denoiser of a known object (`priors.oracle.LatentOraclePrior`) must rebuild it.
"""

import jax
import pytest

from configs import toy_sd
from dreamjax import train
from dreamjax.toy import classifier as clf_lib
from dreamjax.toy import evaluate

PROMPTS = ("a red cube", "a blue sphere")
STEPS = 150  # the config's albedo-only warm-up (100) and 50 shaded steps
COLOUR_MIN = 0.75  # fraction of the 8 shaded 30°-elevation views whose colour head names the prompted colour
IOU_MIN = 0.35  # mean silhouette IoU over 8 held-out azimuths


@pytest.mark.parametrize("prompt", PROMPTS)
def test_toy_prompt_through_the_sd_path(prompt, tmp_path):
  config = toy_sd.get_config()
  config.prompt = prompt
  config.train.num_steps = STEPS
  config.export.video_frames = 8
  exports = prompt == PROMPTS[0]  # the export through this config is checked once (CI time)
  state = train.train_and_evaluate(config, tmp_path, num_devices=1, progress=False, export=exports)
  assert list((tmp_path / "previews").glob("*.png"))
  assert list((tmp_path / "export").glob("mesh.*")) or not exports
  score = evaluate.score_params(jax.device_get(state.params), config, prompt, clf_lib.load())
  print(f"{prompt}: {score}")
  assert score["colour_only"] >= COLOUR_MIN, score
  assert score["iou"] >= IOU_MIN, score


SHORT_ORACLE = {"steps": 60, "warmup": 20, "albedo_only": 30}  # CI's budget (52 s alone): measured IoU 0.58, Geo
# 100%; the untrained scene scores IoU 0.35, Geo 0% against the cone. At 100 steps with configs/toy_sd.py's warm-ups
# (`python -m dreamjax.toy.oracle_check --prompts "a red cone" --steps 100`): latent oracle IoU 0.84, pixel oracle 0.76,
# both Color and Geo 100%.
ORACLE_IOU_MIN = 0.45


def test_latent_oracle_rebuilds_a_cone_through_the_sd_path(tmp_path):
  """The SD code path carries shape: SDS against the exact latent denoiser of a red cone (z* = the shipped VAE's
  scaled latents of the true render; `priors.oracle.LatentOraclePrior`) reaches the scene only through
  `StableDiffusion.to_latents` (the VAE encoder differentiated, posterior sample, scaling_factor), and rebuilds the
  cone: the classifier names the textureless renders a cone (the untrained scene: in none), and the silhouette IoU
  against the analytic cone on held-out azimuths is above the untrained scene's. Measured: see SHORT_ORACLE."""
  from dreamjax.priors import load
  from dreamjax.toy import oracle_check
  config = oracle_check.oracle_config(toy_sd.get_config(), "a red cone", SHORT_ORACLE["steps"])
  config.optim.warmup_steps = SHORT_ORACLE["warmup"]
  config.shading.albedo_only_steps = SHORT_ORACLE["albedo_only"]
  score = oracle_check.run("latent", "a red cone", config, tmp_path, clf_lib.load(), load.load_prior(config),
                               num_devices=1)
  print(score)
  assert score.iou >= ORACLE_IOU_MIN, score
  assert score.geo >= 0.75, score


def test_oracle_check_refuses_bad_input_with_one_line(tmp_path):
  """An unknown prompt and a pixel-space config each end with one line naming the flag or field, exit status 2, and
  nothing written."""
  import os
  import subprocess
  import sys
  root = toy_sd.TOY_SD.parents[3]
  run = lambda *a: subprocess.run([sys.executable, "-m", "dreamjax.toy.oracle_check", "--workdir_root",
                                   str(tmp_path / "w"), *a], cwd=root, capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(root)))
  r = run("--prompts", "a purple cube")
  assert r.returncode == 2 and "purple" in r.stderr.strip().splitlines()[-1], r.stderr
  r = run("--prompts", "a red cone", "--config", "configs/toy.py")
  assert r.returncode == 2 and "config.prior.kind" in r.stderr.strip().splitlines()[-1], r.stderr
  assert not (tmp_path / "w").exists()
