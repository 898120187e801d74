"""Schedules of a value over training steps (loss weights, the IPE variance), as small frozen objects.

A schedule is built once from a config and called with the step inside the jitted train step: `ramp(step)` is a
float32 scalar. Written like threestudio's `[start_step, start_value, end_value, end_step]` lists, but as types.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Ramp:
  """`start` at step 0, linear to `end` at step `steps`, constant afterwards (steps < 1 is read as 1)."""
  start: float
  end: float
  steps: int

  def __call__(self, step) -> jnp.ndarray:
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(self.steps, 1), 0.0, 1.0)
    return self.start + (self.end - self.start) * frac


def ramp_over_fraction(start: float, end: float, fraction: float, num_steps: int) -> Ramp:
  """A `Ramp` over the first `fraction` of a run of `num_steps` steps (DF: the first third of 15k steps)."""
  return Ramp(start=float(start), end=float(end), steps=int(fraction * num_steps))


@dataclasses.dataclass(frozen=True)
class StepUp:
  """`value` until step `at`, then `value * multiplier` (SJC's emptiness schedule: 1e4, x20 after half the steps)."""
  value: float
  multiplier: float
  at: int

  def __call__(self, step) -> jnp.ndarray:
    return jnp.where(jnp.asarray(step) < self.at, self.value, self.value * self.multiplier).astype(jnp.float32)
