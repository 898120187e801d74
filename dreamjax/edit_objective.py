"""The loss of one editing camera: the edited scene and the frozen source scene rendered at the same view through
`objective.render_view`, their latents through the prior, and an editing rule (`edit_rules`: DDS, PDS) or plain SDS
toward the target prompt.

  camera_terms(settings, prior, params, prior_params, inputs, key, step)   the terms of `objective.TERMS`

Both renders share the view (camera, light, shading mode, solid background) and the render key (the same stratified
samples), and both latents share the VAE key, so an unedited scene with an unchanged prompt gets exactly zero
distillation gradient from DDS and PDS. The source's parameters are frozen: no gradient reaches them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dreamjax import distill
from dreamjax import edit_rules
from dreamjax import objective
from dreamjax.priors.base import Prior, TextEmbeddings

PyTree = Any


class EditInputs(NamedTuple):
  """The frozen inputs of an edit step (a pytree, replicated on every device): the target prompt's embeddings, the
  source prompt's, and the source scene's parameters."""
  text: TextEmbeddings
  source_text: TextEmbeddings
  source_params: dict


TRAINABLE = ("all", "appearance")  # what an edit may change: every parameter, or the albedo head and background only
APPEARANCE = (("nerf", "albedo"), ("background",))  # parameter paths an "appearance" edit trains


def trainable_part(params: dict, trainable: str = "all") -> dict:
  """`params` with everything an edit must not change behind stop_gradient: with "appearance", all but the NeRF's
  albedo head and the background MLP (the density, the shared trunk and so the geometry stay the source's exactly).
  Frozen leaves then get zero gradient, hence a zero optimiser update."""
  if trainable == "all":
    return params
  if trainable != "appearance":
    raise ValueError(f"config.edit.trainable {trainable!r} is unknown; use one of {', '.join(TRAINABLE)}")

  def keep(path, x):
    names = tuple(getattr(k, "key", None) for k in path)
    return x if any(names[:len(prefix)] == prefix for prefix in APPEARANCE) else jax.lax.stop_gradient(x)
  return jax.tree_util.tree_map_with_path(keep, params)


def render_pair(scene, params: dict, source_params: dict, view, rng, step) -> tuple[dict, dict]:
  """`objective.render_view` of the edited and the (frozen) source scene at one view with one render key, as one
  computation over the two parameter sets stacked (jax.vmap), so equal parameters give bit-identical renders: two
  separately compiled renders differ in the last bits, and the optimiser's normalised step would turn that noise
  into full-size updates. Returns (edited render, source render)."""
  stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, jax.lax.stop_gradient(b)]), params, source_params)
  both = jax.vmap(lambda p: objective.render_view(scene, p, view, rng, step))(stacked)
  return jax.tree_util.tree_map(lambda x: x[0], both), jax.tree_util.tree_map(lambda x: x[1], both)


def keep_opacity_loss(opacity, source_opacity):
  """The edit's identity term: mean squared difference of the edited and the source render's opacity [H, W] (both
  in [0, 1]), so geometry may move only where the prompt's gradient outweighs it. 0 when the opacities agree."""
  return jnp.mean(jnp.square(opacity - jax.lax.stop_gradient(source_opacity)))


def camera_terms(settings: objective.StepSettings, prior: Prior, params: dict, prior_params: PyTree,
                 inputs: EditInputs, key, step, trainable: str = "all", keep_opacity: float = 0.0
                 ) -> tuple[dict, dict]:
  """The weighted loss terms of one editing camera and its metrics (as `objective.camera_terms`). With an editing
  rule (dds, pds) the distillation term is `distill.surrogate_loss(z, g)` of `edit_rules.edit_step`'s g; with sds
  it is the ordinary SDS loss toward the target prompt (the source is then only the starting point). `trainable`
  (`trainable_part`) says which parameters the edit may change; `keep_opacity` weighs `keep_opacity_loss`."""
  params = trainable_part(params, trainable)
  view, (k_render, k_latent, k_distill) = objective.training_view(settings, key, step)
  cond = prior.condition(inputs.text, view)
  if settings.rule.is_edit or keep_opacity:  # the source render is needed
    out, source = render_pair(settings.scene, params, inputs.source_params, view, k_render, step)
  else:
    out, source = objective.render_view(settings.scene, params, view, k_render, step), None
  if settings.rule.is_edit:
    images = jnp.stack([out["rgb"], jax.lax.stop_gradient(source["rgb"])])  # one computation: bit-equal latents
    z, z_src = jax.vmap(lambda x: prior.to_latents(prior_params, x, k_latent))(images)
    g, aux = edit_rules.edit_step(settings.rule, prior, prior_params, z, z_src, k_distill, cond, inputs.text.uncond,
                                  prior.condition(inputs.source_text, view), inputs.source_text.uncond)
    loss_distill = distill.surrogate_loss(z, g)
  else:
    loss_distill, aux = objective.prior_loss(prior, prior_params, settings.rule, out["rgb"], cond, inputs.text,
                                             latent_rng=k_latent, distill_rng=k_distill)
  reg_terms, reg_metrics = objective.regulariser_terms(settings.loss, out, step)
  metrics = objective.camera_metrics(loss_distill, out, aux, view) | reg_metrics
  keep = jnp.zeros((), jnp.float32)
  if source is not None:
    metrics["loss_keep"] = keep_opacity_loss(out["opacity"], source["opacity"])
    keep = keep_opacity * metrics["loss_keep"]
  return {"distill": loss_distill} | reg_terms | {"keep": keep}, metrics
