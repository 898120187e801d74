"""Editing (DDS, PDS; dreamjax/edit_rules.py, edit_objective.py, edit.py) and SJC's regularisers
(dreamjax/regularisers.py): each gradient against a float64 NumPy reference on a fake eps model, the shared-noise
property (a scene edited toward its own prompt gets exactly zero gradient), and the edit command's input checks."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax import distill
from dreamjax import edit_objective
from dreamjax import edit_rules
from dreamjax import objective
from dreamjax import regularisers
from dreamjax import train_state as ts_lib
from dreamjax import train_step as step_lib
from dreamjax.priors.base import scaled_linear_alphas_cumprod
from tests.test_train import fast_oracle, small_config


class FakeEpsPrior:
  """eps(z_t, t, emb) = tanh(0.7 z_t + 0.3 mean(emb)) (1 + t / 1000): elementwise, so equal inputs give equal outputs
  wherever they sit in the batch."""
  alphas_cumprod = np.asarray(scaled_linear_alphas_cumprod(1000), np.float32)

  def predict_eps(self, params, z_t, t, emb):
    del params
    m = jnp.mean(emb, axis=(1, 2))[:, None, None, None]
    return jnp.tanh(0.7 * z_t + 0.3 * m) * (1.0 + t[:, None, None, None] / 1000.0)


def _eps64(z_t, t, emb):
  m = np.mean(np.asarray(emb, np.float64), axis=(1, 2))[:, None, None, None]
  return np.tanh(0.7 * z_t + 0.3 * m) * (1.0 + np.asarray(t, np.float64)[:, None, None, None] / 1000.0)


def _inputs(seed=0, b=3):
  r = np.random.default_rng(seed)
  z_tgt, z_src = r.normal(size=(2, b, 4, 4, 4)).astype(np.float32)
  embs = r.normal(size=(4, b, 5, 6)).astype(np.float32)
  return jnp.asarray(z_tgt), jnp.asarray(z_src), [jnp.asarray(e) for e in embs]


def _reference(rule, z_tgt, z_src, embs, aux):
  """g in float64 from the t and noises the step drew."""
  abar = np.asarray(FakeEpsPrior.alphas_cumprod, np.float64)
  t = np.asarray(aux["t"])
  a = abar[t][:, None, None, None]
  eps = np.asarray(aux["noise"], np.float64)
  zt_t = np.sqrt(a) * np.asarray(z_tgt, np.float64) + np.sqrt(1 - a) * eps
  zt_s = np.sqrt(a) * np.asarray(z_src, np.float64) + np.sqrt(1 - a) * eps
  s = rule.guidance_scale
  hat_t = _eps64(zt_t, t, embs[1]) + s * (_eps64(zt_t, t, embs[0]) - _eps64(zt_t, t, embs[1]))
  hat_s = _eps64(zt_s, t, embs[3]) + s * (_eps64(zt_s, t, embs[2]) - _eps64(zt_s, t, embs[3]))
  if rule.name == "dds":
    return hat_t - hat_s, None
  ap = abar[np.asarray(aux["t_prev"])][:, None, None, None]
  beta = 1 - a / ap
  c0, c1 = np.sqrt(ap) * beta / (1 - a), np.sqrt(1 - beta) * (1 - ap) / (1 - a)
  sigma = np.sqrt((1 - ap) / (1 - a) * beta)
  prev = np.random.default_rng(7).normal(size=eps.shape)  # eps_{t-1}: any draw (it cancels between the branches)

  def zeta(x0, x_t, hat):
    x0_hat = (x_t - np.sqrt(1 - a) * hat) / np.sqrt(a)
    return (np.sqrt(ap) * x0 + np.sqrt(1 - ap) * prev - (c0 * x0_hat + c1 * x_t)) / sigma
  g = zeta(np.asarray(z_tgt, np.float64), zt_t, hat_t) - zeta(np.asarray(z_src, np.float64), zt_s, hat_s)
  # Closed form (the x0 terms and eps_{t-1} cancel between the branches): g = c0 sqrt(1 - a) / (sigma sqrt(a))
  # (eps_hat_tgt - eps_hat_src), i.e. PDS is DDS with this weight.
  return g, c0 * np.sqrt(1 - a) / (sigma * np.sqrt(a)) * (hat_t - hat_s)


def _hats(z_tgt, z_src, embs, aux, rule):
  """The guided eps of both branches (float32 inputs for `edit_rules.pds_grad`)."""
  abar = np.asarray(FakeEpsPrior.alphas_cumprod, np.float64)
  t = np.asarray(aux["t"])
  a = abar[t][:, None, None, None]
  eps = np.asarray(aux["noise"], np.float64)
  out = []
  for z, c, u in ((z_tgt, embs[0], embs[1]), (z_src, embs[2], embs[3])):
    zt = np.sqrt(a) * np.asarray(z, np.float64) + np.sqrt(1 - a) * eps
    out.append((_eps64(zt, t, u) + rule.guidance_scale * (_eps64(zt, t, c) - _eps64(zt, t, u))).astype(np.float32))
  return out


@pytest.mark.parametrize("name", ["dds", "pds"])
def test_edit_gradient_matches_float64_reference(name):
  rule = distill.Rule.default(name)
  z_tgt, z_src, embs = _inputs()
  g, aux = edit_rules.edit_step(rule, FakeEpsPrior(), None, z_tgt, z_src, jax.random.PRNGKey(3), *embs)
  want, closed = _reference(rule, z_tgt, z_src, embs, aux)
  scale = np.max(np.abs(want))
  np.testing.assert_allclose(np.asarray(g, np.float64), want, atol=2e-5 * scale, rtol=1e-4)
  if closed is not None:  # the zeta form (spec) and the closed form the step computes agree in float64
    np.testing.assert_allclose(want, closed, rtol=1e-9, atol=1e-9 * scale)
    a = np.asarray(FakeEpsPrior.alphas_cumprod, np.float64)
    zeta_form = edit_rules.pds_grad(*(jnp.asarray(x, jnp.float32) for x in (z_tgt, z_src)),
                                    *(jnp.asarray(x) for x in _hats(z_tgt, z_src, embs, aux, rule)),
                                    jnp.asarray(aux["noise"]), jnp.zeros_like(z_tgt), jnp.asarray(a[aux["t"]]),
                                    jnp.asarray(a[aux["t_prev"]]))
    np.testing.assert_allclose(np.asarray(zeta_form, np.float64), want, atol=1e-3 * scale)


def test_pds_timesteps_are_one_step_of_its_schedule_apart():
  t, t_prev = edit_rules.sample_pds_timesteps(jax.random.PRNGKey(0), 4000, 1000, 500, 0.02, 0.98)
  t, t_prev = np.asarray(t), np.asarray(t_prev)
  assert np.all(t - t_prev == 2) and t.min() == 20 and t.max() == 978  # k in [10, 490), t = 2k
  assert set(np.unique(t % 2)) == {0}


def test_dds_t_range_is_the_notebooks():
  rule = distill.Rule.default("dds")
  t = np.asarray(distill.sample_timesteps(jax.random.PRNGKey(1), 20000, 1000, rule.t_min, rule.t_max))
  assert t.min() == 50 and t.max() == 949  # randint(50, 950)


@pytest.mark.parametrize("name", ["dds", "pds"])
def test_a_scene_edited_toward_its_own_prompt_gets_exactly_zero(name):
  """Shared t and noises: identical latents and prompts give g == 0 exactly (not just small), whatever t."""
  z, _, embs = _inputs(seed=1)
  for seed in range(5):
    g, _ = edit_rules.edit_step(distill.Rule.default(name), FakeEpsPrior(), None, z, z, jax.random.PRNGKey(seed),
                                embs[0], embs[1], embs[0], embs[1])
    assert np.all(np.asarray(g) == 0.0)


def test_generation_refuses_edit_rules():
  z, _, embs = _inputs()
  with pytest.raises(ValueError, match="edits a source scene"):
    distill.distill_step(distill.Rule.default("pds"), FakeEpsPrior(), None, z, jax.random.PRNGKey(0), embs[0],
                         embs[1])
  c = small_config()
  c.distill = distill.default_distill_config("dds")
  with pytest.raises(Exception, match="python -m dreamjax.edit"):
    from dreamjax import config_check
    config_check.check(c)


@pytest.mark.parametrize("name", ["dds", "pds"])
def test_editing_camera_through_renderer_is_zero_for_an_unchanged_scene_and_prompt(name):
  """The whole camera loss of an edit (`edit_objective.camera_terms`: both renders, latents, rule) on the source's own
  parameters and prompt has an all-zero gradient; a different target prompt does not."""
  config = small_config()
  config.distill = distill.default_distill_config(name)
  config.loss.orient_start = config.loss.orient_end = 0.0
  config.loss.opacity = 0.0
  prior = fast_oracle()
  settings = objective.StepSettings.from_config(config)
  params = jax.device_get(ts_lib.create(config)).params
  text = step_lib.text_embeddings(prior, config)
  other = config.copy_and_resolve_references()
  other.prompt = "a different prompt"
  inputs_same = edit_objective.EditInputs(text, text, params)

  def grads(inputs):
    loss = lambda p: edit_objective.camera_terms(settings, prior, p, prior.params, inputs, jax.random.PRNGKey(0),
                                                 5)[0]["distill"]
    return jax.tree_util.tree_leaves(jax.jit(jax.grad(loss))(params))
  assert all(np.all(np.asarray(g) == 0.0) for g in grads(inputs_same))
  # the oracle prior reads the view from the embedding: another text gives another x*, so a non-zero gradient
  emb = jax.tree_util.tree_map(lambda x: x + 0.5, text)
  changed = edit_objective.EditInputs(emb, text, params)
  assert max(float(np.max(np.abs(g))) for g in grads(changed)) > 0


def test_emptiness_matches_numpy():
  w = np.random.default_rng(0).uniform(0, 1, size=(2, 3, 7)).astype(np.float32)
  np.testing.assert_allclose(float(regularisers.emptiness(jnp.asarray(w), 10.0)), np.mean(np.log1p(10.0 * w.astype(
      np.float64))), rtol=1e-6)


def test_center_depth_value_and_its_sign():
  """-log(centre - border) where that is >= delta (a float64 reference on a 16x16 depth), continued linearly below, so
  the gradient always raises the centre's depth relative to the border: also where SJC's log would be of a negative
  number (its sign bug)."""
  r = np.random.default_rng(1)
  depth = r.uniform(0, 1, size=(1, 16, 16))
  depth[:, 2:14, 2:14] += 0.5  # border 2/16 = 0.125 of the side
  inside = np.zeros((16, 16), bool)
  inside[2:14, 2:14] = True
  x = depth[0][inside].mean() - depth[0][~inside].mean()
  got = float(regularisers.center_depth(jnp.asarray(depth, jnp.float32), border=0.125))
  np.testing.assert_allclose(got, -np.log(x), rtol=1e-5)
  for shift in (0.5, -0.5, -2.0):  # centre nearer than the border too: the loss is finite and descends toward more
    d = depth.copy()
    d[:, 2:14, 2:14] -= shift + 0.5
    grad = np.asarray(jax.grad(lambda v: regularisers.center_depth(v, border=0.125))(jnp.asarray(d, jnp.float32)))
    assert np.all(np.isfinite(grad)) and np.all(grad[0][inside] < 0) and np.all(grad[0][~inside] > 0)
  delta = regularisers.CENTER_DEPTH_DELTA  # continuous at delta
  flat = np.zeros((1, 16, 16), np.float32)
  flat[:, 2:14, 2:14] = delta
  value = float(regularisers.center_depth(jnp.asarray(flat), border=0.125))
  np.testing.assert_allclose(value, -np.log(delta), rtol=1e-3)


def test_emptiness_schedule_steps_up_after_its_fraction():
  c = small_config(100)
  c.loss.emptiness = 1e4
  weights = objective.LossWeights.from_config(c)
  assert float(weights.emptiness(49)) == 1e4 and float(weights.emptiness(50)) == 2e5


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _edit(*args, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-m", "dreamjax.edit", *args], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=300)


@pytest.mark.parametrize("case", ["missing", "not_a_run", "inside", "method_mismatch", "empty_prompt"])
def test_edit_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "notes.txt").write_text("keep me")
  args = {"missing": ["--source", str(tmp_path / "nope"), "--prompt", "a blue cube", "--workdir", str(tmp_path / "w")],
          "not_a_run": ["--source", str(src), "--prompt", "a blue cube", "--workdir", str(tmp_path / "w")],
          "inside": ["--source", str(src), "--prompt", "a blue cube", "--workdir", str(src / "edit")],
          "method_mismatch": ["--source", str(src), "--prompt", "a blue cube", "--workdir", str(tmp_path / "w"),
                              "--method", "dds", "--config", "configs/edit_pds.py"],
          "empty_prompt": ["--source", str(src), "--prompt", " ", "--workdir", str(tmp_path / "w")]}[case]
  r = _edit(*args)
  assert r.returncode == 2, r.stderr
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("edit: error: "), r.stderr
  want = {"missing": "--source", "not_a_run": "holds no config.json", "inside": "overlaps --source",
          "method_mismatch": "--method dds", "empty_prompt": "--prompt"}[case]
  assert want in lines[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"] and [p.name for p in src.iterdir()] == ["notes.txt"]


def test_an_edit_runs_through_stable_diffusion(tmp_path):
  """The Stable Diffusion path (configs/tiny.py: tiny random SD in the diffusers layout; VAE encoder, CLIP text
  encoder, UNet): a 3-step DDS edit of a 3-step run starts from the source's parameters, moves them, stays finite,
  logs a non-zero edit gradient, and leaves the source's files unchanged."""
  import hashlib
  import json
  from configs import edit_dds, tiny
  from dreamjax import checkpoint as ckpt_lib
  from dreamjax import edit as edit_lib
  from dreamjax import train
  c = tiny.get_config()
  c.train.num_steps = c.optim.total_steps = 3
  c.optim.warmup_steps = 1
  c.render.batch = 1
  src_dir, edit_dir = tmp_path / "src", tmp_path / "edit"
  train.train_and_evaluate(c, src_dir, export=False, progress=False, num_devices=1)
  digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src_dir.rglob("*") if p.is_file()}
  before = digest()
  source_config = ckpt_lib.load_config(src_dir)
  src = ckpt_lib.restore_params_read_only(src_dir, source_config)
  overlay = edit_dds.get_config()
  overlay.edit.num_steps = 3
  config = edit_lib.edit_config(source_config, overlay, prompt="a blue cube", source_prompt=source_config.prompt,
                                source=str(src_dir), source_step=src.step)
  config.train.log_every = 1
  state = train.train_and_evaluate(config, edit_dir, export=False, progress=False, num_devices=1,
                                   source_params=src.params)
  moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state.params)),
                           jax.tree_util.tree_leaves(src.params))]
  assert max(moved) > 0 and all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))
  records = [json.loads(line) for line in (edit_dir / "metrics.jsonl").read_text().splitlines()]
  assert all(r["g_abs_mean"] > 0 and r["skipped_update"] == 0 for r in records)
  assert digest() == before


