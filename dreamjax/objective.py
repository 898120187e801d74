"""The loss of one training camera, in two halves: where rendering ends and the prior begins.

  render_view(scene, params, view, rng, step)   camera -> image [B, H, W, 3], opacity, regulariser terms
                                                 (the NeRF; differentiable w.r.t. the scene parameters)
  prior_loss(prior, prior_params, rule, image, cond, text, ...)
                                                 image -> latents -> noise + UNet -> distillation rule -> surrogate
                                                 (the frozen prior; its UNet is never differentiated)

`camera_loss` joins them with the regularisers' weights for the train step; editing (a second, frozen scene rendered
at the same view), evaluation renders and the benchmark's phases call the same two functions. Every setting arrives
as a frozen object built once from the config (`StepSettings.from_config`): nothing here reads a ConfigDict.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dreamjax import cameras as cam_lib
from dreamjax import distill
from dreamjax import schedules
from dreamjax.nerf.scene import Scene
from dreamjax.priors.base import Prior, TextEmbeddings

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the regularisers beside the distillation loss (DF §3.1, A.2)."""
  orient: schedules.Ramp  # orientation loss weight per step (DF: 1e-4 -> 1e-2 over the first 5k of 15k steps)
  opacity: float  # opacity loss weight (DF: 1e-3 .. 5e-3)

  @classmethod
  def from_config(cls, config) -> "LossWeights":
    c = config.loss
    return cls(orient=schedules.ramp_over_fraction(c.orient_start, c.orient_end, c.orient_ramp_frac,
                                                   config.train.num_steps),
               opacity=float(c.opacity))


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Everything the per-camera loss needs, read once from the config."""
  view: cam_lib.ViewSampling
  scene: Scene
  loss: LossWeights
  rule: distill.Rule

  @classmethod
  def from_config(cls, config) -> "StepSettings":
    return cls(view=cam_lib.ViewSampling.from_config(config), scene=Scene.from_config(config),
               loss=LossWeights.from_config(config), rule=distill.Rule.from_config(config.distill))


def render_view(scene: Scene, params: dict, view: cam_lib.View, rng, step) -> dict:
  """Renders the B cameras of `view` at the scene's training resolution (randomized sampling).

  The view's solid background, when it is on, replaces the background MLP. Returns rgb [B, H, W, 3] in [0, 1],
  opacity [B, H, W], albedo / normal [B, H, W, 3], depth [B, H, W], and the per-ray regulariser terms loss_orient
  [B, H, W] (sum_i sg(w_i) max(0, n_i . v)^2) and loss_opacity [B, H, W] (sqrt(opacity^2 + 0.01)).
  """
  _, bg_fn = scene.fields(params)
  background_fn = lambda d: jnp.where(view.use_solid_background, jnp.broadcast_to(view.solid_background, d.shape),
                                      bg_fn(d))
  return scene.render_views(params, view.cams, rng, step=step, light_pos=view.light, mode=view.mode,
                            background_fn=background_fn)


def prior_loss(prior: Prior, prior_params: PyTree, rule: distill.Rule, image: jnp.ndarray, cond: jnp.ndarray,
               text: TextEmbeddings, *, latent_rng, distill_rng) -> tuple[jnp.ndarray, dict]:
  """The distillation loss of renders image [B, H, W, 3] in [0, 1] under conditional embedding cond [B, L, D].

  image -> `prior.to_latents` (SD: resize, VAE encoder, x scaling_factor) -> z -> `distill.distill_step` (t, noise,
  CFG with text.uncond (and text.neg), the rule) -> `distill.surrogate_loss`, whose gradient w.r.t. z is g / B.
  Returns (loss, aux): aux holds `distill_step`'s aux and 'z' (the latents).
  """
  z = prior.to_latents(prior_params, image, latent_rng)
  g, aux = distill.distill_step(rule, prior, prior_params, z, distill_rng, cond, text.uncond, text.neg)
  return distill.surrogate_loss(z, g), aux | {"z": z}


TERMS = ("distill", "orient", "opacity")  # the loss terms of one camera, as weighted in its loss


def camera_terms(settings: StepSettings, prior: Prior, params: dict, prior_params: PyTree, text: TextEmbeddings,
                 key, step) -> tuple[dict, dict]:
  """The weighted loss terms of one training camera {'distill', 'orient', 'opacity'} (scalars; their sum is the
  camera's loss) and its metrics: a random view, its render, the prior's distillation loss and the weighted
  regularisers (means over the rays)."""
  k_view, k_render, k_latent, k_distill, k_bg = jax.random.split(key, 5)
  view = cam_lib.sample_view(settings.view, k_view, step, settings.scene.width)
  view = cam_lib.with_random_background(view, k_bg, settings.view.random_background_prob)
  out = render_view(settings.scene, params, view, k_render, step)
  loss_distill, aux = prior_loss(prior, prior_params, settings.rule, out["rgb"], prior.condition(text, view), text,
                                 latent_rng=k_latent, distill_rng=k_distill)
  loss_orient = jnp.mean(out["loss_orient"])
  loss_opacity = jnp.mean(out["loss_opacity"])
  terms = {"distill": loss_distill, "orient": settings.loss.orient(step) * loss_orient,
           "opacity": settings.loss.opacity * loss_opacity}
  metrics = {"loss_distill": loss_distill, "loss_orient": loss_orient, "loss_opacity": loss_opacity,
             "opacity": jnp.mean(out["opacity"]), "g_abs_mean": aux["g_abs_mean"],
             "t": aux["t"][0].astype(jnp.float32), "nonfinite_eps": aux["nonfinite_eps"].astype(jnp.float32),
             "nonfinite_g": aux["nonfinite_g"].astype(jnp.float32),
             "shading_albedo": (view.mode[0] == cam_lib.ALBEDO).astype(jnp.float32)}
  return terms, metrics


def camera_loss(settings: StepSettings, prior: Prior, params: dict, prior_params: PyTree, text: TextEmbeddings,
                key, step) -> tuple[jnp.ndarray, dict]:
  """Loss of one training camera (the sum of its `camera_terms`) and its metrics."""
  terms, metrics = camera_terms(settings, prior, params, prior_params, text, key, step)
  loss = terms["distill"] + terms["orient"] + terms["opacity"]
  return loss, {"loss": loss} | metrics
