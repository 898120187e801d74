"""A prior that knows the answer: the exact epsilon-predictor for renders of one known analytic object.

For the view (camera, light, shading mode) it is shown, the data distribution is a point mass at the object's true
render x*, so E[eps | z_t] = (z_t - sqrt(abar) x*) / sqrt(1 - abar). SDS against it gives
g = w(t)(eps_hat - eps) = sqrt(abar (1 - abar)) (x - x*) (with omega = 0): a noise-free pull of every render toward
the truth. Training a NeRF against it must rebuild the object; this checks that cameras, rays, rendering, gradients,
the optimiser and the parallel step agree with each other (tests/test_train.py).

The oracle conditions on the view, not on text: its `condition(text, view)` is `view_embedding(view)`.
Pixel space: latents are images in [-1, 1] at the render resolution.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax.nerf import render
from dreamjax.priors.base import linear_alphas_cumprod

EMB_DIM = 17  # origin 3, c2w 9, focal 1, light 3, mode 1


def two_tone_sphere(mean: jnp.ndarray, var) -> tuple[jnp.ndarray, jnp.ndarray]:
  """A sphere of radius 0.5 at the origin, red below z = 0 and blue above; density pre-activation ~ 40·(0.5 - r)."""
  del var
  r = jnp.sqrt(jnp.sum(mean * mean, axis=-1) + 1e-12)
  pre = 40.0 * (0.5 - r)
  top = (mean[..., 2] > 0)[..., None]
  albedo = jnp.where(top, jnp.array([0.15, 0.25, 0.9]), jnp.array([0.9, 0.15, 0.1]))
  return pre, albedo


def sphere_mask(cams: cam_lib.Cameras, height: int, width: int, radius: float = 0.5) -> np.ndarray:
  """Analytic silhouette [N, H, W] bool of a sphere at the origin (pixel-centre rays)."""
  o, d = cam_lib.camera_rays(cams, height, width)
  _, _, hit = render.intersect_sphere(o, d, radius)
  return np.asarray(hit)


class OraclePrior:
  """Implements `Prior`, conditioned on the view (`view_embedding`), for the object `field_fn` over a solid
  background."""

  def __init__(self, field_fn: Callable = two_tone_sphere, background=(1.0, 1.0, 1.0),
               settings: render.RenderSettings = render.RenderSettings(num_coarse=64, num_fine=64),
               num_train_timesteps: int = 1000):
    self.field_fn = field_fn
    self.background = jnp.asarray(background, jnp.float32)
    self.settings = settings
    self.params = {}
    self.alphas_cumprod = linear_alphas_cumprod(num_train_timesteps)

  def encode_text(self, prompts: Sequence[str]) -> jnp.ndarray:
    """Text is ignored; every prompt maps to the empty view (all zeros), which predicts x* = 0."""
    return jnp.zeros((len(prompts), 1, EMB_DIM), jnp.float32)

  def condition(self, text, view: cam_lib.View) -> jnp.ndarray:
    """The conditional embedding of a training view: its packed camera, light and mode (text is ignored)."""
    del text
    return self.view_embedding(view)

  def view_embedding(self, view: cam_lib.View) -> jnp.ndarray:
    """Packs a view (`cameras.View`) into [N, 1, 17]."""
    cams = view.cams
    n = cams.origins.shape[0]
    return jnp.concatenate([cams.origins, cams.c2w.reshape(n, 9), cams.focal[:, None], view.light,
                            view.mode[:, None].astype(jnp.float32)], axis=-1)[:, None, :]

  def render_truth(self, emb: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """The object's exact render [N, H, W, 3] in [0, 1] for packed views emb [N, 1, 17]."""
    e = emb[:, 0, :]
    cams = cam_lib.Cameras(origins=e[:, :3], c2w=e[:, 3:12].reshape(-1, 3, 3), focal=jnp.maximum(e[:, 12], 1e-3),
                           elevation=jnp.zeros(e.shape[0]), azimuth=jnp.zeros(e.shape[0]),
                           distance=jnp.ones(e.shape[0]))
    bg = lambda d: jnp.broadcast_to(self.background, d.shape)
    out = render.render_views(self.field_fn, bg, cams, height, width, jax.random.PRNGKey(0), var=0.0,
                              light_pos=e[:, 13:16], mode=e[:, 16].astype(jnp.int32), settings=self.settings,
                              randomized=False, keep=("rgb",))
    return out["rgb"]

  def to_latents(self, params, images: jnp.ndarray, rng) -> jnp.ndarray:
    del params, rng
    return 2.0 * images - 1.0

  def target(self, params, emb: jnp.ndarray, latent_shape) -> jnp.ndarray:
    """x* [N, H, W, 3] in [-1, 1]: the true renders of packed views emb [N, 1, 17] at the latents' size."""
    del params
    _, h, w, _ = latent_shape
    return 2.0 * self.render_truth(emb, h, w) - 1.0

  def predict_eps(self, params, z_t: jnp.ndarray, t: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    empty = (emb[:, 0, 12] == 0)[:, None, None, None]
    x_star = jnp.where(empty, 0.0, self.target(params, emb, z_t.shape))
    abar = jnp.asarray(self.alphas_cumprod)[t][:, None, None, None]
    return (z_t - jnp.sqrt(abar) * x_star) / jnp.sqrt(1.0 - abar)


class LatentOraclePrior(OraclePrior):
  """The oracle in a latent-diffusion model's latent space: the data distribution is a point mass at
  z* = (E_mean(x*) - shift) · scaling_factor, the scaled posterior mean of the view's true render x* under the VAE of
  `latent_prior` (a `StableDiffusion`), so eps_hat = (z_t - sqrt(abar) z*) / sqrt(1 - abar).

  Everything but the UNet is `latent_prior`'s own code: renders reach the latents through its `to_latents` (resize
  to the VAE's input, the encoder differentiated, a posterior sample, scaling_factor) and its noise schedule is
  used. Training a NeRF against it shows whether that path carries an object's shape back to the scene, with no
  learned denoiser in the way (`python -m dreamjax.toy.oracle_check`).
  """

  def __init__(self, latent_prior, field_fn: Callable = two_tone_sphere, background=(1.0, 1.0, 1.0),
               settings: render.RenderSettings = render.RenderSettings(num_coarse=64, num_fine=64)):
    super().__init__(field_fn, background, settings)
    self.latent_prior = latent_prior
    self.params = latent_prior.params
    self.alphas_cumprod = np.asarray(latent_prior.alphas_cumprod)

  def to_latents(self, params, images: jnp.ndarray, rng) -> jnp.ndarray:
    return self.latent_prior.to_latents(params, images, rng)

  def target(self, params, emb: jnp.ndarray, latent_shape) -> jnp.ndarray:
    """z* [N, h, w, c]: the scaled posterior mean of the true renders (at the VAE's input size) of packed views
    emb [N, 1, 17]."""
    del latent_shape
    size = self.latent_prior.image_size
    mean, _ = self.latent_prior.latent_moments(params, self.render_truth(emb, size, size))
    return (mean - self.latent_prior.shift_factor) * self.latent_prior.scaling_factor
