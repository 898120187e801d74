"""Editing rules of the score-distillation family (DDS, PDS): gradients that move a target scene's latents toward a
target prompt relative to a frozen source scene, as pure functions of eps predictions, plus the prior-side step.

Conventions are `distill`'s: z [B, h, w, c] clean latents in the prior's units, abar_t [B], every function returns the
per-sample *loss* gradient g with the shape of z (`distill.surrogate_loss(z, g)` delivers g / B to z). Source and
target branches share the timestep and every noise draw, so a scene edited toward its own prompt gets g = 0 exactly.

  DDS (Hertz et al. 2023):  g = w(t) (eps_hat(z_t^tgt; y_tgt, t) - eps_hat(z_t^src; y_src, t)), no -eps term.
  PDS (Koo et al. 2024):    g = zeta^tgt - zeta^src, zeta = (x_{t-1} - mu(x_t, y)) / sigma_t, the stochastic latent of
                            each branch, with shared eps_t and eps_{t-1} (spec §4.4; no w(t)); computed in its exact
                            closed form pds_weight(t) (eps_hat_tgt - eps_hat_src), which the tests check against
                            the zeta form in float64.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from dreamjax import distill

PyTree = Any


def dds_grad(eps_tgt_c: jax.Array, eps_tgt_u: jax.Array, eps_src_c: jax.Array, eps_src_u: jax.Array,
             abar_t: jax.Array, scale: float = 7.5, form: str = 'diffusers', weighting: str = 'uniform',
             clip=None, sanitize: bool = True) -> jax.Array:
  """Delta Denoising Score: g = w(t) (eps_hat_tgt - eps_hat_src). eps_* [B, ...] at the same z_t noise and t;
  abar_t [B]. Returns g [B, ...]."""
  eps_hat_tgt = distill.guided_eps(eps_tgt_c, eps_tgt_u, scale, form)
  eps_hat_src = distill.guided_eps(eps_src_c, eps_src_u, scale, form)
  w = distill.bcast_per_sample(distill.time_weight(abar_t, weighting), eps_hat_tgt)
  return distill.finish_grad(w * (eps_hat_tgt - eps_hat_src), clip, sanitize)


def pds_timesteps(num_train_timesteps: int, num_steps: int) -> jnp.ndarray:
  """The discrete timesteps of PDS's `num_steps`-step schedule: k * (T // num_steps), k = 0..num_steps-1 (int32)."""
  if not 2 <= num_steps <= num_train_timesteps:
    raise ValueError(f'config.distill.pds_steps ({num_steps}) must be in [2, {num_train_timesteps}]')
  return jnp.arange(num_steps, dtype=jnp.int32) * (num_train_timesteps // num_steps)


def sample_pds_timesteps(rng: jax.Array, batch: int, num_train_timesteps: int, num_steps: int, t_min: float,
                         t_max: float) -> Tuple[jax.Array, jax.Array]:
  """(t, t_prev) int32 [batch]: an index k ~ randint[max(1, round(t_min N)), round(t_max N)) of the N-step schedule
  (`pds_timesteps`), t its step and t_prev the previous one (PDS: N = 500, fractions 0.02 .. 0.98)."""
  steps = pds_timesteps(num_train_timesteps, num_steps)
  lo = max(1, int(round(t_min * num_steps)))
  hi = int(round(t_max * num_steps))
  if not lo < hi <= num_steps:
    raise ValueError(f'Bad PDS index range [{lo}, {hi}) for {num_steps} steps.')
  k = jax.random.randint(rng, (batch,), lo, hi, dtype=jnp.int32)
  return steps[k], steps[k - 1]


def posterior(abar_t: jax.Array, abar_prev: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """DDPM posterior q(x_{t_prev} | x_t, x_0) for a jump t -> t_prev: mean c0 x_0 + c1 x_t, std sigma.

  With the jump's beta = 1 - abar_t / abar_prev: c0 = sqrt(abar_prev) beta / (1 - abar_t), c1 = sqrt(1 - beta)
  (1 - abar_prev) / (1 - abar_t), sigma = sqrt((1 - abar_prev) / (1 - abar_t) beta). Shapes follow the inputs [B].
  """
  beta = 1.0 - abar_t / abar_prev
  c0 = jnp.sqrt(abar_prev) * beta / (1.0 - abar_t)
  c1 = jnp.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)
  sigma = jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * beta)
  return c0, c1, sigma


