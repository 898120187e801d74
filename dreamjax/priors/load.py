"""Builds the prior a config names (`config.prior`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

PRIOR_KINDS = ("stable_diffusion", "toy")


AUTO_DTYPES = {"cpu": jnp.float32, "gpu": jnp.float16, "cuda": jnp.float16, "rocm": jnp.float16}


def resolve_dtype(name: str):
  """'auto' -> float16 on GPU (its guided noise prediction at omega = 100 keeps about 7x less rounding error than
  bfloat16's: docs/stable_diffusion.md "dtypes"), float32 on CPU, bfloat16 elsewhere (TPU: no fast float16);
  otherwise the named dtype."""
  if name == "auto":
    return AUTO_DTYPES.get(jax.default_backend(), jnp.bfloat16)
  try:
    return jnp.dtype(name).type
  except TypeError:
    raise ValueError(f"prior.dtype {name!r} is not a dtype; use auto, float32, bfloat16 or float16") from None


def sd_options(config: ml_collections.ConfigDict) -> dict:
  """The `StableDiffusion` speed/memory options a config names (attention kernel, encoder remat)."""
  return {"attention": config.prior.attention, "remat_encoder": bool(config.prior.remat_encoder)}


def load_prior(config: ml_collections.ConfigDict):
  """The frozen prior for `config.prior.kind`. Raises WeightsError (one line) when weights cannot be had."""
  c = config.prior
  if c.kind == "stable_diffusion":
    from dreamjax.priors.stable_diffusion import StableDiffusion
    return StableDiffusion.from_pretrained(c.model, dtype=resolve_dtype(c.dtype), revision=c.revision or None,
                                           variant=c.variant or None, **sd_options(config))
  if c.kind == "toy":
    from dreamjax.toy import prior as toy_prior
    return toy_prior.load(c.model or None, dtype=resolve_dtype(c.dtype))
  raise ValueError(f"config.prior.kind {c.kind!r} is unknown; use one of {', '.join(PRIOR_KINDS)}")