def test_an_appearance_edit_changes_only_the_albedo_head_and_background():
  """edit.trainable = "appearance": the gradient of an edit's loss is zero on the NeRF trunk and density head (the
  geometry stays the source's exactly) and non-zero on the albedo head and the background MLP."""
  config = small_config()
  config.distill = distill.default_distill_config("dds")
  config.shading.albedo_only_steps = 10  # step 5 renders albedo, which a textureless view would not show
  prior = fast_oracle()
  settings = objective.StepSettings.from_config(config)
  params = jax.device_get(ts_lib.create(config)).params
  text = step_lib.text_embeddings(prior, config)
  shifted = jax.tree_util.tree_map(lambda x: x + 0.5, text)
  inputs = edit_objective.EditInputs(shifted, text, params)
  loss = lambda p: sum(edit_objective.camera_terms(settings, prior, p, prior.params, inputs, jax.random.PRNGKey(0), 5,
                                                   trainable="appearance")[0].values())
  grads = jax.jit(jax.grad(loss))(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  for path, g in flat:
    names = tuple(getattr(k, "key", None) for k in path)
    trainable = names[:2] == ("nerf", "albedo") or names[0] == "background"
    assert (float(np.max(np.abs(np.asarray(g)))) > 0) == trainable, names
  with pytest.raises(ValueError, match="config.edit.trainable"):
    edit_objective.trainable_part(params, "geometry")


def test_keep_opacity_is_the_mean_squared_opacity_change_and_pulls_back_toward_the_source():
  """edit.keep_opacity: the "keep" term of an edit camera is weight * mean((opacity_edit - opacity_source)^2) over the
  render (checked against float64 NumPy on the two renders), exactly zero for the unchanged scene, and its gradient
  step moves the edited opacity back toward the source's (first order: the keep term decreases)."""
  config = small_config()
  config.distill = distill.default_distill_config("pds")
  prior = fast_oracle()
  settings = objective.StepSettings.from_config(config)
  source = jax.device_get(ts_lib.create(config)).params
  edited = jax.tree_util.tree_map(lambda x: x * 1.1, source)  # another scene of the same architecture
  text = step_lib.text_embeddings(prior, config)
  weight = 7.0

  def terms(p, src):
    return edit_objective.camera_terms(settings, prior, p, prior.params, edit_objective.EditInputs(text, text, src),
                                       jax.random.PRNGKey(3), 5, keep_opacity=weight)
  same, _ = jax.jit(terms)(source, source)
  assert float(same["keep"]) == 0.0
  got, _ = jax.jit(terms)(edited, source)
  view, (k_render, _, _) = objective.training_view(settings, jax.random.PRNGKey(3), 5)
  out, src = edit_objective.render_pair(settings.scene, edited, source, view, k_render, 5)
  a, b = np.asarray(out["opacity"], np.float64), np.asarray(src["opacity"], np.float64)
  want = weight * np.mean((a - b) ** 2)
  assert want > 0
  np.testing.assert_allclose(float(got["keep"]), want, rtol=1e-5)
  keep = lambda p: terms(p, source)[0]["keep"]
  g = jax.jit(jax.grad(keep))(edited)
  stepped = jax.tree_util.tree_map(lambda p, d: p - 1e-3 * d / _global_norm(g), edited, g)
  assert float(keep(stepped)) < float(got["keep"])


def _global_norm(tree) -> float:
  """The float64 L2 norm of a pytree."""
  leaves = jax.tree_util.tree_leaves(tree)
  return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in leaves)))
