"""Tests of dreamjax.distill (SDS, NFSD, SJC), PixelPrior and GaussianPrior against independent references.

Run: .venv/bin/python -m pytest -q tests/test_distill.py
"""

import functools
import re

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import dreamfusion
from dreamjax import cli
from dreamjax import distill
from dreamjax.priors.base import Prior, scaled_linear_alphas_cumprod
from dreamjax.priors.gaussian import GaussianPrior
from dreamjax.priors.pixel import PixelPrior

ABAR = scaled_linear_alphas_cumprod()  # float32 [1000], SD's schedule.


def _key(seed):
  """A typed 'rbg' PRNG key: compiles about twice as fast as threefry on CPU; distill.py is agnostic to the impl.

  (The timestep-sampling test uses the default threefry keys.)"""
  return jax.random.key(seed, impl='rbg')

H = W = 8
C = 3


# ----------------------------------------------------------------------------------------------------------------------
# A fake eps model with a closed form: eps = z_t @ Wm + mean_L(emb) @ P + (t / T) c, and its float64 NumPy twin.


class LinearPrior:
  """A `Prior` whose eps prediction is a fixed linear map of (z_t, emb, t); used to test the rules exactly."""

  def __init__(self, seed=0, emb_dim=5):
    r = np.random.default_rng(seed)
    self.params = {'Wm': jnp.asarray(r.normal(size=(C, C)) * 0.5, jnp.float32),
                   'P': jnp.asarray(r.normal(size=(emb_dim, C)), jnp.float32),
                   'c': jnp.asarray(r.normal(size=(C,)), jnp.float32)}
    self.alphas_cumprod = ABAR

  def encode_text(self, prompts):
    raise NotImplementedError

  def to_latents(self, params, images, rng):
    return 2.0 * images - 1.0

  def predict_eps(self, params, z_t, t, emb):
    out = jnp.einsum('bhwc,cd->bhwd', z_t, params['Wm'])
    out = out + jnp.einsum('bld,dc->bc', emb, params['P'])[:, None, None, :] / emb.shape[1]
    return out + (t.astype(jnp.float32) / 1000.0)[:, None, None, None] * params['c']


