"""The loss of one training camera, in two halves: where rendering ends and the prior begins.

  render_view(scene, params, view, rng, step)   camera -> image [B, H, W, 3], opacity, regulariser terms
                                                 (the NeRF; differentiable w.r.t. the scene parameters)
  prior_loss(prior, prior_params, rule, image, cond, text, ...)
                                                 image -> latents -> noise + UNet -> distillation rule -> surrogate
                                                 (the frozen prior; its UNet is never differentiated)

`camera_terms` joins them with the regularisers' weights (`regulariser_terms`) for the train step; editing
(`edit_objective`: a second, frozen scene rendered at the same view), evaluation renders and the benchmark's phases
call the same two functions. Every setting arrives as a frozen object built once from the config
(`StepSettings.from_config`): nothing here reads a ConfigDict.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dreamjax import cameras as cam_lib
from dreamjax import distill
from dreamjax import regularisers
from dreamjax import schedules
from dreamjax.nerf.scene import Scene
from dreamjax.priors.base import Prior, TextEmbeddings

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the regularisers beside the distillation loss: DreamFusion's (DF §3.1, A.2) and SJC's (spec §4.2)."""
  orient: schedules.Ramp  # orientation loss weight per step (DF: 1e-4 -> 1e-2 over the first 5k of 15k steps)
  opacity: float  # opacity loss weight (DF: 1e-3 .. 5e-3)
  reduction: str = "sum"  # DF's per-ray terms -> one camera's term: "sum" over its rays (as the SDS surrogate sums
  # its latent entries) or "mean" (the reduction before wave 2, which left them at ~1e-5 of the SDS gradient)
  emptiness: schedules.StepUp = schedules.StepUp(0.0, 1.0, 0)  # SJC emptiness weight per step (SJC: 1e4, x20)
  emptiness_scale: float = 10.0  # SJC's B in log(1 + B w)
  center_depth: float = 0.0  # SJC centre-depth loss weight (SJC: 0; 10 .. 100 for some prompts)
  center_depth_border: float = 7 / 64  # border of the centre window, a fraction of the side (SJC: 7 of 64 pixels)

  @classmethod
  def from_config(cls, config) -> "LossWeights":
    c = config.loss
    n = config.train.num_steps
    return cls(orient=schedules.ramp_over_fraction(c.orient_start, c.orient_end, c.orient_ramp_frac, n),
               opacity=float(c.opacity), reduction=c.reduction,
               emptiness=schedules.StepUp(float(c.emptiness), float(c.emptiness_multiplier),
                                             int(round(c.emptiness_step_frac * n))),
               emptiness_scale=float(c.emptiness_scale), center_depth=float(c.center_depth),
               center_depth_border=float(c.center_depth_border))

  def over_rays(self, per_ray: jnp.ndarray) -> jnp.ndarray:
    """A camera's DF regulariser [..., H, W] (per ray) reduced over its rays: sum or mean, as `reduction` says."""
    return jnp.sum(per_ray) if self.reduction == "sum" else jnp.mean(per_ray)


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


RENDER_KEYS = ("rgb", "opacity", "depth", "albedo", "normal", "loss_orient", "loss_opacity", "weights")


def render_view(scene: Scene, params: dict, view: cam_lib.View, rng, step) -> dict:
  """Renders the B cameras of `view` at the scene's training resolution (randomized sampling).

  The view's solid background, when it is on, replaces the background MLP. Returns rgb [B, H, W, 3] in [0, 1],
  opacity [B, H, W], albedo / normal [B, H, W, 3], depth [B, H, W] (sum_i w_i t_i), the per-ray regulariser terms
  loss_orient [B, H, W] (sum_i sg(w_i) max(0, n_i . v)^2) and loss_opacity [B, H, W] (sqrt(opacity^2 + 0.01)), and
  the sample weights [B, H, W, S].
  """
  _, bg_fn = scene.fields(params)
  background_fn = lambda d: jnp.where(view.use_solid_background, jnp.broadcast_to(view.solid_background, d.shape),
                                      bg_fn(d))
  return scene.render_views(params, view.cams, rng, step=step, light_pos=view.light, mode=view.mode,
                            background_fn=background_fn, keep=RENDER_KEYS)


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


