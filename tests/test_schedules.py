"""Schedules (dreamjax/schedules.py) against their closed forms."""

from absl.testing import absltest
import chex
import jax.numpy as jnp
import numpy as np

from dreamjax import schedules


class RampTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_closed_form(self):
    """Ramp(step) = start + (end - start) clip(step / N, 0, 1): 5e-2 at step 0 (and before), 2e-3 at N and after,
    linear in between (the paper's IPE variance: 5e-2 -> 2e-3 over 5k steps)."""
    fn = self.variant(lambda s: schedules.Ramp(5e-2, 2e-3, 5000)(s))
    cases = [(0, 5e-2), (-10, 5e-2), (1250, 5e-2 - 0.25 * 4.8e-2), (2500, 2.6e-2), (4999, 2e-3 + 4.8e-2 / 5000),
             (5000, 2e-3), (15000, 2e-3)]
    for step, want in cases:
      np.testing.assert_allclose(fn(jnp.asarray(step)), want, rtol=1e-5, err_msg=f'step {step}')

  def test_custom_endpoints(self):
    """Custom start/end values are honoured: lambda(N/4) = 0.75 start + 0.25 end."""
    np.testing.assert_allclose(schedules.Ramp(1.0, 0.2, 100)(25), 0.8, rtol=1e-6)

  def test_fraction_of_run(self):
    """ramp_over_fraction(.., 1/3, 15000) reaches its end value at step 5000 (DF: the first 5k of 15k steps)."""
    r = schedules.ramp_over_fraction(1e-4, 1e-2, 1 / 3, 15000)
    self.assertEqual(r.steps, 5000)
    np.testing.assert_allclose(r(5000), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(r(2500), 0.5 * (1e-4 + 1e-2), rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