def np_linear_eps(params, z_t, t, emb):
  """Float64 NumPy version of LinearPrior.predict_eps (written out with explicit loops over the batch)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  out = np.empty(z_t.shape)
  for b in range(z_t.shape[0]):
    out[b] = z_t[b] @ p['Wm'] + np.asarray(emb[b], np.float64).mean(axis=0) @ p['P'] + t[b] / 1000.0 * p['c']
  return out


def np_rule_grad(name, z, t, noise, e_c, e_u, e_n, scale, form, weighting, var_red=True, thresh=200):
  """Float64 hand-written per-sample loss gradients g (before 1/B) for the three rules, one sample at a time."""
  g = np.empty(z.shape)
  for b in range(z.shape[0]):
    ab = float(np.float64(ABAR[t[b]]))
    w = 1.0 - ab if weighting == 'sds' else 1.0
    if name == 'sds':
      om = scale if form == 'paper' else scale - 1.0  # paper omega = diffusers s - 1
      eps_hat = (1.0 + om) * e_c[b] - om * e_u[b]
      g[b] = w * (eps_hat - noise[b])
    elif name == 'nfsd':
      delta_c = e_c[b] - e_u[b]
      delta_d = e_u[b] if t[b] < thresh else e_u[b] - e_n[b]
      s = scale + 1.0 if form == 'paper' else scale  # paper omega -> diffusers s = omega + 1
      g[b] = w * (delta_d + s * delta_c)
    else:  # sjc, computed in the VE picture: y = z, z_ve = y + sigma n, D = z_ve - sigma eps_hat.
      sigma = np.sqrt((1.0 - ab) / ab)
      eps_hat = e_u[b] + scale * (e_c[b] - e_u[b])
      y = z[b]
      z_ve = y + sigma * noise[b]
      d = z_ve - sigma * eps_hat
      ascent = (d - y) / sigma if var_red else (d - z_ve) / sigma
      g[b] = -w * ascent  # SJC backpropagates -ascent; the loss gradient is -ascent.
  return g


def _paper_config():
  return dreamfusion.get_config()


class RuleGradientTest(chex.TestCase):
  """The gradient delivered to z by surrogate_loss(distill_step(...)) equals the float64 formula / B."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ('sds_paper', 'sds', {}),
      ('nfsd', 'nfsd', {}),
      ('sjc_var_red', 'sjc', {}),
  )
  def test_grad_matches_float64_reference(self, name, overrides):
    """grad_z surrogate = g_ref / B for a linear fake eps model; g_ref from the formulas in float64 NumPy."""
    self._check_rule(name, overrides)

  @chex.variants(with_jit=True)
  @parameterized.named_parameters(
      ('sds_diffusers_uniform', 'sds', {'cfg_form': 'diffusers', 'weighting': 'uniform', 'guidance_scale': 7.5}),
      ('sjc_no_var_red', 'sjc', {'sjc_var_red': False}),
      ('nfsd_paper_form', 'nfsd', {'cfg_form': 'paper', 'guidance_scale': 6.5}),
  )
  def test_grad_matches_float64_reference_options(self, name, overrides):
    """As above for the non-default CFG form, weighting and SJC Eq. 15 (jit only)."""
    self._check_rule(name, overrides)

  def _check_rule(self, name, overrides):
    prior = LinearPrior()
    rule = distill.Rule.default(name, **overrides)
    b = 16
    r = np.random.default_rng(1)
    z = jnp.asarray(r.normal(size=(b, 4, 4, C)), jnp.float32)
    ec, eu, en = (jnp.asarray(r.normal(size=(b, 6, 5)), jnp.float32) for _ in range(3))

    def grad_and_aux(z, rng, ec, eu, en):
      def loss(z):
        g, aux = distill.distill_step(rule, prior, prior.params, z, rng, ec, eu, en if name == 'nfsd' else None)
        return distill.surrogate_loss(z, g), aux
      return jax.grad(loss, has_aux=True)(z)

    grad, aux = self.variant(grad_and_aux)(z, _key(3), ec, eu, en)
    t = np.asarray(aux['t'])
    noise = np.asarray(aux['noise'], np.float64)
    lo, hi = round(rule.t_min * 1000), round(rule.t_max * 1000)
    self.assertTrue(np.all((t >= lo) & (t <= hi)))
    np.testing.assert_array_equal(np.asarray(aux['abar_t']), ABAR[t])
    z64 = np.asarray(z, np.float64)
    ab = ABAR[t].astype(np.float64)[:, None, None, None]
    # Reference UNet inputs: VP noising for sds/nfsd; for sjc the VE point scaled by 1/sqrt(1+sigma^2).
    if name == 'sjc':
      sigma = np.sqrt((1.0 - ab) / ab)
      z_in = (z64 + sigma * noise) / np.sqrt(1.0 + sigma ** 2)
    else:
      z_in = np.sqrt(ab) * z64 + np.sqrt(1.0 - ab) * noise
    e_c, e_u, e_n = (np_linear_eps(prior.params, z_in, t, e) for e in (ec, eu, en))
    g_ref = np_rule_grad(name, z64, t, noise, e_c, e_u, e_n, rule.guidance_scale, rule.cfg_form, rule.weighting,
                         var_red=rule.sjc_var_red, thresh=rule.nfsd_t_threshold)
    scale = np.abs(g_ref).max()
    self.assertGreater(scale, 0.1)
    np.testing.assert_allclose(np.asarray(grad, np.float64), g_ref / b, rtol=1e-4, atol=2e-6 * scale)
    np.testing.assert_allclose(float(aux['g_abs_mean']), np.abs(g_ref).mean(), rtol=1e-4)
    if name == 'nfsd':  # Both NFSD branches were exercised by this draw.
      self.assertTrue(np.any(t < 200) and np.any(t >= 200))