# One camera's loss terms, as weighted. "keep" is an edit's identity term (edit_objective; zero when training).
TERMS = ("distill", "orient", "opacity", "emptiness", "center_depth", "keep")


def training_view(settings: StepSettings, key, step) -> tuple[cam_lib.View, tuple]:
  """One random training view at `step` (camera, light, shading mode, background) and the keys of its render, latents
  and distillation (k_render, k_latent, k_distill)."""
  k_view, k_render, k_latent, k_distill, k_bg = jax.random.split(key, 5)
  view = cam_lib.sample_view(settings.view, k_view, step, settings.scene.width)
  view = cam_lib.with_random_background(view, k_bg, settings.view.random_background_prob)
  return view, (k_render, k_latent, k_distill)


def regulariser_terms(weights: LossWeights, out: dict, step) -> tuple[dict, dict]:
  """The weighted regularisers of one camera's render `out` (`render_view`), {'orient', 'opacity', 'emptiness',
  'center_depth'}, and their unweighted values as metrics. A term whose weight is 0 costs nothing."""
  loss_orient = weights.over_rays(out["loss_orient"])
  loss_opacity = weights.over_rays(out["loss_opacity"])
  terms = {"orient": weights.orient(step) * loss_orient, "opacity": weights.opacity * loss_opacity}
  metrics = {"loss_orient": loss_orient, "loss_opacity": loss_opacity}
  zero = jnp.zeros((), jnp.float32)
  terms["emptiness"], terms["center_depth"] = zero, zero
  if weights.emptiness.value:
    metrics["loss_emptiness"] = regularisers.emptiness(out["weights"], weights.emptiness_scale)
    terms["emptiness"] = weights.emptiness(step) * metrics["loss_emptiness"]
  if weights.center_depth:
    metrics["loss_center_depth"] = regularisers.center_depth(out["depth"], weights.center_depth_border)
    terms["center_depth"] = weights.center_depth * metrics["loss_center_depth"]
  return terms, metrics


def camera_terms(settings: StepSettings, prior: Prior, params: dict, prior_params: PyTree, text: TextEmbeddings,
                 key, step) -> tuple[dict, dict]:
  """The weighted loss terms of one training camera (`TERMS`: scalars; their sum is the camera's loss) and its
  metrics: a random view, its render, the prior's distillation loss and the weighted regularisers."""
  view, (k_render, k_latent, k_distill) = training_view(settings, key, step)
  out = render_view(settings.scene, params, view, k_render, step)
  loss_distill, aux = prior_loss(prior, prior_params, settings.rule, out["rgb"], prior.condition(text, view), text,
                                 latent_rng=k_latent, distill_rng=k_distill)
  reg_terms, reg_metrics = regulariser_terms(settings.loss, out, step)
  terms = {"distill": loss_distill} | reg_terms | {"keep": jnp.zeros((), jnp.float32)}
  return terms, camera_metrics(loss_distill, out, aux, view) | reg_metrics


def camera_metrics(loss_distill, out: dict, aux: dict, view: cam_lib.View) -> dict:
  """The per-camera metrics of the distillation and the render (scalars)."""
  return {"loss_distill": loss_distill, "opacity": jnp.mean(out["opacity"]), "g_abs_mean": aux["g_abs_mean"],
          "t": aux["t"][0].astype(jnp.float32), "nonfinite_eps": aux["nonfinite_eps"].astype(jnp.float32),
          "nonfinite_g": aux["nonfinite_g"].astype(jnp.float32),
          "shading_albedo": (view.mode[0] == cam_lib.ALBEDO).astype(jnp.float32)}
