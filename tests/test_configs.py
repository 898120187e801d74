"""Every config file loads, passes validation with a prompt, and the paper config carries the paper's numbers."""

import pathlib

import importlib
import pytest

from dreamjax import train

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parent.parent / "configs").glob("*.py")
                 if not p.stem.startswith(("_", "edit_")))  # edit_*: overlays of python -m dreamjax.edit


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  c.prompt = c.prompt or "a hamburger"
  train.validate_config(c)
  assert c.optim.total_steps == c.train.num_steps


def test_paper_defaults():
  """DreamFusion's stated hyperparameters (DF §3, A.2) are the defaults of configs/dreamfusion.py."""
  c = importlib.import_module("configs.dreamfusion").get_config()
  assert tuple(c.camera.elevation_range) == (-10.0, 90.0) and tuple(c.camera.distance_range) == (1.0, 1.5)
  assert tuple(c.camera.focal_range) == (0.7, 1.35) and c.render.height == c.render.width == 64
  assert c.render.radius == 1.4 and c.nerf.num_freqs == 8 and c.nerf.width == 128 and c.nerf.num_blocks == 5
  assert (c.nerf.blob_strength, c.nerf.blob_width) == (5.0, 0.2)
  assert (c.nerf.ipe_var_start, c.nerf.ipe_var_end) == (5e-2, 2e-3)
  assert (c.loss.orient_start, c.loss.orient_end) == (1e-4, 1e-2) and 1e-3 <= c.loss.opacity <= 5e-3
  assert (c.shading.albedo_only_steps, c.shading.shading_prob, c.shading.textureless_prob) == (1000, 0.75, 0.5)
  assert c.distill.name == "sds" and c.train.num_steps == 15000
  assert (c.optim.name, c.optim.beta1, c.optim.beta2, c.optim.block_size, c.optim.exponent_override) == (
      "shampoo", 0.9, 0.9, 128, 2)
  assert (c.optim.lr_init, c.optim.lr_peak, c.optim.lr_end, c.optim.warmup_steps) == (1e-9, 1e-4, 1e-6, 3000)