class RulePiecesTest(chex.TestCase):
  """Unit properties of the pure rule functions."""

  def test_cfg_forms(self):
    """guided_eps: paper form with omega equals diffusers form with s = omega + 1; both equal the NumPy formulas."""
    r = np.random.default_rng(0)
    ec, eu = r.normal(size=(2, 3, 4)), r.normal(size=(2, 3, 4))
    for om in (0.0, 1.0, 7.5, 100.0):
      paper = np.asarray(distill.guided_eps(jnp.asarray(ec), jnp.asarray(eu), om, 'paper'))
      diff = np.asarray(distill.guided_eps(jnp.asarray(ec), jnp.asarray(eu), om + 1.0, 'diffusers'))
      np.testing.assert_allclose(paper, (1 + om) * ec - om * eu, rtol=1e-5, atol=1e-4)
      np.testing.assert_allclose(diff, eu + (om + 1) * (ec - eu), rtol=1e-5, atol=1e-4)
      np.testing.assert_allclose(paper, diff, rtol=1e-5, atol=1e-4)
    with self.assertRaises(ValueError):
      distill.guided_eps(jnp.asarray(ec), jnp.asarray(eu), 1.0, 'other')

  def test_timestep_range_and_uniformity(self):
    """t ~ randint over exactly [20, 980] for T=1000 (SDS) and [10, 970] (SJC defaults); chi-square uniform."""
    n = 480_500  # 500 per value on average.
    t = np.asarray(distill.sample_timesteps(jax.random.PRNGKey(0), n, 1000))
    self.assertEqual(t.dtype, np.int32)
    self.assertEqual((t.min(), t.max()), (20, 980))
    counts = np.bincount(t - 20, minlength=961)
    self.assertEqual(len(counts), 961)
    chi2 = np.sum((counts - n / 961) ** 2 / (n / 961))
    self.assertLess(abs(chi2 - 960) / np.sqrt(2 * 960), 5.0)  # chi-square with 960 dof within 5 sd.
    t = np.asarray(distill.sample_timesteps(jax.random.PRNGKey(1), 100_000, 1000, 0.01, 0.97))
    self.assertEqual((t.min(), t.max()), (10, 970))

  def test_nfsd_branch_boundary(self):
    """nfsd_grad uses delta_D = eps_u for t = 199 and eps_u - eps_neg for t = 200 (NumPy reference)."""
    r = np.random.default_rng(2)
    ec, eu, en = (r.normal(size=(2, 2, 2, 3)) for _ in range(3))
    t = np.array([199, 200])
    ab = ABAR[t].astype(np.float64)
    g = np.asarray(distill.nfsd_grad(*(jnp.asarray(x, jnp.float32) for x in (ec, eu, en)), jnp.asarray(t),
                                     jnp.asarray(ab, jnp.float32), scale=7.5), np.float64)
    ref0 = (1 - ab[0]) * (eu[0] + 7.5 * (ec[0] - eu[0]))
    ref1 = (1 - ab[1]) * (eu[1] - en[1] + 7.5 * (ec[1] - eu[1]))
    np.testing.assert_allclose(g[0], ref0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g[1], ref1, rtol=1e-5, atol=1e-5)

  def test_nan_to_num_and_clip(self):
    """All rules map NaN to 0 and clamp to [-c, c] when clip=c; SDS with clip equals np.clip of the formula."""
    ec = jnp.array([[1.0, jnp.nan, 3.0, -4.0]])
    eu = jnp.zeros((1, 4))
    eps = jnp.zeros((1, 4))
    ab = jnp.array([0.5])
    g = np.asarray(distill.sds_grad(ec, eu, eps, ab, scale=1.0, clip=2.5))
    np.testing.assert_allclose(g, [[1.0, 0.0, 2.5, -2.5]])  # 0.5 * (2 ec) clipped.
    g = np.asarray(distill.nfsd_grad(ec, eu, eu, jnp.array([300]), ab, scale=1.0, clip=1.0))
    np.testing.assert_allclose(g, [[0.5, 0.0, 1.0, -1.0]])
    g = np.asarray(distill.sjc_grad(ec, eu, eps, ab, scale=1.0, clip=2.0))
    np.testing.assert_allclose(g, [[1.0, 0.0, 2.0, -2.0]])

  def test_surrogate_gradient(self):
    """jax.grad of surrogate_loss(z, g) w.r.t. z is g / B (g treated as a constant)."""
    r = np.random.default_rng(3)
    z, g = (jnp.asarray(r.normal(size=(4, 3, 3, 2)), jnp.float32) for _ in range(2))
    grad = jax.grad(distill.surrogate_loss)(z, g)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(g) / 4, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(distill.surrogate_loss, argnums=1)(z, g)), 0.0)

  def test_config_defaults_follow_rule(self):
    """Each rule's config section carries the rule's paper defaults as concrete numbers; on a command line,
    --config.distill.name=X brings X's defaults while explicit --config.distill.* values are kept; an unknown rule
    is a ValueError."""
    self.assertEqual(distill.Rule.from_config(distill.default_distill_config()).guidance_scale, 100.0)
    res = distill.Rule.from_config(cli.resolve_overrides(_paper_config(), {'distill.name': 'nfsd'}).distill)
    self.assertEqual((res.guidance_scale, res.t_min, res.t_max), (7.5, 0.02, 0.98))
    res = distill.Rule.from_config(cli.resolve_overrides(_paper_config(), {'distill.name': 'sjc'}).distill)
    self.assertEqual((res.guidance_scale, res.cfg_form, res.weighting, res.t_min, res.t_max),
                     (100.0, 'diffusers', 'uniform', 0.01, 0.97))
    c = _paper_config()
    c.distill.name, c.distill.guidance_scale = 'sjc', 50.0
    c = cli.resolve_overrides(c, {'distill.name': 'sjc', 'distill.guidance_scale': 50.0})
    self.assertEqual(distill.Rule.from_config(c.distill).guidance_scale, 50.0)
    self.assertIn('low-resolution, gloomy', c.distill.negative_prompt)
    with self.assertRaises(ValueError):
      distill.Rule.default('vsd')


