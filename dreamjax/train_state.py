"""Everything a run checkpoints, as one pytree of arrays."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from dreamjax import optim
from dreamjax.nerf import scene


@struct.dataclass
class TrainState:
  """step: int32 scalar (iterations done); params: {'nerf', 'background'}; opt_state: optimiser state;
  rng: the run's base PRNG key (uint32 [2]); every step derives its keys from (rng, step), so a resumed run draws
  exactly the cameras and noise an uninterrupted run would; skipped_updates / skip_streak: int32 scalars, the steps
  whose update would have made a parameter non-finite (skipped: params and optimiser state kept), in all and in a
  row up to now."""
  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jnp.ndarray
  skipped_updates: jnp.ndarray
  skip_streak: jnp.ndarray


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optim.make_optimizer(config.optim)


def create(config: ml_collections.ConfigDict, tx: optax.GradientTransformation | None = None) -> TrainState:
  """A fresh state from `config.seed`."""
  tx = tx or make_optimizer(config)
  k_params, k_run = jax.random.split(jax.random.PRNGKey(config.seed))
  params = scene.Scene.from_config(config).init(k_params)
  zero = lambda: jnp.zeros((), jnp.int32)  # separate buffers: the step donates its state
  return TrainState(step=zero(), params=params, opt_state=tx.init(params), rng=k_run, skipped_updates=zero(),
                    skip_streak=zero())
