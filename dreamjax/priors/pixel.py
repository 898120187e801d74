"""An Imagen-style pixel-space prior: a Flax noise-prediction model applied directly to resized renders (no VAE).

Latents are images in [-1, 1]: z = 2 * resize(images, resolution) - 1, [B, R, R, C]. The wrapped model is any Flax
module called as `model.apply({'params': p}, x_t, t, emb)` with x_t [B, R, R, C] (or [B, C, R, R] when
`channels_first=True`, e.g. diffusers' `FlaxUNet2DConditionModel`), t [B] int and emb [B, L, D]. It may return an
array or an object with a `.sample` field (diffusers' output dataclass) or a tuple whose first item is the output.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.priors.base import ViewTextConditioning, v_to_eps

PyTree = Any

PREDICTION_TYPES = ('epsilon', 'v_prediction', 'sample')


class PixelPrior(ViewTextConditioning):
  """Implements the `Prior` protocol (priors/base.py) around a pixel-space eps/v/x0-prediction Flax model."""

  def __init__(self, model: nn.Module, params: PyTree, alphas_cumprod: np.ndarray,
               resolution: Union[int, Tuple[int, int]], prediction_type: str = 'epsilon',
               encode_text: Optional[Callable[[Sequence[str]], jnp.ndarray]] = None, channels_first: bool = False,
               antialias: bool = True):
    """Args:
      model: the Flax denoiser (see the module docstring for its call signature).
      params: its weights (the `params` collection).
      alphas_cumprod: the DDPM schedule abar [T] the model was trained with.
      resolution: the model's input size R or (H, W); renders are bilinearly resized to it.
      prediction_type: what the model outputs, as in diffusers: 'epsilon', 'v_prediction' or 'sample' (x0).
      encode_text: prompts -> embeddings [N, L, D] (e.g. a CLIP/T5 text encoder, or a lookup table in tests).
      channels_first: transpose to NCHW for the model and back (diffusers' Flax UNet takes NCHW).
      antialias: low-pass before bilinear *down*sampling (jax.image.resize's antialias); no effect when upsampling.
    """
    if prediction_type not in PREDICTION_TYPES:
      raise ValueError(f'prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.')
    self.model = model
    self.params = params
    self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float32)
    self.resolution = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    self.prediction_type = prediction_type
    self._encode_text = encode_text
    self.channels_first = channels_first
    self.antialias = antialias

  def encode_text(self, prompts: Sequence[str]) -> jnp.ndarray:
    """prompts [N] -> embeddings [N, L, D] via the text encoder given at construction."""
    if self._encode_text is None:
      raise ValueError('This PixelPrior was built without a text encoder.')
    return jnp.asarray(self._encode_text(list(prompts)))

  def to_latents(self, params: PyTree, images: jnp.ndarray, rng: jnp.ndarray) -> jnp.ndarray:
    """images [B, H, W, C] in [0, 1] -> z [B, R, R, C] in [-1, 1]: bilinear resize (half-pixel centres), then 2x - 1.

    Differentiable w.r.t. images; `params` and `rng` are unused (no encoder, no sampling).
    """
    del params, rng
    b, h, w, c = images.shape
    if (h, w) != self.resolution:
      images = jax.image.resize(images, (b, *self.resolution, c), method='bilinear', antialias=self.antialias)
    return 2.0 * images - 1.0

  def predict_eps(self, params: PyTree, z_t: jnp.ndarray, t: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    """z_t [B, R, R, C], t [B] int, emb [B, L, D] -> eps [B, R, R, C] (converted from v or x0 if needed)."""
    x = jnp.transpose(z_t, (0, 3, 1, 2)) if self.channels_first else z_t
    out = self.model.apply({'params': params}, x, t, emb)
    if hasattr(out, 'sample'):
      out = out.sample
    elif isinstance(out, (tuple, list)):
      out = out[0]
    if self.channels_first:
      out = jnp.transpose(out, (0, 2, 3, 1))
    if self.prediction_type == 'epsilon':
      return out
    abar = jnp.asarray(self.alphas_cumprod)[t]
    if self.prediction_type == 'v_prediction':
      return v_to_eps(out, z_t, abar)
    # 'sample': out is x0; z_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
    abar = jnp.reshape(abar, (-1,) + (1,) * (z_t.ndim - 1))
    return (z_t - jnp.sqrt(abar) * out) / jnp.sqrt(1.0 - abar)
