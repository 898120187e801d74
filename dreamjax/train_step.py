"""The data-parallel DreamFusion train step: per camera `objective.camera_terms` (render -> prior latents ->
distillation -> regularisers), then gradients averaged over devices -> non-finite guard -> optimiser update, compiled
as one function.

The per-device function is written with the named axis "data" (`lax.axis_index`, `lax.pmean`) and wrapped in
`jax.jit(jax.shard_map(...))` over a 1-D device mesh: that is exactly what `jax.pmap` has been since JAX 0.8, with
the frozen prior weights placed once, replicated, instead of being re-sent every call.

Randomness: the key of camera g (global index, device d holds cameras d·B .. d·B + B - 1) at step s is
fold_in(fold_in(rng, s), g). A run on 1 device with batch 4 therefore draws exactly the cameras, lights, shading
modes, timesteps and noise of a run on 4 devices with batch 1, and computes the same update.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dreamjax import cameras as cam_lib
from dreamjax import distill
from dreamjax import objective
from dreamjax import train_state as ts_lib
from dreamjax.config_check import ConfigError
from dreamjax.priors.base import TextEmbeddings, fit_prompt

AXIS = "data"


def _tree_norm(tree) -> jnp.ndarray:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def _camera_keys(state: ts_lib.TrainState, batch_per_device: int) -> jnp.ndarray:
  """This device's camera keys at state.step: fold_in(fold_in(rng, step), global camera index)."""
  step_key = jax.random.fold_in(state.rng, state.step)
  cam_index = jax.lax.axis_index(AXIS) * batch_per_device + jnp.arange(batch_per_device)
  return jax.vmap(jax.random.fold_in, (None, 0))(step_key, cam_index)


def device_step(state: ts_lib.TrainState, prior_params, text: TextEmbeddings, *, settings: objective.StepSettings,
                prior, tx, batch_per_device: int, terms: Callable = objective.camera_terms):
  """One step on one device (inside shard_map over axis "data"). Returns (new state, metrics).

  `terms(settings, prior, params, prior_params, text, key, step)` gives one camera's weighted loss terms and metrics
  (`objective.camera_terms`; an edit's `edit_objective.camera_terms`, whose `text` is an `EditInputs`)."""
  keys = _camera_keys(state, batch_per_device)

  def camera_loss(params, key):
    t, metrics = terms(settings, prior, params, prior_params, text, key, state.step)
    loss = sum(t[name] for name in objective.TERMS)
    return loss, {"loss": loss} | metrics

  def loss_fn(params):
    losses, metrics = jax.vmap(lambda k: camera_loss(params, k))(keys)
    return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, metrics)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  metrics = jax.lax.pmean(metrics, AXIS)
  nonfinite = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  grads = jax.tree_util.tree_map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0), grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # An update that would make any parameter (or optimiser statistic) non-finite is skipped: the state is kept and
  # the step still advances, so the next step draws new cameras and noise.
  ok = _all_finite((params, opt_state))
  params, opt_state = jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old), (params, opt_state),
                                             (state.params, state.opt_state))
  skipped = (~ok).astype(jnp.int32)
  metrics = metrics | {"nonfinite_grads": nonfinite.astype(jnp.float32), "skipped_update": skipped.astype(jnp.float32),
                       "orient_weight": settings.loss.orient(state.step)}
  for name in grads:
    metrics[f"grad_norm/{name}"] = _tree_norm(grads[name])
    metrics[f"update_norm/{name}"] = _tree_norm(updates[name])
    metrics[f"param_norm/{name}"] = _tree_norm(params[name])
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            skipped_updates=state.skipped_updates + skipped,
                            skip_streak=jnp.where(ok, 0, state.skip_streak + 1))
  return new_state, metrics


