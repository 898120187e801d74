"""The colour-binding diagnostic of two-part prompts (dreamjax/toy/binding.py), checked on fake priors whose answers
are known in closed form, and its command line's refusals."""

import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax.toy import binding
from dreamjax.toy import prior as prior_lib
from dreamjax.toy import shapes

ROOT = pathlib.Path(__file__).resolve().parent.parent
R = 16
PROMPT = "a red cube with a blue sphere on top"


class _TargetPrior:
  """A prior whose ε-prediction is exact for one clean image x* [R, R, 3] in [-1, 1]: ε̂(z_t, t) =
  (z_t − √ā x*) / √(1 − ā), so its one-step estimate x̂₀ is x* whatever the noise, t or text; `bias` is added to
  the conditional prediction only (a caption's embedding is 1, the empty prompt's 0)."""

  def __init__(self, target, bias=0.0):
    self.target = jnp.asarray(target, jnp.float32)
    self.bias = bias
    self.alphas_cumprod = prior_lib.cosine_alphas_cumprod()
    self.params = {}
    self.resolution = (R, R)

  def encode_text(self, prompts):
    return jnp.asarray([[[0.0 if p == "" else 1.0]] for p in prompts], jnp.float32)

  def predict_eps(self, params, z_t, t, emb):
    a = jnp.asarray(self.alphas_cumprod)[t][:, None, None, None]
    eps = (z_t - jnp.sqrt(a) * self.target) / jnp.sqrt(1.0 - a)
    return eps + self.bias * emb[:, :1, :1, None]


@pytest.fixture(scope="module")
def painted():
  return binding.renders(shapes.object_for_prompt(PROMPT), R)


def test_paints_recolour_only_the_parts(painted):
  """The five paints keep the geometry (one visible-part map, both parts in view) and colour the parts as named: the
  swapped red cube with a blue sphere is the true blue cube with a red sphere, pixel for pixel."""
  images, visible = painted
  assert set(images) == set(binding.PAINTS)
  assert (visible == 0).sum() > 100 and (visible == 1).sum() > 100
  other, _ = binding.renders(shapes.object_for_prompt("a blue cube with a red sphere on top"), R)
  np.testing.assert_allclose(images["swapped"], other["true"], atol=1e-6)
  red, blue = np.array(shapes.COLOURS["red"]), np.array(shapes.COLOURS["blue"])
  inner = lambda img, p: img[(visible == p)].mean(axis=0)  # anti-aliased rims move the mean only slightly
  assert np.abs(inner(images["true"], 0) - red).max() < 0.1 and np.abs(inner(images["true"], 1) - blue).max() < 0.1
  assert np.abs(inner(images["top colour"], 0) - blue).max() < 0.1
  np.testing.assert_allclose(inner(images["uncoloured"], 1), binding.GREY, atol=0.1)


def test_pull_of_an_exact_prior_is_its_target(painted):
  """With a prior whose x̂₀ is always x*, the guided x̂₀ at any ω is x* too, so every paint and t band is pulled to
  x*'s mean over each part's visible pixels (NumPy float64)."""
  images, visible = painted
  x_star = np.random.default_rng(0).uniform(-0.9, 0.9, (R, R, 3))
  pulls = binding.pull(_TargetPrior(x_star), PROMPT, images, visible, guidance=30.0, draws=2)
  want = [((x_star[None] + 1) / 2 * np.ones_like(visible[..., None]))[visible == p].mean(axis=0) for p in range(2)]
  for name in binding.PAINTS:
    for band in pulls[name]:
      np.testing.assert_allclose(np.array(band), np.array(want), atol=2e-4)


def test_preference_of_a_text_blind_prior_is_zero_and_a_biased_one_is_closed_form(painted):
  """A prior that ignores the caption has Δ = MSE_u − MSE_c = 0 exactly for every paint (no preference, crossover
  'never'). Adding b to the conditional ε̂ of the exact prior for x* = 0 moves MSE_c by b² + 2b·mean(ε̂_u − ε), and
  ε̂_u − ε = √(ā/(1−ā)) z for the render z = 2x − 1 whatever the noise: the closed form b² + 2b·mean_t √(ā/(1−ā))
  · mean(z), in float64."""
  images, _ = painted
  x_star = np.zeros((R, R, 3))
  blind = binding.preference(_TargetPrior(x_star), PROMPT, images, draws=2)
  for name in binding.PAINTS:
    assert blind[name]["delta"] == 0.0 and blind[name]["mse_c"] == blind[name]["mse_u"]
    assert name == "true" or binding.crossover(blind, name) is None
  b = 0.05
  biased = binding.preference(_TargetPrior(x_star, bias=b), PROMPT, images, draws=2)
  for name in binding.PAINTS:
    abar = prior_lib.cosine_alphas_cumprod()[list(binding.T_GRID)].astype(np.float64)
    offset = np.mean(np.sqrt(abar / (1 - abar))) * np.mean(2 * images[name] - 1)
    np.testing.assert_allclose(biased[name]["mse_c"] - biased[name]["mse_u"], b * b + 2 * b * offset, rtol=2e-3)


def test_crossover_is_where_the_guided_energies_meet():
  """crossover: the ω where MSE_c − ω Δ of the true paint equals the other's; None when the true paint's Δ is not
  larger (then no ω prefers it)."""
  pref = {"true": {"mse_c": 0.07, "delta": 0.005}, "flat": {"mse_c": 0.05, "delta": 0.003},
          "better": {"mse_c": 0.08, "delta": 0.006}}
  w = binding.crossover(pref, "flat")
  assert w == pytest.approx(10.0)
  e = lambda p, w: p["mse_c"] - w * p["delta"]
  assert e(pref["true"], w + 1) < e(pref["flat"], w + 1) and e(pref["true"], w - 1) > e(pref["flat"], w - 1)
  assert binding.crossover(pref, "better") is None


@pytest.mark.parametrize("args, message", [
    (["--prompts", "a red cube"], "is a single object"),
    (["--prompts", "a plaid dodecahedron"], "is not a prompt of the toy world"),
    (["--draws", "1"], "--draws must be >= 2"),
])
def test_cli_refuses_bad_input_in_one_line(args, message, tmp_path):
  """Bad flags end with one error line naming the flag and exit status 2, before the prior is loaded."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, "-m", "dreamjax.toy.binding", *args, "--out", str(tmp_path / "b.md")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-800:]
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and message in lines[0], r.stderr
  assert not (tmp_path / "b.md").exists()