def stochastic_latent(x0: jax.Array, eps_hat: jax.Array, eps_t: jax.Array, eps_prev: jax.Array, abar_t: jax.Array,
                      abar_prev: jax.Array) -> jax.Array:
  """PDS's zeta = (x_{t_prev} - mu(x_t)) / sigma for clean latents x0 [B, ...], the branch's guided eps_hat at x_t
  = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_t, and x_{t_prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps_prev;
  mu = c0 x0_hat + c1 x_t with x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)."""
  a_t, a_p = distill.bcast_per_sample(abar_t, x0), distill.bcast_per_sample(abar_prev, x0)
  c0, c1, sigma = posterior(a_t, a_p)
  x_t = jnp.sqrt(a_t) * x0 + jnp.sqrt(1.0 - a_t) * eps_t
  x_prev = jnp.sqrt(a_p) * x0 + jnp.sqrt(1.0 - a_p) * eps_prev
  x0_hat = (x_t - jnp.sqrt(1.0 - a_t) * eps_hat) / jnp.sqrt(a_t)
  return (x_prev - (c0 * x0_hat + c1 * x_t)) / sigma


def pds_grad(z_tgt: jax.Array, z_src: jax.Array, eps_hat_tgt: jax.Array, eps_hat_src: jax.Array, eps_t: jax.Array,
             eps_prev: jax.Array, abar_t: jax.Array, abar_prev: jax.Array, clip=None,
             sanitize: bool = True) -> jax.Array:
  """Posterior Distillation Sampling: g = zeta(z_tgt, eps_hat_tgt) - zeta(z_src, eps_hat_src) with shared eps_t,
  eps_prev (`stochastic_latent`). z_*, eps_* [B, ...]; abar_t, abar_prev [B]. Returns g [B, ...]."""
  g = (stochastic_latent(z_tgt, eps_hat_tgt, eps_t, eps_prev, abar_t, abar_prev)
       - stochastic_latent(z_src, eps_hat_src, eps_t, eps_prev, abar_t, abar_prev))
  return distill.finish_grad(g, clip, sanitize)


def pds_weight(abar_t: jax.Array, abar_prev: jax.Array) -> jax.Array:
  """The weight that makes PDS a DDS: `pds_grad` = pds_weight * (eps_hat_tgt - eps_hat_src) [B], exactly.

  With x_t = sqrt(a) x0 + sqrt(1 - a) eps_t, x0_hat = x0 + sqrt(1 - a) (eps_t - eps_hat) / sqrt(a), and c0 + c1
  sqrt(a) = sqrt(abar_prev), every x0 term and the shared eps_{t-1} cancel in zeta_tgt - zeta_src, leaving
  c0 sqrt(1 - a) / (sigma sqrt(a)) (eps_hat_tgt - eps_hat_src). Computing it this way avoids subtracting two
  large zetas (x0 / sigma each) and gives exactly 0 wherever the two branches' predictions agree.
  """
  c0, _, sigma = posterior(abar_t, abar_prev)
  return c0 * jnp.sqrt(1.0 - abar_t) / (sigma * jnp.sqrt(abar_t))


