"""SJC's scene regularisers (Wang et al. 2023, spec §4.2), usable with any distillation rule (their weight schedule:
`schedules.StepUp`).

DreamFusion's own two (orientation, opacity) are per-ray outputs of the renderer (`nerf.render.render_rays`); these
two act on a whole render:
  * emptiness:    mean over rays and samples of log(1 + B w_i), B = 10 (SJC's `emptiness_scale`), pushing the sample
                  weights w_i [R, S] toward 0 except where the prior needs density; a mean, as SJC writes it, so SJC's
                  weights (1e4, x20 after half the run) keep their meaning.
  * center depth: SJC's -log(mean_center(D) - mean_border(D)) on the accumulated depth D = sum_i w_i t_i (0 where
                  empty) of one render [H, W], centre = the window inside a border of `border` x the side (SJC: 7 of
                  64 pixels). SJC's code takes the log of a difference that can be negative (its sign bug, pals-ttic/sjc
                  issue #21); here the loss continues below `delta` along its tangent, so it is finite and decreasing
                  in (centre - border) everywhere and its gradient always moves density toward the centre.
"""

from __future__ import annotations

import jax.numpy as jnp

CENTER_DEPTH_DELTA = 1e-3  # world units: below this difference the loss is linear (its tangent at delta)


def emptiness(weights: jnp.ndarray, scale: float = 10.0) -> jnp.ndarray:
  """mean(log(1 + scale * w)) over every sample weight w [..., S] (a scalar)."""
  return jnp.mean(jnp.log1p(scale * weights))


def center_border_difference(depth: jnp.ndarray, border: float = 7 / 64) -> jnp.ndarray:
  """mean of depth [..., H, W] inside the centre window minus its mean outside, over the leading axes (a scalar).
  The window leaves round(border * H) rows and round(border * W) columns on every side (at least one pixel)."""
  h, w = depth.shape[-2:]
  bh, bw = max(1, int(round(border * h))), max(1, int(round(border * w)))
  if 2 * bh >= h or 2 * bw >= w:
    raise ValueError(f'config.loss.center_depth_border ({border}) leaves no centre in a {h}x{w} render')
  inside = jnp.zeros((h, w), bool).at[bh:h - bh, bw:w - bw].set(True)
  centre = jnp.sum(jnp.where(inside, depth, 0.0)) / (jnp.sum(inside) * depth[..., 0, 0].size)
  rim = jnp.sum(jnp.where(inside, 0.0, depth)) / (jnp.sum(~inside) * depth[..., 0, 0].size)
  return centre - rim


def center_depth(depth: jnp.ndarray, border: float = 7 / 64, delta: float = CENTER_DEPTH_DELTA) -> jnp.ndarray:
  """SJC's centre-depth loss with its sign written correctly: -log(x) for x = `center_border_difference` >= delta,
  its tangent -log(delta) - (x - delta) / delta below (a scalar)."""
  x = center_border_difference(depth, border)
  safe = jnp.maximum(x, delta)
  return jnp.where(x >= delta, -jnp.log(safe), -jnp.log(delta) - (x - delta) / delta)