# ----------------------------------------------------------------------------------------------------------------------
# No UNet backward: count convolutions.


class SmallConvEps(nn.Module):
  """A 2-convolution eps model conditioned on t and emb (3x3 convs, so XLA keeps them as convolutions)."""

  @nn.compact
  def __call__(self, x, t, emb):
    h = nn.Conv(8, (3, 3))(x)
    h = h + nn.Dense(8)(emb.mean(axis=1))[:, None, None, :] + (t.astype(jnp.float32) / 1000.0)[:, None, None, None]
    return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


def _count_convs(fn, *args):
  """(convolutions in the compiled HLO text, conv_general_dilated in the jaxpr) of jax.jit(fn)(*args)."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  jaxpr = str(jax.make_jaxpr(fn)(*args))
  return len(re.findall(r'\bconvolution\(', hlo)), jaxpr.count('conv_general_dilated')


class NoUnetBackwardTest(chex.TestCase):
  """distill_step + surrogate_loss run the prior's forward only: no backward through the UNet is ever built."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = SmallConvEps()
    cls.b = 2
    cls.emb_c = jnp.ones((cls.b, 4, 5))
    cls.emb_u = jnp.zeros((cls.b, 4, 5))
    params = jax.jit(cls.model.init)(_key(0), jnp.zeros((1, H, W, C)), jnp.zeros((1,), jnp.int32),
                                     cls.emb_c[:1])['params']
    cls.prior = PixelPrior(cls.model, params, ABAR, H)
    cls.cfg = distill.Rule.default('sds')
    # A tiny generator without convolutions: theta -> sigmoid(Dense(code)) -> [B, 6, 6, 3], resized to 8x8 by the prior.
    cls.gen = nn.Dense(6 * 6 * C)
    cls.code = jnp.ones((cls.b, 7))
    cls.gen_params = jax.jit(cls.gen.init)(_key(1), cls.code)['params']
    cls.rng = _key(2)

  def _loss_z(self, z, rng):
    g, _ = distill.distill_step(self.cfg, self.prior, self.prior.params, z, rng, self.emb_c, self.emb_u)
    return distill.surrogate_loss(z, g)

  def _loss_gen(self, gen_params, rng):
    img = jax.nn.sigmoid(self.gen.apply({'params': gen_params}, self.code)).reshape(self.b, 6, 6, C)
    return self._loss_z(self.prior.to_latents(self.prior.params, img, rng), rng)

  def _loss_prior_params(self, prior_params, z, rng):
    g, _ = distill.distill_step(self.cfg, self.prior, prior_params, z, rng, self.emb_c, self.emb_u)
    return distill.surrogate_loss(z, g)

  def test_conv_counts(self):
    """Convolutions in grad programs (w.r.t. z, generator params) equal the forward's; un-stopped has more."""
    z = jnp.full((self.b, H, W, C), 0.1)
    fwd = _count_convs(lambda z: self.prior.predict_eps(self.prior.params, z, jnp.zeros((2 * self.b,), jnp.int32),
                                                        jnp.concatenate([self.emb_c, self.emb_u])),
                       jnp.concatenate([z, z]))
    self.assertEqual(fwd, (2, 2))
    self.assertEqual(_count_convs(jax.grad(self._loss_z), z, self.rng), fwd)
    self.assertEqual(_count_convs(jax.grad(self._loss_gen), self.gen_params, self.rng), fwd)
    # W.r.t. the prior's own params nothing is formed (XLA even drops the now-unused forward).
    hlo_count, _ = _count_convs(jax.grad(self._loss_prior_params), self.prior.params, z, self.rng)
    self.assertLessEqual(hlo_count, fwd[0])
    # The same code with every stop_gradient removed differentiates the UNet, and the count sees it.
    with absltest.mock.patch.object(jax.lax, 'stop_gradient', lambda x: x):
      unstopped = _count_convs(jax.grad(self._loss_z), z, self.rng)
    self.assertGreater(unstopped[0], fwd[0])
    self.assertGreater(unstopped[1], fwd[1])

  def test_g_is_constant_wrt_z_and_prior_params(self):
    """g from distill_step has zero derivative w.r.t. z and prior params, even in a loss without the surrogate's stop.

    d/dz sum(g * z) must equal g exactly (the SDF `(grad * latents).sum()` form), and d/dparams sum(g) must be 0.
    """
    z = jax.random.normal(_key(4), (self.b, H, W, C))

    def dot_loss(z):
      g, _ = distill.distill_step(self.cfg, self.prior, self.prior.params, z, self.rng, self.emb_c, self.emb_u)
      return jnp.sum(g * z)

    g, _ = jax.jit(lambda z: distill.distill_step(self.cfg, self.prior, self.prior.params, z, self.rng, self.emb_c,
                                                  self.emb_u))(z)
    self.assertGreater(float(jnp.abs(g).max()), 1e-3)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(dot_loss))(z)), np.asarray(g), rtol=1e-6, atol=1e-7)

    def param_loss(p):
      g, _ = distill.distill_step(self.cfg, self.prior, p, z, self.rng, self.emb_c, self.emb_u)
      return jnp.sum(g)

    grads = jax.jit(jax.grad(param_loss))(self.prior.params)
    for leaf in jax.tree_util.tree_leaves(grads):
      np.testing.assert_array_equal(np.asarray(leaf), 0.0)