def edit_step(rule: distill.Rule, prior, prior_params: PyTree, z_tgt: jax.Array, z_src: jax.Array, rng: jax.Array,
              cond_tgt: jax.Array, uncond_tgt: jax.Array, cond_src: jax.Array,
              uncond_src: jax.Array) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The prior side of one editing step for rule 'dds' or 'pds': one timestep and one set of noises for both
  branches, one UNet call on [tgt cond, tgt uncond, src cond, src uncond], the rule. Returns (g, aux) like
  `distill.distill_step` (g [B, h, w, c] constant w.r.t. z; aux 't', 'abar_t', 'noise', 'g_abs_mean', 'g_norm',
  'nonfinite_eps', 'nonfinite_g'; for pds also 't_prev'). PDS's eps_{t-1} cancels between the branches
  (`pds_weight`), so it is not drawn. z_src is the frozen source scene's latents at the same camera.

  The UNet sees only stop-gradient inputs, as in `distill.distill_step`: its backward pass is never formed.
  """
  if not rule.is_edit:
    raise ValueError(f'edit_step needs an editing rule (dds or pds), got {rule.name!r}')
  batch = z_tgt.shape[0]
  abar_all = jnp.asarray(prior.alphas_cumprod, dtype=jnp.float32)
  num_t = abar_all.shape[0]
  k_t, k_eps = jax.random.split(rng)
  dtype = jnp.promote_types(z_tgt.dtype, jnp.float32)
  if rule.name == 'pds':
    t, t_prev = sample_pds_timesteps(k_t, batch, num_t, rule.pds_steps, rule.t_min, rule.t_max)
  else:
    t = distill.sample_timesteps(k_t, batch, num_t, rule.t_min, rule.t_max)
    t_prev = t
  abar_t = abar_all[t]
  noise = jax.random.normal(k_eps, z_tgt.shape, dtype)
  a = distill.bcast_per_sample(abar_t, z_tgt)
  # The two branches go through every elementwise step as one stacked computation (jax.vmap over the branch axis),
  # so equal latents and prompts give bit-equal predictions and g = 0 exactly: separately fused expressions round
  # differently in the last bits, which the optimiser's normalised step would turn into full-size updates.
  x0 = jax.lax.stop_gradient(jnp.stack([z_tgt, z_src]).astype(dtype))  # [2, B, ...]
  z_t = jax.vmap(lambda x: jnp.sqrt(a) * x + jnp.sqrt(1.0 - a) * noise)(x0)
  embs = jnp.stack([jnp.concatenate([cond_tgt, uncond_tgt]), jnp.concatenate([cond_src, uncond_src])])
  eps_all = prior.predict_eps(jax.lax.stop_gradient(prior_params), jnp.concatenate([z_t[0], z_t[0], z_t[1], z_t[1]]),
                              jnp.concatenate([t] * 4), embs.reshape((-1,) + embs.shape[2:]))
  eps_all = jax.lax.stop_gradient(eps_all).astype(dtype).reshape((2, 2) + z_tgt.shape)  # [branch, cond/uncond, B..]
  hat = jax.vmap(lambda e: distill.guided_eps(e[0], e[1], rule.guidance_scale, rule.cfg_form))(eps_all)
  if rule.name == 'dds':
    w = distill.time_weight(abar_t, rule.weighting)
  else:  # PDS in its closed form (`pds_weight`): equal to `pds_grad`, without its cancellation
    w = pds_weight(abar_t, abar_all[t_prev])
  g = distill.finish_grad(distill.bcast_per_sample(w, z_tgt) * (hat[0] - hat[1]), rule.clip, sanitize=False)
  nonfinite_g = jnp.sum(~jnp.isfinite(g))
  g = jnp.nan_to_num(g).astype(z_tgt.dtype)
  extra = {'t_prev': t_prev} if rule.name == 'pds' else {}
  return g, extra | {'t': t, 'abar_t': abar_t, 'noise': noise, 'g_abs_mean': jnp.mean(jnp.abs(g)),
             'g_norm': jnp.sqrt(jnp.sum(jnp.square(g.reshape(batch, -1)), axis=-1)),
             'nonfinite_eps': jnp.sum(~jnp.isfinite(eps_all)), 'nonfinite_g': nonfinite_g}
