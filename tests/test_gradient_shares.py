"""Each loss term's share of the scene gradient (train.grad_shares_every): the norms are those of each weighted term's
own gradient, the shares sum to 1, a term with weight 0 has share 0, devices do not change them, and the run loop
writes them into metrics.jsonl."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax import objective
from dreamjax import train
from dreamjax import train_state as ts_lib
from dreamjax import train_step as step_lib
from tests.test_train import fast_oracle, small_config


def _config():
  c = small_config(10)
  c.render.batch = 2
  c.shading.albedo_only_steps = 0
  c.loss.orient_start = c.loss.orient_end = 0.5  # weights large enough that every term's share is visible
  c.loss.opacity = 0.2
  c.loss.emptiness = 0.05  # SJC's regularisers on too, so all five terms are checked
  c.loss.center_depth = 0.05
  c.distill.guidance_scale = 10.0
  return c


def _shares(config, prior, state, num_devices):
  mesh = step_lib.make_mesh(num_devices)
  fn = step_lib.make_gradient_shares(config, prior, mesh)
  text = step_lib.replicate(step_lib.text_embeddings(prior, config), mesh)
  out = fn(step_lib.replicate(state, mesh), step_lib.replicate(prior.params, mesh), text)
  return step_lib.host_metrics(out)


def _reference_norms(config, prior, state):
  """The gradient of each weighted term alone (jax.grad of that term's mean over the step's two cameras), with the
  camera keys derived here as the step derives them (global camera index g at step s: fold_in(fold_in(rng, s), g))."""
  settings = objective.StepSettings.from_config(config)
  text = step_lib.text_embeddings(prior, config)
  step_key = jax.random.fold_in(state.rng, state.step)
  keys = [jax.random.fold_in(step_key, g) for g in range(config.render.batch)]
  def term(params, name):
    return sum(objective.camera_terms(settings, prior, params, prior.params, text, k, state.step)[0][name]
               for k in keys) / len(keys)
  # one jax.grad per term, each of its own scalar (compiled as one program so the suite spends less time tracing)
  all_grads = jax.jit(lambda p: {n: jax.grad(term)(p, n) for n in objective.TERMS})(state.params)
  return {name: float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                                  for g in jax.tree_util.tree_leaves(grads))))
          for name, grads in all_grads.items()}


def test_norms_match_each_terms_own_gradient_and_shares_sum_to_one():
  config = _config()
  prior = fast_oracle()
  state = jax.device_get(ts_lib.create(config))
  state = state.replace(step=jnp.asarray(3, jnp.int32))
  got = _shares(config, prior, state, 1)
  ref = _reference_norms(config, prior, state)
  for name in objective.TERMS:
    assert (ref[name] > 0) == (name != "keep")  # "keep" is an edit's term: zero when training
    np.testing.assert_allclose(got[f"grad_term_norm/{name}"], ref[name], rtol=2e-4)
  total = sum(ref.values())
  for name in objective.TERMS:
    np.testing.assert_allclose(got[f"grad_share/{name}"], ref[name] / total, rtol=2e-4)
  assert abs(sum(got[f"grad_share/{n}"] for n in objective.TERMS) - 1.0) < 1e-5
  two = _shares(config, prior, state, 2)  # one camera per device: the same cameras, averaged across devices
  for key, value in got.items():
    np.testing.assert_allclose(two[key], value, rtol=1e-4)


def test_a_zero_weight_gives_share_zero():
  config = _config()
  config.loss.opacity = 0.0
  prior = fast_oracle()
  got = _shares(config, prior, jax.device_get(ts_lib.create(config)), 1)
  assert got["grad_share/opacity"] == 0.0 and got["grad_term_norm/opacity"] == 0.0
  others = [n for n in objective.TERMS if n not in ("opacity", "keep")]  # keep: an edit's term, zero here
  assert all(got[f"grad_share/{n}"] > 0 for n in others)
  assert abs(sum(got[f"grad_share/{n}"] for n in others) - 1.0) < 1e-5


def test_the_run_loop_logs_the_shares(tmp_path):
  config = _config()
  config.train.num_steps = 6
  config.train.log_every = 3
  config.train.grad_shares_every = 2
  train.train_and_evaluate(config, tmp_path / "run", prior=fast_oracle(), export=False, progress=False,
                           num_devices=2)
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  with_shares = [r for r in records if "grad_share/distill" in r]
  assert [r["step"] for r in records] == [2, 3, 4, 6] and [r["step"] for r in with_shares] == [2, 4]
  for r in with_shares:
    assert abs(sum(r[f"grad_share/{n}"] for n in objective.TERMS) - 1.0) < 1e-5
  assert "loss" in records[1] and "loss" not in records[0]
