"""Tests of dreamjax.nerf.encoding: the integrated positional encoding against a float64 Monte Carlo estimate, the
and the plain positional encoding against NumPy.

Run: .venv/bin/python -m pytest -q tests/test_encoding.py
"""

import functools

from absl.testing import absltest
import chex
import jax.numpy as jnp
import numpy as np

from dreamjax.nerf import encoding


@functools.lru_cache(maxsize=None)
def _mc_sin_cos(mean, var, num_freqs, num_samples, seed):
  """Float64 Monte Carlo estimates of E[sin(2^l x_d)], E[cos(2^l x_d)] for x ~ N(mean, var I), and their standard
  errors. mean: tuple of 3; returns (sin_est [L, 3], cos_est [L, 3], sin_se [L, 3], cos_se [L, 3])."""
  rng = np.random.default_rng(seed)
  mean = np.asarray(mean)
  x = mean[None, :] + np.sqrt(var) * rng.standard_normal((num_samples, 3))  # [S, 3]
  arg = x[:, None, :] * (2.0 ** np.arange(num_freqs))[None, :, None]  # [S, L, 3]
  s, c = np.sin(arg), np.cos(arg)
  se = lambda v: v.std(axis=0, ddof=1) / np.sqrt(num_samples)
  return s.mean(axis=0), c.mean(axis=0), se(s), se(c)


class IntegratedPosEncTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_monte_carlo(self):
    """IPE features equal E[sin(2^l x)], E[cos(2^l x)] for x ~ N(mean, var I) within 5 Monte Carlo standard errors
    (float64 NumPy, 200k samples), for small and large variances, with the layout (sin: freq-major then dim; cos)."""
    num_freqs = 6
    means = np.array([[0.3, -0.7, 1.1], [-1.2, 0.05, 0.4]])
    for var in (2e-3, 5e-2, 0.3):
      got = np.asarray(self.variant(encoding.integrated_pos_enc, static_argnums=2)(
          jnp.asarray(means, jnp.float32), jnp.float32(var), num_freqs), np.float64)
      chex.assert_shape(got, (2, 2 * 3 * num_freqs))
      for r in range(2):
        s, c, s_se, c_se = _mc_sin_cos(tuple(means[r]), var, num_freqs, 200_000, seed=r)
        got_s = got[r, :3 * num_freqs].reshape(num_freqs, 3)
        got_c = got[r, 3 * num_freqs:].reshape(num_freqs, 3)
        np.testing.assert_array_less(np.abs(got_s - s), 5 * s_se + 1e-5)
        np.testing.assert_array_less(np.abs(got_c - c), 5 * c_se + 1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_per_point_variance_broadcast(self):
    """A per-point variance [N] gives each point the features of its own Gaussian: row n equals the scalar-variance
    result for var[n] (closed form sin(2^l mu) exp(-4^l var / 2) in float64)."""
    mean = np.array([[0.2, 0.4, -0.6], [1.0, -0.3, 0.7], [-0.5, 0.9, 0.1]])
    var = np.array([0.0, 1e-2, 0.1])
    got = np.asarray(self.variant(encoding.integrated_pos_enc, static_argnums=2)(
        jnp.asarray(mean, jnp.float32), jnp.asarray(var, jnp.float32), 4))
    want = np.zeros((3, 2 * 3 * 4))
    for n in range(3):
      for l in range(4):
        for d in range(3):
          damp = np.exp(-0.5 * 4.0 ** l * var[n])
          want[n, 3 * l + d] = np.sin(2.0 ** l * mean[n, d]) * damp
          want[n, 12 + 3 * l + d] = np.cos(2.0 ** l * mean[n, d]) * damp
    np.testing.assert_allclose(got, want, atol=2e-6)

  def test_zero_variance_is_pos_enc(self):
    """With var = 0 the IPE is the plain sin/cos encoding (no input passthrough) of the mean."""
    x = jnp.asarray(np.random.default_rng(1).uniform(-1.4, 1.4, (5, 7, 3)), jnp.float32)
    np.testing.assert_allclose(encoding.integrated_pos_enc(x, 0.0, 8),
                               encoding.pos_enc(x, 8, include_input=False), atol=1e-6)


class PosEncTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_values_and_shape(self):
    """pos_enc([..., d], L) = [x, sin(2^l x_d) (l-major), cos(2^l x_d)] of shape [..., d + 2 d L], against float64
    NumPy written with explicit loops; include_input=False drops the leading x."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1.0, 1.0, (4, 2, 3))
    num_freqs = 5
    want = np.zeros((4, 2, 3 + 2 * 3 * num_freqs))
    want[..., :3] = x
    for l in range(num_freqs):
      for d in range(3):
        want[..., 3 + 3 * l + d] = np.sin(2.0 ** l * x[..., d])
        want[..., 3 + 3 * num_freqs + 3 * l + d] = np.cos(2.0 ** l * x[..., d])
    got = self.variant(encoding.pos_enc, static_argnums=(1, 2))(jnp.asarray(x, jnp.float32), num_freqs, True)
    chex.assert_shape(got, (4, 2, 3 + 30))
    np.testing.assert_allclose(got, want, atol=1e-5)
    got = self.variant(encoding.pos_enc, static_argnums=(1, 2))(jnp.asarray(x, jnp.float32), num_freqs, False)
    chex.assert_shape(got, (4, 2, 30))
    np.testing.assert_allclose(got, want[..., 3:], atol=1e-5)


if __name__ == '__main__':
  absltest.main()
