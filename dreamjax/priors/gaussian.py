"""An analytic prior: the exact noise predictor of a Gaussian data distribution, for testing score distillation.

For data x ~ N(mu, diag(s^2)) and the VP forward process z_t = a x + sig eps (a = sqrt(abar), sig = sqrt(1 - abar)),
z_t is Gaussian with mean a mu and variance a^2 s^2 + sig^2, and Cov(eps, z_t) = sig, so the optimal eps-predictor is
  E[eps | z_t] = sig (z_t - a mu) / (a^2 s^2 + sig^2) = sqrt(1 - abar) (z_t - sqrt(abar) mu) / (abar s^2 + 1 - abar),
elementwise. Minus it over sig is the exact score of the noised marginal.

Text conditioning: each prompt names one Gaussian component (mu_k, s_k^2), both [H, W, C] in latent units (images in
[-1, 1]; a scalar variance is broadcast). Its "text embedding" is the flattened pair,
  emb_k = concat(mu_k, s_k^2, axis=-1).reshape(H * W, 2 C)            [L = H W, D = 2 C],
so `predict_eps` reads mu and s^2 back from the embedding of each batch row, and the conditional/unconditional
batches of classifier-free guidance are simply rows holding different components (e.g. "cond" = the target image with
a small variance, "" = a broader or shifted distribution). The prior has no weights (`params = {}`).

Latents are the images mapped to [-1, 1] with 2x - 1 and *not* resized: renders must already be [B, H, W, C].
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np

from dreamjax.priors.base import ViewTextConditioning

PyTree = Any
ArrayLike = Union[np.ndarray, jnp.ndarray, float]


class GaussianPrior(ViewTextConditioning):
  """Implements the `Prior` protocol (priors/base.py) with the closed-form eps-predictor of a Gaussian per prompt."""

  def __init__(self, components: Mapping[str, Tuple[ArrayLike, ArrayLike]], alphas_cumprod: np.ndarray):
    """Args:
      components: prompt -> (mean [H, W, C], variance: scalar or [H, W, C]), in latent units ([-1, 1] pixels).
        All means must share one shape [H, W, C].
      alphas_cumprod: the DDPM schedule abar [T] under which eps is predicted.
    """
    shapes = {np.shape(mean) for mean, _ in components.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
      raise ValueError(f'All component means must share one [H, W, C] shape, got {shapes}.')
    self.image_shape = next(iter(shapes))
    self.params = {}
    self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float32)
    self._table = {prompt: self.embed(mean, var) for prompt, (mean, var) in components.items()}

  @staticmethod
  def embed(mean: ArrayLike, var: ArrayLike) -> jnp.ndarray:
    """(mean [H, W, C], variance scalar or [H, W, C]) -> embedding [H W, 2 C] (see the module docstring)."""
    mean = jnp.asarray(mean, jnp.float32)
    var = jnp.broadcast_to(jnp.asarray(var, jnp.float32), mean.shape)
    h, w, c = mean.shape
    return jnp.concatenate([mean, var], axis=-1).reshape(h * w, 2 * c)

  def unembed(self, emb: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """emb [B, H W, 2 C] -> (mean [B, H, W, C], variance [B, H, W, C])."""
    h, w, c = self.image_shape
    x = emb.reshape(emb.shape[0], h, w, 2 * c)
    return x[..., :c], x[..., c:]

  def encode_text(self, prompts: Sequence[str]) -> jnp.ndarray:
    """prompts [N] -> embeddings [N, H W, 2 C]; every prompt must be a key of `components`."""
    missing = [p for p in prompts if p not in self._table]
    if missing:
      raise KeyError(f'GaussianPrior has no component for prompts {missing}; known: {sorted(self._table)}.')
    return jnp.stack([self._table[p] for p in prompts])

  def to_latents(self, params: PyTree, images: jnp.ndarray, rng: jnp.ndarray) -> jnp.ndarray:
    """images [B, H, W, C] in [0, 1] -> z = 2 images - 1 [B, H, W, C] (no resize; the shape must match)."""
    del params, rng
    if tuple(images.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f'GaussianPrior expects images [B, {self.image_shape}], got {images.shape}.')
    return 2.0 * images - 1.0

  def predict_eps(self, params: PyTree, z_t: jnp.ndarray, t: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    """Exact E[eps | z_t] for the component in each row of emb. z_t [B, H, W, C], t [B] int, emb [B, H W, 2 C]."""
    del params
    mean, var = self.unembed(emb)
    abar = jnp.asarray(self.alphas_cumprod)[t].reshape(-1, 1, 1, 1)
    return jnp.sqrt(1.0 - abar) * (z_t - jnp.sqrt(abar) * mean) / (abar * var + 1.0 - abar)
