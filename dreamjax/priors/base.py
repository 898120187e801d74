"""The interface every 2D diffusion prior implements.

A prior is a frozen text-to-image diffusion model seen by score distillation through four things:

  encode_text(prompts)                     -> emb     [N, L, D]   (eager, once, outside the train step)
  to_latents(params, images, rng)          -> z       [B, h, w, c] (differentiable w.r.t. images)
  predict_eps(params, z_t, t, emb)         -> eps     [B, h, w, c] (epsilon-prediction, whatever the model predicts)
  alphas_cumprod                           -> abar    [T] float32  (the discrete DDPM schedule)

`params` is the prior's frozen weight pytree (`prior.params`); it is passed explicitly into jitted functions so that
large weights are arguments, not baked-in constants. `images` are renders in [0, 1], channels last, [B, H, W, 3].
`t` are integer timesteps in [0, T) with shape [B]. Classifier-free guidance is done by the caller (distill.py): it
concatenates the conditional and unconditional batches into one `predict_eps` call.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import jax.numpy as jnp
import numpy as np

PyTree = Any


@runtime_checkable
class Prior(Protocol):
  """Structural type of a diffusion prior; see the module docstring for shapes."""

  params: PyTree
  alphas_cumprod: np.ndarray

  def encode_text(self, prompts: Sequence[str]) -> jnp.ndarray:
    ...

  def to_latents(self, params: PyTree, images: jnp.ndarray, rng: jnp.ndarray) -> jnp.ndarray:
    ...

  def predict_eps(self, params: PyTree, z_t: jnp.ndarray, t: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    ...


def v_to_eps(v: jnp.ndarray, z_t: jnp.ndarray, alpha_bar_t: jnp.ndarray) -> jnp.ndarray:
  """Converts a v-prediction to an epsilon-prediction.

  With z_t = a z + s eps, a = sqrt(abar), s = sqrt(1 - abar) and v = a eps - s z, eps = a v + s z_t.
  Args: v, z_t [B, ...]; alpha_bar_t [B] broadcast over the trailing axes.
  """
  abar = jnp.reshape(alpha_bar_t, (-1,) + (1,) * (z_t.ndim - 1))
  return jnp.sqrt(abar) * v + jnp.sqrt(1.0 - abar) * z_t


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> np.ndarray:
  """Stable Diffusion's `scaled_linear` DDPM schedule: betas linear in sqrt-space. Returns abar [T] float32."""
  betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
  return np.cumprod(1.0 - betas).astype(np.float32)


def linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> np.ndarray:
  """The original DDPM `linear` schedule (betas linear). Returns abar [T] float32."""
  betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
  return np.cumprod(1.0 - betas).astype(np.float32)
