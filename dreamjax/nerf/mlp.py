"""The scene's neural fields: DreamFusion's density/albedo MLP (with the density blob) and the background MLP.

DF A.2: 5 ResNet blocks of 128 units, SiLU, LayerNorm; exp activation for density tau and sigmoid for albedo rho;
a Gaussian "blob" lambda·exp(-|mu|^2 / (2 sigma^2)), lambda = 5, sigma = 0.2, added to the density pre-activation so
that the optimisation starts from an object at the centre. There is no view dependence: the MLP outputs albedo.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamjax.nerf import encoding


@jax.custom_jvp
def trunc_exp(x: jnp.ndarray) -> jnp.ndarray:
  """exp(x) with its argument clamped at 15 in value and derivative (density <= 3.3e6; no inf, no NaN)."""
  return jnp.exp(jnp.minimum(x, 15.0))


@trunc_exp.defjvp
def _trunc_exp_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  y = jnp.exp(jnp.minimum(x, 15.0))
  return y, y * t


def density_blob(x: jnp.ndarray, strength: float = 5.0, width: float = 0.2) -> jnp.ndarray:
  """DreamFusion's Gaussian density bias strength·exp(-|x|^2 / (2 width^2)); x [..., 3] -> [...]."""
  return strength * jnp.exp(-jnp.sum(x * x, axis=-1) / (2.0 * width ** 2))


class ResBlock(nn.Module):
  """Dense -> LayerNorm -> residual add -> SiLU."""
  features: int

  @nn.compact
  def __call__(self, h):
    y = nn.LayerNorm()(nn.Dense(self.features)(h))
    return nn.silu(h + y)


class NeRFMLP(nn.Module):
  """Maps sample Gaussians (mean [..., 3], variance) to (density pre-activation [...], albedo [..., 3] in (0,1)).

  The density is `trunc_exp(pre)`; the renderer applies it, and takes normals from the gradient of `pre` (same
  direction as the gradient of the density, better conditioned where the density is tiny).
  """
  num_freqs: int = 8  # IPE frequencies 2^0..2^(L-1)
  width: int = 128
  num_blocks: int = 5
  blob_strength: float = 5.0
  blob_width: float = 0.2
  density_bias_init: float = -2.0  # initial bias of the density head: empty space starts nearly transparent

  @nn.compact
  def __call__(self, mean: jnp.ndarray, var: jnp.ndarray):
    feats = encoding.integrated_pos_enc(mean, var, self.num_freqs)
    h = nn.Dense(self.width)(feats)
    for _ in range(self.num_blocks):
      h = ResBlock(self.width)(h)
    h = nn.LayerNorm()(h)
    # The density head starts small, so the initial scene is the blob over near-transparent space (an init
    # choice; the paper states only the activations and the blob).
    raw = nn.Dense(1, kernel_init=nn.initializers.variance_scaling(0.01, "fan_in", "normal"),
                   bias_init=nn.initializers.constant(self.density_bias_init), name="density")(h)[..., 0]
    pre = raw + density_blob(mean, self.blob_strength, self.blob_width)
    albedo = nn.sigmoid(nn.Dense(3, name="albedo")(h))
    return pre, albedo


class BackgroundMLP(nn.Module):
  """Environment-map colour [..., 3] in (0,1) from unit ray directions [..., 3] (DF §3.1; sizes not in the paper)."""
  num_freqs: int = 4
  width: int = 64
  depth: int = 2

  @nn.compact
  def __call__(self, directions: jnp.ndarray):
    h = encoding.pos_enc(directions, self.num_freqs)
    for _ in range(self.depth):
      h = nn.silu(nn.Dense(self.width)(h))
    return nn.sigmoid(nn.Dense(3)(h))
