"""Score distillation rules (SDS, NFSD, SJC) as pure functions of eps predictions, plus the prior-side step.

Conventions (shared by every function here):
  * z are the prior's clean latents [B, h, w, c] (from `prior.to_latents`), in the prior's latent units.
  * t are integer DDPM timesteps [B] in [0, T); abar_t = alphas_cumprod[t] [B], broadcast over trailing axes.
  * VP forward process: z_t = sqrt(abar) z + sqrt(1 - abar) eps, eps ~ N(0, I).
  * Every rule returns the per-sample *loss* gradient g with the shape of z: the optimiser descends along -g, and the
    surrogate loss `surrogate_loss(z, g)` delivers exactly g / B to z (B = batch size), as in threestudio's
    `0.5 * mse(z, (z - g).detach(), reduction='sum') / B`.
  * Every rule clamps g to [-c, c] if `clip` is a float c, then applies `jnp.nan_to_num` (`distill_step` counts the
    non-finite entries first, as aux['nonfinite_g']).

CFG forms (spec D1): paper (DreamFusion) eps_hat = (1 + w) eps_c - w eps_u; diffusers eps_hat = eps_u + s (eps_c -
eps_u). They agree when w = s - 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from dreamjax.priors.base import Prior

PyTree = Any

# The NFSD project page's negative prompt (used to estimate the domain direction delta_D for t >= 200).
NFSD_NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, gloomy")

# Each rule's own settings (the defaults of `default_distill_config(name)`; its source in the comment).
RULE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # DreamFusion: omega = 100 in the paper's CFG form, w(t) = sigma_t^2 = 1 - abar, t ~ U(0.02, 0.98).
    'sds': dict(guidance_scale=100.0, cfg_form='paper', weighting='sds', t_min=0.02, t_max=0.98),
    # NFSD: nominal s = 7.5 in eps_u + s * delta_C form (delta_D + s delta_C), w(t) as SDS, same t range.
    'nfsd': dict(guidance_scale=7.5, cfg_form='diffusers', weighting='sds', t_min=0.02, t_max=0.98),
    # SJC: s = 100 in diffusers form, no time weighting (PAAS grad is (D - y) / sigma), t in [10, 970].
    'sjc': dict(guidance_scale=100.0, cfg_form='diffusers', weighting='uniform', t_min=0.01, t_max=0.97),
    # Editing rules (dreamjax/edit_rules.py; they need a frozen source scene: `python -m dreamjax.edit`).
    # DDS: the official notebook's CFG 7.5 (diffusers form), w = 1, t ~ randint(50, 950) i.e. t in 50..949.
    'dds': dict(guidance_scale=7.5, cfg_form='diffusers', weighting='uniform', t_min=0.05, t_max=0.949),
    # PDS: CFG 100 (diffusers form), no w(t); t_min / t_max are fractions of the pds_steps-step schedule (0.02..0.98).
    'pds': dict(guidance_scale=100.0, cfg_form='diffusers', weighting='uniform', t_min=0.02, t_max=0.98),
}
EDIT_RULES = ('dds', 'pds')
RULES = tuple(RULE_DEFAULTS)
CFG_FORMS = ('paper', 'diffusers')
WEIGHTINGS = ('sds', 'uniform')


def check_rule_name(name: str) -> str:
  """`name` if it is a known rule, else a ValueError naming the choices."""
  if name not in RULE_DEFAULTS:
    raise ValueError(f'config.distill.name {name!r} is unknown; use one of {", ".join(RULES)}')
  return name


def default_distill_config(name: str = 'sds') -> ml_collections.ConfigDict:
  """The config section of rule `name` with the rule's own values (see `RULE_DEFAULTS`) in every field.

  A command line that sets only `--config.distill.name=nfsd` gets `default_distill_config('nfsd')` plus its other
  `--config.distill.*` overrides (`dreamjax.cli` does this), so the run's config.json records the numbers used.
  """
  d = RULE_DEFAULTS[check_rule_name(name)]
  cfg = ml_collections.ConfigDict()
  # Rule: 'sds' (DreamFusion), 'nfsd' (noise-free score distillation), 'sjc' (SJC PAAS, VE form); editing only
  # (python -m dreamjax.edit): 'dds' (delta denoising score), 'pds' (posterior distillation sampling).
  cfg.name = name
  # CFG scale: omega in the 'paper' form, s in the 'diffusers' form (sds: 100 paper; nfsd: 7.5; sjc: 100 diffusers).
  cfg.guidance_scale = d['guidance_scale']
  # 'paper': (1+w) eps_c - w eps_u; 'diffusers': eps_u + s (eps_c - eps_u). NFSD's delta_D + s delta_C is of
  # diffusers form; 'paper' there uses s + 1.
  cfg.cfg_form = d['cfg_form']
  # w(t): 'sds' = 1 - abar_t (DF's sigma_t^2), 'uniform' = 1.
  cfg.weighting = d['weighting']
  # t ~ randint[round(t_min T), round(t_max T)] inclusive: sds/nfsd 0.02..0.98 (t in 20..980), sjc 0.01..0.97.
  cfg.t_min = d['t_min']
  cfg.t_max = d['t_max']
  # 0: no clamp; c > 0: clamp g elementwise to [-c, c] after nan_to_num (threestudio's grad_clip).
  cfg.clip = 0.0
  # NFSD: delta_D = eps_u for t < threshold, eps_u - eps_neg for t >= threshold (NFSD uses 200 of 1000 steps).
  cfg.nfsd_t_threshold = 200
  # SJC: True = Eq. 16 (loss grad eps_hat - eps, variance-reduced); False = Eq. 15 (loss grad eps_hat).
  cfg.sjc_var_red = True
  # NFSD negative prompt; its embedding is the `neg` text embedding (only nfsd uses it).
  cfg.negative_prompt = NFSD_NEGATIVE_PROMPT
  # PDS: steps of its discrete schedule (PDS: 500, t_prev one step before t); t_min / t_max index its fractions.
  cfg.pds_steps = 500
  return cfg


@dataclasses.dataclass(frozen=True)
class Rule:
  """A distillation rule with concrete numbers (the fields of `default_distill_config`). Frozen, hashable."""
  name: str = 'sds'
  guidance_scale: float = 100.0
  cfg_form: str = 'paper'
  weighting: str = 'sds'
  t_min: float = 0.02
  t_max: float = 0.98
  clip: Optional[float] = None  # None: no clamp
  nfsd_t_threshold: int = 200
  sjc_var_red: bool = True
  negative_prompt: str = NFSD_NEGATIVE_PROMPT
  pds_steps: int = 500

  def __post_init__(self):
    check_rule_name(self.name)
    if self.cfg_form not in CFG_FORMS:
      raise ValueError(f'config.distill.cfg_form {self.cfg_form!r} is unknown; use paper or diffusers')
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f'config.distill.weighting {self.weighting!r} is unknown; use sds or uniform')

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> 'Rule':
    """From a `default_distill_config` section (clip 0 or None: no clamp)."""
    return cls(name=cfg.name, guidance_scale=float(cfg.guidance_scale), cfg_form=cfg.cfg_form,
               weighting=cfg.weighting, t_min=float(cfg.t_min), t_max=float(cfg.t_max),
               clip=float(cfg.clip) if cfg.clip else None, nfsd_t_threshold=int(cfg.nfsd_t_threshold),
               sjc_var_red=bool(cfg.sjc_var_red), negative_prompt=cfg.negative_prompt,
               pds_steps=int(cfg.get('pds_steps', 500)))

  @classmethod
  def default(cls, name: str = 'sds', **overrides) -> 'Rule':
    """Rule `name` with its own defaults, then `overrides` (field=value)."""
    cfg = default_distill_config(name)
    return dataclasses.replace(cls.from_config(cfg), **overrides)

  @property
  def needs_negative(self) -> bool:
    """Whether the rule needs the embedding of `negative_prompt` (NFSD's delta_D)."""
    return self.name == 'nfsd'

  @property
  def is_edit(self) -> bool:
    """Whether the rule edits a source scene (DDS, PDS: `edit_rules.edit_step`) rather than generating."""
    return self.name in EDIT_RULES

  @property
  def cfg_batch(self) -> int:
    """UNet evaluations per sample: cond + uncond (+ negative); an edit: both for the target and the source."""
    return 4 if self.is_edit else (3 if self.needs_negative else 2)


def sample_timesteps(rng: jax.Array, batch: int, num_train_timesteps: int, t_min: float = 0.02,
                     t_max: float = 0.98) -> jax.Array:
  """Uniform integer timesteps in [round(t_min T), round(t_max T)] inclusive. Returns int32 [batch].

  For T = 1000 and the SDS defaults this is randint(20, 981), i.e. t in {20, ..., 980} (threestudio/SDF).
  """
  lo = int(round(t_min * num_train_timesteps))
  hi = int(round(t_max * num_train_timesteps))
  if not 0 <= lo <= hi < num_train_timesteps:
    raise ValueError(f'Bad timestep range [{lo}, {hi}] for T = {num_train_timesteps}.')
  return jax.random.randint(rng, (batch,), lo, hi + 1, dtype=jnp.int32)


def guided_eps(eps_cond: jax.Array, eps_uncond: jax.Array, scale: float, form: str = 'paper') -> jax.Array:
  """Classifier-free guided eps [B, ...].

  'paper': (1 + scale) eps_c - scale eps_u;  'diffusers': eps_u + scale (eps_c - eps_u).
  """
  if form == 'paper':
    return eps_cond + scale * (eps_cond - eps_uncond)
  if form == 'diffusers':
    return eps_uncond + scale * (eps_cond - eps_uncond)
  raise ValueError(f'Unknown CFG form {form!r}; expected "paper" or "diffusers".')


def bcast_per_sample(a: jax.Array, like: jax.Array) -> jax.Array:
  """Reshapes a per-sample [B] array to [B, 1, ..., 1] to broadcast against `like` [B, ...]."""
  a = jnp.asarray(a)
  return jnp.reshape(a, a.shape + (1,) * (like.ndim - a.ndim))


def time_weight(abar_t: jax.Array, weighting: str = 'sds') -> jax.Array:
  """w(t) [B]: 'sds' -> 1 - abar_t (= sigma_t^2 of the VP process); 'uniform' -> 1."""
  abar_t = jnp.asarray(abar_t)
  if weighting == 'sds':
    return 1.0 - abar_t
  if weighting == 'uniform':
    return jnp.ones_like(abar_t)
  raise ValueError(f'Unknown weighting {weighting!r}; expected "sds" or "uniform".')


def finish_grad(g: jax.Array, clip: Optional[float], sanitize: bool = True) -> jax.Array:
  """The optional elementwise clamp to [-clip, clip], then (with `sanitize`) nan_to_num. (NaN survives the clamp and
  becomes 0; +-inf becomes +-clip, or +-max float without a clamp.) `distill_step` passes sanitize=False to count
  the non-finite entries first."""
  if clip is not None:
    g = jnp.clip(g, -clip, clip)
  return jnp.nan_to_num(g) if sanitize else g


def sds_grad(eps_cond: jax.Array, eps_uncond: jax.Array, eps: jax.Array, abar_t: jax.Array, scale: float = 100.0,
             form: str = 'paper', weighting: str = 'sds', clip: Optional[float] = None,
             sanitize: bool = True) -> jax.Array:
  """SDS (DreamFusion Eq. 3): g = w(t) (eps_hat - eps). eps_* [B, ...]; abar_t [B]. Returns g [B, ...]."""
  eps_hat = guided_eps(eps_cond, eps_uncond, scale, form)
  w = bcast_per_sample(time_weight(abar_t, weighting), eps_hat)
  return finish_grad(w * (eps_hat - eps), clip, sanitize)


def nfsd_grad(eps_cond: jax.Array, eps_uncond: jax.Array, eps_neg: jax.Array, t: jax.Array, abar_t: jax.Array,
              scale: float = 7.5, t_threshold: int = 200, weighting: str = 'sds', form: str = 'diffusers',
              clip: Optional[float] = None,
             sanitize: bool = True) -> jax.Array:
  """Noise-free score distillation: g = w(t) (delta_D + s delta_C); no injected-noise term.

  delta_C = eps_c - eps_u; delta_D = eps_u where t < t_threshold, else eps_u - eps_neg (eps_neg: the negative
  prompt's prediction). `form='paper'` reads `scale` as omega and uses s = omega + 1. Shapes: eps_* [B, ...]; t,
  abar_t [B]. Returns g [B, ...].
  """
  if form not in ('paper', 'diffusers'):
    raise ValueError(f'Unknown CFG form {form!r}; expected "paper" or "diffusers".')
  s = scale + 1.0 if form == 'paper' else scale
  delta_c = eps_cond - eps_uncond
  small_t = bcast_per_sample(jnp.asarray(t) < t_threshold, eps_uncond)
  delta_d = jnp.where(small_t, eps_uncond, eps_uncond - eps_neg)
  w = bcast_per_sample(time_weight(abar_t, weighting), eps_uncond)
  return finish_grad(w * (delta_d + s * delta_c), clip, sanitize)


def sjc_sigma(abar_t: jax.Array) -> jax.Array:
  """SJC's VE noise level sigma = sqrt((1 - abar) / abar) [B] (dimensionless, per unit of latent)."""
  abar_t = jnp.asarray(abar_t)
  return jnp.sqrt((1.0 - abar_t) / abar_t)


def sjc_grad(eps_cond: jax.Array, eps_uncond: jax.Array, eps: jax.Array, abar_t: jax.Array, scale: float = 100.0,
             var_red: bool = True, form: str = 'diffusers', weighting: str = 'uniform',
             clip: Optional[float] = None, sanitize: bool = True) -> jax.Array:
  """SJC's PAAS gradient, as a loss gradient in the units of the clean latent y (= z). Returns g [B, ...].

  VE picture: z_VE = y + sigma n with sigma = sqrt((1 - abar) / abar) and n = `eps`. The UNet sees
  z_VE / sqrt(1 + sigma^2) = sqrt(abar) y + sqrt(1 - abar) n, i.e. exactly the VP z_t with the same noise, so the
  eps predictions are the ones `distill_step` computes for SDS. The denoiser is D = z_VE - sigma eps_hat (CFG in
  diffusers form, s = 100), and SJC's score estimate is (D - z_VE) / sigma^2 = -eps_hat / sigma.

  SJC back-propagates `-grad` (an *ascent* direction on log p) with
    var_red=True  (Eq. 16): grad = (D - y) / sigma    = n - eps_hat,
    var_red=False (Eq. 15): grad = (D - z_VE) / sigma = -eps_hat,
  i.e. sigma times the score, per unit of y. The returned loss gradient is minus that:
    var_red=True: g = w (eps_hat - eps)  (SDS with uniform weight);  var_red=False: g = w eps_hat.
  We use these simplified forms rather than (D - y) / sigma to avoid cancellation at small sigma. w = 1 by default.
  """
  eps_hat = guided_eps(eps_cond, eps_uncond, scale, form)
  ascent = (eps - eps_hat) if var_red else -eps_hat
  w = bcast_per_sample(time_weight(abar_t, weighting), eps_hat)
  return finish_grad(-w * ascent, clip, sanitize)


def distill_step(rule: Rule, prior: Prior, prior_params: PyTree, z: jax.Array, rng: jax.Array, emb_cond: jax.Array,
                 emb_uncond: jax.Array, emb_neg: Optional[jax.Array] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The prior side of one distillation step: noise z, one UNet call, apply the rule. Returns (g, aux).

  Args:
    rule: the distillation rule (`Rule`).
    prior: a `Prior`; only `predict_eps` and `alphas_cumprod` are used.
    prior_params: the prior's frozen weights.
    z: clean latents [B, h, w, c] from `prior.to_latents` (may be a function of trainable params upstream).
    rng: PRNG key; split into the timestep key and the noise key.
    emb_cond, emb_uncond, emb_neg: text embeddings [B, L, D]; emb_neg is required when `rule.needs_negative`.
  Returns:
    g: the per-sample loss gradient [B, h, w, c] (constant w.r.t. z and prior_params: use `surrogate_loss`).
    aux: 't' [B] int32, 'abar_t' [B], 'noise' (the eps drawn) [B, h, w, c], 'g_abs_mean' scalar (mean |g|),
      'g_norm' [B] (per-sample L2 norm of g), 'nonfinite_eps' scalar (non-finite entries in the UNet output),
      'nonfinite_g' scalar (non-finite entries of g before they were zeroed).
  The UNet sees `stop_gradient(z_t)` and `stop_gradient(prior_params)`, so differentiating anything built from g
  never differentiates the UNet: its backward pass is never formed.
  """
  if rule.is_edit:
    raise ValueError(f'rule {rule.name!r} edits a source scene: use edit_rules.edit_step (python -m dreamjax.edit)')
  batch = z.shape[0]
  abar_all = jnp.asarray(prior.alphas_cumprod, dtype=jnp.float32)
  k_t, k_eps = jax.random.split(rng)
  t = sample_timesteps(k_t, batch, abar_all.shape[0], rule.t_min, rule.t_max)
  abar_t = abar_all[t]
  compute_dtype = jnp.promote_types(z.dtype, jnp.float32)
  noise = jax.random.normal(k_eps, z.shape, compute_dtype)
  a = bcast_per_sample(abar_t, z)
  z_t = jnp.sqrt(a) * z.astype(compute_dtype) + jnp.sqrt(1.0 - a) * noise
  z_t = jax.lax.stop_gradient(z_t)

  embs = [emb_cond, emb_uncond]
  if rule.needs_negative:
    if emb_neg is None:
      raise ValueError(f'rule {rule.name!r} needs emb_neg (the embedding of rule.negative_prompt).')
    embs.append(emb_neg)
  n = len(embs)
  eps_all = prior.predict_eps(jax.lax.stop_gradient(prior_params), jnp.concatenate([z_t] * n, axis=0),
                              jnp.concatenate([t] * n, axis=0), jnp.concatenate(embs, axis=0))
  eps_all = jax.lax.stop_gradient(eps_all).astype(compute_dtype)
  eps_parts = jnp.split(eps_all, n, axis=0)

  common = dict(scale=rule.guidance_scale, form=rule.cfg_form, weighting=rule.weighting, clip=rule.clip,
                sanitize=False)
  if rule.name == 'sds':
    g = sds_grad(eps_parts[0], eps_parts[1], noise, abar_t, **common)
  elif rule.name == 'nfsd':
    g = nfsd_grad(eps_parts[0], eps_parts[1], eps_parts[2], t, abar_t, t_threshold=rule.nfsd_t_threshold, **common)
  else:  # 'sjc' (Rule rejects anything else)
    g = sjc_grad(eps_parts[0], eps_parts[1], noise, abar_t, var_red=rule.sjc_var_red, **common)
  nonfinite_g = jnp.sum(~jnp.isfinite(g))  # counted before they are zeroed (a NaN guidance scale shows here)
  g = jnp.nan_to_num(g).astype(z.dtype)

  aux = {
      't': t,
      'abar_t': abar_t,
      'noise': noise,
      'g_abs_mean': jnp.mean(jnp.abs(g)),
      'g_norm': jnp.sqrt(jnp.sum(jnp.square(g.reshape(batch, -1)), axis=-1)),
      'nonfinite_eps': jnp.sum(~jnp.isfinite(eps_all)),
      'nonfinite_g': nonfinite_g,
  }
  if rule.name == 'sjc':
    aux['sigma'] = sjc_sigma(abar_t)
  return g, aux


def surrogate_loss(z: jax.Array, g: jax.Array) -> jax.Array:
  """0.5 * sum((z - stop_gradient(z - g))^2) / B, a scalar whose gradient w.r.t. z [B, ...] is exactly g / B.

  (Up to the float rounding of z - (z - g).) Its value, 0.5 |g|^2 / B, is not a meaningful loss; only its gradient is.
  """
  target = jax.lax.stop_gradient(z - g)
  return 0.5 * jnp.sum(jnp.square(z - target)) / z.shape[0]
