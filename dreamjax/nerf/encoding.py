"""Positional encodings: Mip-NeRF's integrated positional encoding (IPE) with DreamFusion's annealed covariance.

DreamFusion does not derive the Gaussian's covariance from the pixel footprint: every sample is an isotropic Gaussian
N(mu, lambda I) whose variance lambda is annealed from 5e-2 to 2e-3 over the first third of training (DF A.2), which
makes the fit coarse-to-fine; the schedule is `Scene.ipe_variance` (a `schedules.Ramp`).
"""

from __future__ import annotations

import jax.numpy as jnp


def integrated_pos_enc(mean: jnp.ndarray, var: jnp.ndarray, num_freqs: int = 8) -> jnp.ndarray:
  """Expected sin/cos features of x ~ N(mean, var·I), frequencies 2^0 .. 2^(L-1).

  E[sin(w x)] = sin(w mu) exp(-w^2 var / 2) and likewise for cos (a Gaussian's characteristic function).
  Args: mean [..., 3] world units; var scalar or [...] (variance, world units^2).
  Returns: [..., 2 * 3 * num_freqs], ordered (sin of all freqs×dims, cos of all freqs×dims).
  """
  scales = 2.0 ** jnp.arange(num_freqs, dtype=mean.dtype)  # [L]
  scaled = (mean[..., None, :] * scales[:, None]).reshape(mean.shape[:-1] + (-1,))  # [..., L*3]
  var = jnp.asarray(var, mean.dtype)
  damp = jnp.exp(-0.5 * jnp.repeat(scales ** 2, mean.shape[-1]) * var[..., None])  # [..., L*3]
  return jnp.concatenate([jnp.sin(scaled) * damp, jnp.cos(scaled) * damp], axis=-1)


def pos_enc(x: jnp.ndarray, num_freqs: int, include_input: bool = True) -> jnp.ndarray:
  """Plain NeRF positional encoding [..., d] -> [..., d (if include_input) + 2 d L] (used for ray directions)."""
  scales = 2.0 ** jnp.arange(num_freqs, dtype=x.dtype)
  scaled = (x[..., None, :] * scales[:, None]).reshape(x.shape[:-1] + (-1,))
  feats = [jnp.sin(scaled), jnp.cos(scaled)]
  return jnp.concatenate(([x] if include_input else []) + feats, axis=-1)