# ----------------------------------------------------------------------------------------------------------------------
# PixelPrior.


@flax.struct.dataclass
class _Out:
  sample: jnp.ndarray


class NCHWModel(nn.Module):
  """Stands in for diffusers' FlaxUNet2DConditionModel: NCHW input, output wrapped in a `.sample` dataclass."""

  @nn.compact
  def __call__(self, x, t, emb):
    assert x.shape[1] == C, x.shape
    scale = self.param('scale', nn.initializers.ones, (C,))
    return _Out(sample=x * scale[None, :, None, None] + emb.mean(axis=(1, 2))[:, None, None, None])


def _np_bilinear_matrix(n_out, n_in):
  """1-D bilinear interpolation matrix [n_out, n_in]: half-pixel centres, edge-clamped (torch align_corners=False)."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
    lo = int(np.floor(src))
    hi = min(lo + 1, n_in - 1)
    m[i, lo] += 1.0 - (src - lo)
    m[i, hi] += src - lo
  return m


class PixelPriorTest(chex.TestCase):
  """PixelPrior implements the Prior protocol; resize, [-1, 1] mapping and prediction-type conversions are right."""

  def test_protocol_and_to_latents(self):
    """Upsampling 4->8 equals 2 (M X M^T) - 1 with a NumPy bilinear M; its VJP equals 2 M^T R M; same size is 2x-1."""
    prior = PixelPrior(NCHWModel(), {'scale': jnp.ones((C,))}, ABAR, H, encode_text=lambda p: np.ones((len(p), 2, 3)),
                       channels_first=True)
    self.assertIsInstance(prior, Prior)
    self.assertEqual(prior.encode_text(['a', 'b']).shape, (2, 2, 3))
    r = np.random.default_rng(0)
    x = r.uniform(size=(2, 4, 4, C))
    m = _np_bilinear_matrix(8, 4)
    z = np.asarray(prior.to_latents(None, jnp.asarray(x, jnp.float32), None), np.float64)
    ref = 2.0 * np.einsum('ih,bhwc,jw->bijc', m, x, m) - 1.0
    np.testing.assert_allclose(z, ref, atol=1e-5)
    rr = r.normal(size=(2, 8, 8, C))
    vjp = jax.grad(lambda x: jnp.sum(prior.to_latents(None, x, None) * rr))(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(vjp), 2.0 * np.einsum('ih,bijc,jw->bhwc', m, rr, m), atol=1e-5)
    x8 = r.uniform(size=(2, 8, 8, C)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(prior.to_latents(None, jnp.asarray(x8), None)), 2 * x8 - 1)

  def test_prediction_types_and_channels_first(self):
    """NCHW model + `.sample` unwrap give NHWC outputs; v and x0 outputs convert to eps by the float64 formulas."""
    params = {'scale': jnp.asarray([0.5, -1.0, 2.0])}
    r = np.random.default_rng(1)
    z_t = r.normal(size=(2, H, W, C))
    emb = r.normal(size=(2, 3, 4))
    t = np.array([30, 700])
    out = z_t * np.asarray(params['scale'])[None, None, None, :] + emb.mean(axis=(1, 2))[:, None, None, None]
    a = np.sqrt(ABAR[t].astype(np.float64))[:, None, None, None]
    s = np.sqrt(1.0 - ABAR[t].astype(np.float64))[:, None, None, None]
    refs = {'epsilon': out, 'v_prediction': a * out + s * z_t, 'sample': (z_t - a * out) / s}
    for ptype, ref in refs.items():
      prior = PixelPrior(NCHWModel(), params, ABAR, H, prediction_type=ptype, channels_first=True)
      eps = prior.predict_eps(params, jnp.asarray(z_t, jnp.float32), jnp.asarray(t), jnp.asarray(emb, jnp.float32))
      self.assertEqual(eps.shape, z_t.shape)
      np.testing.assert_allclose(np.asarray(eps), ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# The analytic Gaussian prior and what SDS converges to on it.

_YY, _XX = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing='ij')
MU = np.stack([0.6 * np.sin(2 * _XX), 0.5 * _YY, 0.4 * _XX * _YY], -1).astype(np.float32)  # [H, W, C] in [-1, 1]
DELTA = np.stack([0.3 * np.cos(3 * _YY), -0.2 * np.ones_like(_XX), 0.25 * _XX], -1).astype(np.float32)


# predict_eps of a GaussianPrior depends only on the embeddings and the schedule, so one prior object serves every
# component below (components are passed as embeddings built with GaussianPrior.embed).
GAUSS = GaussianPrior({'': (MU, 1.0)}, ABAR)


@functools.partial(jax.jit, static_argnames=('omega', 'steps', 'batch'))
def _optimise_image(emb_cond, emb_uncond, lr, omega, steps=400, batch=4, seed=0):
  """SGD (lr decayed linearly to 2%) of SDS (paper CFG omega) on a free image x [H, W, C] in [0, 1] rendered `batch`
  times, starting from gray; emb_* [H W, 2 C]. Returns z = 2x - 1 [H, W, C]."""
  cfg = distill.Rule.default('sds', guidance_scale=float(omega))
  ec = jnp.tile(emb_cond[None], (batch, 1, 1))
  eu = jnp.tile(emb_uncond[None], (batch, 1, 1))
  x0 = jnp.full((1, H, W, C), 0.5)
  opt = optax.sgd(optax.linear_schedule(lr, 0.02 * lr, steps))

  def step(carry, rng):
    x, state = carry

    def loss(x):
      z = GAUSS.to_latents(GAUSS.params, jnp.tile(x, (batch, 1, 1, 1)), None)
      g, _ = distill.distill_step(cfg, GAUSS, GAUSS.params, z, rng, ec, eu)
      return distill.surrogate_loss(z, g)

    updates, state = opt.update(jax.grad(loss)(x), state, x)
    return (optax.apply_updates(x, updates), state), None

  rngs = jax.random.split(_key(seed), steps)
  (x, _), _ = jax.lax.scan(step, (x0, opt.init(x0)), rngs)
  return 2.0 * x[0] - 1.0


class GaussianPriorTest(chex.TestCase):
  """GaussianPrior's eps is E[eps | z_t]; SDS on it is mode seeking, with the predicted CFG targets."""

  def test_eps_is_posterior_mean_monte_carlo(self):
    """predict_eps matches the least-squares regression of eps on z_t from 400k samples x ~ N(mu, s^2), per t.

    Agreement is required within 5 standard errors of the regression's prediction."""
    prior = GaussianPrior({'p': (np.full((1, 1, 1), 0.3), 0.2)}, ABAR)
    r = np.random.default_rng(0)
    n = 400_000
    for t in (50, 500, 900):
      ab = float(ABAR[t])
      x = 0.3 + np.sqrt(0.2) * r.normal(size=n)
      eps = r.normal(size=n)
      zt = np.sqrt(ab) * x + np.sqrt(1 - ab) * eps
      slope, icpt = np.polyfit(zt, eps, 1)
      resid_var = np.var(eps - slope * zt - icpt)
      probe = np.array([-1.0, 0.0, 1.5])
      se = np.sqrt(resid_var * (1.0 / n + (probe - zt.mean()) ** 2 / (n * zt.var())))  # regression prediction s.e.
      got = prior.predict_eps(prior.params, jnp.asarray(probe, jnp.float32).reshape(3, 1, 1, 1),
                              jnp.full((3,), t), prior.encode_text(['p'] * 3))
      self.assertLess(np.max(np.abs(np.asarray(got).ravel() - (slope * probe + icpt)) / se), 5.0)

  def test_sds_converges_to_mode(self):
    """SDS without CFG effect (cond = uncond) drives a free image to the mode mu: mean |z - mu| < 0.05 (a sample
    from N(mu, 0.25) would be ~0.4 away, the gray start 0.3)."""
    emb = GaussianPrior.embed(MU, 0.25)
    z = np.asarray(_optimise_image(emb, emb, 1.0, omega=100.0))  # cond = uncond: CFG is the identity.
    self.assertLess(np.abs(z - MU).mean(), 0.05)

  def test_sds_cfg_equal_variances(self):
    """Equal variances: guided eps is the exact eps of N((1+w) mu_c - w mu_u, s^2), so SDS lands on that mean.

    With w = 100 and mu_u = mu_c - DELTA / 100 the target is mu_c + DELTA (mean |DELTA| ~ 0.2, so the test can fail).
    """
    z = np.asarray(_optimise_image(GaussianPrior.embed(MU, 0.25), GaussianPrior.embed(MU - DELTA / 100.0, 0.25), 1.0,
                                   omega=100.0))
    self.assertLess(np.abs(z - (MU + DELTA)).mean(), 0.05)

  def test_sds_cfg_unequal_variances(self):
    """Sharp cond N(mu, 0.05), broad uncond N(0, 0.5), omega = 3: SDS's fixed point is an over-saturated mu.

    E[g | t] = w a [(1+om) k_c (z - mu) - om k_u z] with k = sqrt(1-abar) / (abar s^2 + 1 - abar); SGD's mean iterate
    solves E_t[E[g | t]] = 0, i.e. z* = mu sum_t w a (1+om) k_c / sum_t w a ((1+om) k_c - om k_u) over t in [20, 980].
    """
    sc, su, om = 0.05, 0.5, 3.0
    ab = ABAR[20:981].astype(np.float64)
    a, sig = np.sqrt(ab), np.sqrt(1.0 - ab)
    kc, ku = sig / (ab * sc + sig ** 2), sig / (ab * su + sig ** 2)
    gain = np.sum((1 - ab) * a * (1 + om) * kc) / np.sum((1 - ab) * a * ((1 + om) * kc - om * ku))
    self.assertGreater(gain, 1.5)  # ~2.24: the target is far from mu itself.
    z = np.asarray(_optimise_image(GaussianPrior.embed(MU, sc), GaussianPrior.embed(np.zeros_like(MU), su), 0.2,
                                   omega=om))
    self.assertLess(np.abs(z - gain * MU).mean(), 0.05)

  def test_sjc_step_moves_toward_mean(self):
    """One gradient-descent step with SJC (both variants) on the Gaussian prior reduces mean |z - mu|."""
    b = 4
    emb = jnp.tile(GaussianPrior.embed(MU, 0.1)[None], (b, 1, 1))
    x0 = jnp.asarray(np.clip((MU + 1) / 2 + 0.35 * np.sign(DELTA), 0, 1)[None].repeat(b, 0), jnp.float32)

    @jax.jit
    def one_step(x):
      out = []
      for var_red in (True, False):
        cfg = distill.Rule.default('sjc', sjc_var_red=var_red)

        def loss(x):
          z = GAUSS.to_latents(GAUSS.params, x, None)
          g, _ = distill.distill_step(cfg, GAUSS, GAUSS.params, z, _key(5), emb, emb)
          return distill.surrogate_loss(z, g)

        out.append(x - 0.05 * jax.grad(loss)(x))
      return out

    d0 = np.abs(2 * np.asarray(x0) - 1 - MU).mean()
    for var_red, x1 in zip((True, False), one_step(x0)):
      d1 = np.abs(2 * np.asarray(x1) - 1 - MU).mean()
      self.assertLess(d1, d0 - 0.005, msg=f'var_red={var_red}: {d0} -> {d1}')


if __name__ == '__main__':
  absltest.main()
