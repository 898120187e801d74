"""The data-parallel DreamFusion train step: cameras -> render -> prior latents -> distillation -> regularisers ->
gradients averaged over devices -> non-finite guard -> optimiser update, compiled as one function.

The per-device function is written with the named axis "data" (`lax.axis_index`, `lax.pmean`) and wrapped in
`jax.jit(jax.shard_map(...))` over a 1-D device mesh: that is exactly what `jax.pmap` has been since JAX 0.8, with
the frozen prior weights placed once, replicated, instead of being re-sent every call.

Randomness: the key of camera g (global index, device d holds cameras d·B .. d·B + B - 1) at step s is
fold_in(fold_in(rng, s), g). A run on 1 device with batch 4 therefore draws exactly the cameras, lights, shading
modes, timesteps and noise of a run on 4 devices with batch 1, and computes the same update.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dreamjax import cameras as cam_lib
from dreamjax import distill
from dreamjax import train_state as ts_lib
from dreamjax.nerf import scene

AXIS = "data"


def camera_spec(config: ml_collections.ConfigDict) -> cam_lib.CameraSampling:
  c = config.camera
  return cam_lib.CameraSampling(
      elevation_range=tuple(c.elevation_range), azimuth_range=tuple(c.azimuth_range),
      distance_range=tuple(c.distance_range), uniform_angle_prob=c.uniform_angle_prob,
      position_jitter=c.position_jitter, look_at_std=c.look_at_std, up_std=c.up_std,
      focal_range=tuple(c.focal_range))


def orient_weight(config: ml_collections.ConfigDict, step) -> jnp.ndarray:
  """Orientation-loss weight: linear from loss.orient_start to loss.orient_end over the first orient_ramp_frac."""
  ramp = max(int(config.loss.orient_ramp_frac * config.train.num_steps), 1)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / ramp, 0.0, 1.0)
  return config.loss.orient_start + (config.loss.orient_end - config.loss.orient_start) * frac


def sample_view(config: ml_collections.ConfigDict, key, step) -> dict:
  """One training view: camera (batch of 1), light [1, 3], shading mode [1], view label [1]."""
  k_cam, k_light, k_shade = jax.random.split(key, 3)
  cams = cam_lib.sample_cameras(k_cam, 1, config.render.width, camera_spec(config))
  light = cam_lib.sample_lights(k_light, cams.origins, tuple(config.light.distance_range),
                                config.light.direction_std)
  s = config.shading
  mode = cam_lib.sample_shading(k_shade, 1, step, s.albedo_only_steps, s.shading_prob, s.textureless_prob)
  c = config.camera
  label = cam_lib.view_labels(cams.elevation, cams.azimuth, c.front_deg, c.back_deg, c.overhead_deg)
  return {"cams": cams, "light": light, "mode": mode, "label": label}


def camera_loss(params, prior_params, text: dict, key, step, *, config: ml_collections.ConfigDict, prior):
  """Loss of one camera (batch of 1) and its metrics. text: {'views': [V, L, D], 'uncond': [1, L, D],
  'neg': [1, L, D]}. The prior may condition on the view instead of text (`prior.view_embedding(view)`)."""
  k_view, k_render, k_latent, k_distill, k_bg = jax.random.split(key, 5)
  view = sample_view(config, k_view, step)
  field_fn, bg_fn = scene.fields(params, config)
  k_use, k_col = jax.random.split(k_bg)
  use_random_bg = jax.random.uniform(k_use) < config.render.random_background_prob
  solid = jax.random.uniform(k_col, (3,))
  background_fn = lambda d: jnp.where(use_random_bg, jnp.broadcast_to(solid, d.shape), bg_fn(d))
  out = scene.render_scene(params, config, view["cams"], k_render, step=step, light_pos=view["light"],
                           mode=view["mode"], background_fn=background_fn)
  image = out["rgb"]  # [1, H, W, 3]
  z = prior.to_latents(prior_params, image, k_latent)
  if hasattr(prior, "view_embedding"):
    emb_cond = prior.view_embedding(view)
  else:
    emb_cond = text["views"][view["label"]]
  g, aux = distill.distill_step(config.distill, prior, prior_params, z, k_distill, emb_cond, text["uncond"],
                                text.get("neg"))
  loss_distill = distill.surrogate_loss(z, g)
  loss_orient = jnp.mean(out["loss_orient"])
  loss_opacity = jnp.mean(out["loss_opacity"])
  loss = loss_distill + orient_weight(config, step) * loss_orient + config.loss.opacity * loss_opacity
  metrics = {"loss": loss, "loss_distill": loss_distill, "loss_orient": loss_orient, "loss_opacity": loss_opacity,
             "opacity": jnp.mean(out["opacity"]), "g_abs_mean": aux["g_abs_mean"],
             "t": aux["t"][0].astype(jnp.float32), "nonfinite_eps": aux["nonfinite_eps"].astype(jnp.float32),
             "shading_albedo": (view["mode"][0] == cam_lib.ALBEDO).astype(jnp.float32)}
  return loss, metrics


def _tree_norm(tree) -> jnp.ndarray:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def device_step(state: ts_lib.TrainState, prior_params, text: dict, *, config, prior, tx, batch_per_device: int):
  """One step on one device (inside shard_map over axis "data"). Returns (new state, metrics)."""
  step_key = jax.random.fold_in(state.rng, state.step)
  cam_index = jax.lax.axis_index(AXIS) * batch_per_device + jnp.arange(batch_per_device)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, cam_index)

  def loss_fn(params):
    loss_of = lambda k: camera_loss(params, prior_params, text, k, state.step, config=config, prior=prior)
    losses, metrics = jax.vmap(loss_of)(keys)
    return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, metrics)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  metrics = jax.lax.pmean(metrics, AXIS)
  nonfinite = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  grads = jax.tree_util.tree_map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0), grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = metrics | {"nonfinite_grads": nonfinite.astype(jnp.float32), "orient_weight": orient_weight(config,
                                                                                                         state.step)}
  for name in grads:
    metrics[f"grad_norm/{name}"] = _tree_norm(grads[name])
    metrics[f"update_norm/{name}"] = _tree_norm(updates[name])
    metrics[f"param_norm/{name}"] = _tree_norm(params[name])
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default) with axis "data"."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"asked for {n} devices but {len(devices)} are available")
  return jax.make_mesh((n,), (AXIS,), devices=devices[:n])


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree, replicated, on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def make_train_step(config: ml_collections.ConfigDict, prior, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh) -> Callable[[ts_lib.TrainState, Any, dict], tuple]:
  """The compiled step: (state, prior_params, text) -> (state, metrics), all replicated on `mesh`.

  Global batch = mesh size × config.render.batch_per_device. `config.train.disable_jit` runs it eagerly
  (debugging; `chex.fake_pmap_and_jit` semantics).
  """
  fn = lambda state, prior_params, text: device_step(state, prior_params, text, config=config, prior=prior, tx=tx,
                                                     batch_per_device=config.render.batch_per_device)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P()), out_specs=(P(), P()), check_vma=False)
  if config.train.get("disable_jit", False):
    return _eager(mapped)
  return jax.jit(mapped, donate_argnums=(0,))


def _eager(fn):
  def run(*args):
    with jax.disable_jit():
      return fn(*args)
  return run


def text_embeddings(prior, config: ml_collections.ConfigDict) -> dict:
  """Prompt embeddings computed once, outside the step: 'views' [4, L, D] (", front view", ", side view",
  ", back view", ", overhead view" appended when camera.view_dependent_prompt, else the prompt 4 times),
  'uncond' [1, L, D] (config.negative_prompt, or the empty prompt) and, for NFSD, 'neg' [1, L, D]."""
  p = config.prompt
  views = [f"{p}, {name} view" if config.camera.view_dependent_prompt else p for name in cam_lib.VIEW_NAMES]
  emb = {"views": jnp.asarray(prior.encode_text(views)),
         "uncond": jnp.asarray(prior.encode_text([config.negative_prompt or ""]))}
  if config.distill.name == "nfsd":
    emb["neg"] = jnp.asarray(prior.encode_text([config.distill.negative_prompt]))
  chex.assert_rank(emb["views"], 3)
  return emb


def host_metrics(metrics: dict) -> dict:
  """Device metrics -> plain floats."""
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
