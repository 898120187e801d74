"""The public Stable Diffusion architectures (1.5 and 2.1-base) as component configs, and random weights for them:
what the benchmark and the tests use to build SD-size priors with nothing downloaded
(`StableDiffusion.from_architecture`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.priors.base import TextEmbeddings

PyTree = Any

# The component configs of the public checkpoints, in their diffusers config.json form (entries the Flax classes
# read; `stable_diffusion.build_modules` keeps the fields of each class, as `from_pretrained` does).

_SD_UNET_COMMON = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
    "dropout": 0.0, "only_cross_attention": False, "mid_block_type": "UNetMidBlock2DCrossAttn",
}
_SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "act_fn": "silu", "sample_size": 512, "scaling_factor": 0.18215,
}
_SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                 "beta_end": 0.012, "prediction_type": "epsilon"}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A Stable Diffusion architecture: component configs (diffusers config.json form) and the text width D."""
  name: str
  unet: dict
  vae: dict
  scheduler: dict
  text_dim: int
  text_len: int = 77


ARCHITECTURES = {
    # stable-diffusion-v1-5: 8 heads everywhere, CLIP ViT-L/14 text (768), conv in/out projections in attention.
    "sd15": Architecture("sd15", _SD_UNET_COMMON | {"attention_head_dim": 8, "cross_attention_dim": 768,
                                                    "use_linear_projection": False},
                         _SD_VAE, _SD_SCHEDULER, text_dim=768),
    # stable-diffusion-2-1-base (512², epsilon): head widths 64 (5/10/20/20 heads), OpenCLIP ViT-H text (1024),
    # linear in/out projections.
    "sd21": Architecture("sd21", _SD_UNET_COMMON | {"attention_head_dim": [5, 10, 20, 20],
                                                    "cross_attention_dim": 1024, "use_linear_projection": True},
                         _SD_VAE, _SD_SCHEDULER, text_dim=1024),
}


def param_count(tree: PyTree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal_leaf(key, shape: tuple, dtype, std):
  return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def random_like(shapes: PyTree, key, dtype: Any) -> PyTree:
  """Random parameters with the shapes of `shapes` (ShapeDtypeStructs), cast to dtype, made on the device leaf by
  leaf (one small compiled generator per distinct shape; no float32 copy of the whole tree).

  'kernel' ~ N(0, 1/fan_in) (fan_in = product of all but the last axis: Flax's LeCun scale), 'scale' = 1,
  'bias' = 0, anything else ~ N(0, 0.02²). The values only have to keep activations of a sensible size.
  """
  paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for i, (path, s) in enumerate(paths):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(int(d) for d in s.shape)
    if name == "bias":
      x = jnp.zeros(shape, dtype)
    elif name == "scale":
      x = jnp.ones(shape, dtype)
    else:
      std = 1.0 / math.sqrt(max(int(np.prod(shape[:-1])), 1)) if name == "kernel" else 0.02
      x = _normal_leaf(jax.random.fold_in(key, i), shape, jnp.dtype(dtype), np.float32(std))
    out.append(x)
  return jax.tree_util.tree_unflatten(treedef, out)


def random_text_embeddings(arch: str, needs_negative: bool = False, seed: int = 0) -> TextEmbeddings:
  """Random N(0, 1) stand-ins for a run's `TextEmbeddings` with architecture `arch`'s text shape: views [4, L, D],
  uncond [1, L, D] and, when `needs_negative` (NFSD), neg [1, L, D]; float32."""
  a = ARCHITECTURES[arch]
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  shape = (a.text_len, a.text_dim)
  return TextEmbeddings(views=jax.random.normal(k[0], (4,) + shape), uncond=jax.random.normal(k[1], (1,) + shape),
                        neg=jax.random.normal(k[2], (1,) + shape) if needs_negative else None)