def _all_finite(tree) -> jnp.ndarray:
  """True when every floating-point entry of the pytree is finite (a bool scalar)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def per_device_batch(batch: int, num_devices: int) -> int:
  """Cameras per device for a global batch of `batch` over `num_devices`; ConfigError when it does not divide."""
  if batch % num_devices:
    suggestion = num_devices * max(1, batch // num_devices)
    raise ConfigError(f"config.render.batch ({batch}) does not split evenly over {num_devices} devices; use a "
                      f"multiple of {num_devices} (e.g. --config.render.batch={suggestion}) or fewer devices")
  return batch // num_devices


def device_gradient_shares(state: ts_lib.TrainState, prior_params, text: TextEmbeddings, *,
                           settings: objective.StepSettings, prior, batch_per_device: int,
                           terms: Callable = objective.camera_terms) -> dict:
  """Each weighted loss term's gradient on the scene parameters at the cameras step `state.step` draws: its norm
  'grad_term_norm/<term>' and its share 'grad_share/<term>' = norm / (sum of the terms' norms), so the shares sum
  to 1 and a term with weight 0 has share 0. (One forward pass, one backward pass per term; on one device inside
  shard_map, gradients averaged over devices like the step's.)"""
  keys = _camera_keys(state, batch_per_device)

  def terms_fn(params):
    values, _ = jax.vmap(lambda k: terms(settings, prior, params, prior_params, text, k, state.step))(keys)
    return {name: jnp.mean(v) for name, v in values.items()}

  values, pullback = jax.vjp(terms_fn, state.params)
  norms = {}
  for name in objective.TERMS:
    cotangent = {n: jnp.asarray(n == name, v.dtype) for n, v in values.items()}
    (grads,) = pullback(cotangent)
    norms[name] = _tree_norm(jax.lax.pmean(grads, AXIS))
  total = sum(norms.values())
  safe_total = jnp.where(total > 0, total, 1.0)
  return ({f"grad_term_norm/{n}": v for n, v in norms.items()} |
          {f"grad_share/{n}": v / safe_total for n, v in norms.items()})


def make_gradient_shares(config: ml_collections.ConfigDict, prior, mesh: jax.sharding.Mesh,
                         terms: Callable = objective.camera_terms) -> Callable:
  """The compiled `device_gradient_shares`: (state, prior_params, text) -> metrics, replicated on `mesh`."""
  settings = objective.StepSettings.from_config(config)
  per_device = per_device_batch(config.render.batch, mesh.devices.size)
  fn = lambda state, prior_params, text: device_gradient_shares(state, prior_params, text, settings=settings,
                                                                prior=prior, batch_per_device=per_device,
                                                                terms=terms)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P(), check_vma=False)
  return _eager(mapped) if config.train.disable_jit else jax.jit(mapped)


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default) with axis "data"."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"asked for {n} devices but {len(devices)} are available")
  return jax.make_mesh((n,), (AXIS,), devices=devices[:n])


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree, replicated, on every device of the mesh. With several processes every process passes the same
  values and each places them on its own devices; arrays committed to one device (a restored checkpoint) go through
  host memory first, since the CPU backend has no cross-host device transfers."""
  if jax.process_count() > 1:
    tree = jax.device_get(tree)
  return jax.device_put(tree, NamedSharding(mesh, P()))


def make_train_step(config: ml_collections.ConfigDict, prior, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, terms: Callable = objective.camera_terms
                    ) -> Callable[[ts_lib.TrainState, Any, TextEmbeddings], tuple]:
  """The compiled step: (state, prior_params, text) -> (state, metrics), all replicated on `mesh`. The config is read
  here, once (`objective.StepSettings`).

  Global batch = config.render.batch, split evenly over the mesh (`per_device_batch`). `config.train.parallel`
  chooses the wrapper of `device_step`: jit(shard_map) (default) or jax.pmap; both compute the same update.
  `config.train.disable_jit` runs it eagerly (debugging; `chex.fake_pmap_and_jit` semantics).
  """
  settings = objective.StepSettings.from_config(config)
  per_device = per_device_batch(config.render.batch, mesh.devices.size)
  fn = lambda state, prior_params, text: device_step(state, prior_params, text, settings=settings, prior=prior,
                                                     tx=tx, batch_per_device=per_device, terms=terms)
  if config.train.parallel == "pmap":
    return _pmapped(fn, mesh, eager=config.train.disable_jit)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P()), out_specs=(P(), P()), check_vma=False)
  if config.train.disable_jit:
    return _eager(mapped)
  return jax.jit(mapped, donate_argnums=(0,))


def _pmapped(fn, mesh: jax.sharding.Mesh, eager: bool = False) -> Callable:
  """`fn(state, prior_params, text)` (written with axis "data") under `jax.pmap` over the mesh's devices: the three
  arguments broadcast to every device (in_axes None), results identical on every device (out_axes None). pmap needs
  one mapped argument, so a device index rides along (unused: the step reads lax.axis_index)."""
  devices = list(mesh.devices.flat)
  if any(d.process_index != jax.process_index() for d in devices):
    raise ConfigError("config.train.parallel='pmap' runs over this process's devices only; use 'shard_map' (the "
                      "default) for a --multihost run")
  mapped = jax.pmap(lambda state, prior_params, text, _: fn(state, prior_params, text), axis_name=AXIS,
                    in_axes=(None, None, None, 0), out_axes=None, devices=devices)
  index = np.arange(len(devices))
  if eager:
    return _eager(lambda state, prior_params, text: mapped(state, prior_params, text, index))
  return lambda state, prior_params, text: mapped(state, prior_params, text, index)


def _eager(fn):
  def run(*args):
    with jax.disable_jit():
      return fn(*args)
  return run


def text_embeddings(prior, config: ml_collections.ConfigDict, warn: Callable[[str], Any] = print) -> TextEmbeddings:
  """The run's `TextEmbeddings` (computed once, outside the step): config.prompt per view label (with the view
  suffixes when camera.view_dependent_prompt), config.negative_prompt as the unconditional text, and the rule's
  negative prompt when the rule needs one. A prompt longer than the text encoder's window is shortened so that the
  view suffixes still fit, with one `warn` line."""
  view_dependent = config.camera.view_dependent_prompt
  suffixes = [cam_lib.view_prompt("", label) for label in range(len(cam_lib.VIEW_NAMES))] if view_dependent else [""]
  prompt, dropped = fit_prompt(prior, config.prompt, suffixes)
  if dropped:
    warn(f"dreamjax: warning: the prompt is longer than the text encoder's {prior.text_window} tokens; its last "
         f"{dropped} token(s) are dropped so the view suffixes fit: {prompt!r}")
  return TextEmbeddings.encode(prior, prompt, uncond_prompt=config.negative_prompt or "",
                               view_dependent=config.camera.view_dependent_prompt,
                               rule=distill.Rule.from_config(config.distill))


def host_metrics(metrics: dict) -> dict:
  """Device metrics -> plain floats."""
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
