"""Tests of dreamjax.cameras: look-at frames and spherical coordinates against closed forms, the random camera, light
and shading draws against their stated distributions (DF A.2) over 20k samples with float64 NumPy Monte Carlo
references, view labels at hand-picked angles, rays through pixel centres against the pinhole closed form, and
turntable cameras against closed forms (spherical coordinates, look-at geometry).

Run: .venv/bin/python -m pytest -q tests/test_cameras.py
"""

import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax import cameras as cam_lib

N = 20_000  # random draws per distribution test
WIDTH = 64


def _unit(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _np_orbit(elevation_deg, azimuth_deg, distance):
  """Float64 orbit positions [..., 3]: z-up, elevation from the xy-plane, azimuth from +x toward +y."""
  e, a = np.deg2rad(elevation_deg), np.deg2rad(azimuth_deg)
  return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1) * np.asarray(distance)[..., None]


def _np_reference_cameras(rng, n):
  """Float64 Monte Carlo of the stated training-camera process (DF A.2 with std 0.2 look-at and 0.02 up noise),
  written independently: returns origins [n, 3], forward axes [n, 3] and right axes [n, 3]."""
  use_angle = rng.uniform(size=n) < 0.5
  elevation = np.where(use_angle, rng.uniform(-10.0, 90.0, n),
                       np.rad2deg(np.arcsin(rng.uniform(np.sin(np.deg2rad(-10.0)), 1.0, n))))
  origins = _np_orbit(elevation, rng.uniform(0.0, 360.0, n), rng.uniform(1.0, 1.5, n))
  origins = origins + rng.uniform(-0.1, 0.1, (n, 3))
  targets = 0.2 * rng.standard_normal((n, 3))
  up = np.array([0.0, 0.0, 1.0]) + 0.02 * rng.standard_normal((n, 3))
  forward = _unit(targets - origins)
  return origins, forward, _unit(np.cross(forward, up))


def _assert_close_mc(got_samples, ref_samples, k=5.0):
  """The means of two independent sample sets agree within k combined standard errors."""
  got_samples, ref_samples = np.asarray(got_samples, np.float64), np.asarray(ref_samples, np.float64)
  se = np.sqrt(got_samples.var() / got_samples.size + ref_samples.var() / ref_samples.size)
  assert abs(got_samples.mean() - ref_samples.mean()) < k * se, (got_samples.mean(), ref_samples.mean(), se)


def _assert_histogram(samples, edges, probs, k=5.0):
  """Bin frequencies of `samples` match the probabilities `probs` within k binomial standard errors."""
  counts, _ = np.histogram(samples, bins=edges)
  freq = counts / samples.size
  se = np.sqrt(probs * (1.0 - probs) / samples.size)
  np.testing.assert_array_less(np.abs(freq - probs), k * se + 1e-12)


# jit for the larger test graphs: XLA's LLVM backend at optimisation level 0 compiles ~3x faster on CPU (the HLO
# passes, and hence the maths, are unchanged). The chex variants use the default jit.
fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
_camera_rays = fast_jit(cam_lib.camera_rays, static_argnums=(1, 2))
_orbit_cameras = fast_jit(cam_lib.orbit_cameras)


@functools.lru_cache(maxsize=None)
def _draws():
  """One jitted draw of N training cameras and their lights (default specs), as float64 NumPy."""
  def draw(key):
    k_cam, k_light = jax.random.split(key)
    cams = cam_lib.sample_cameras(k_cam, N, WIDTH)
    return cams, cam_lib.sample_lights(k_light, cams.origins)
  cams, lights = fast_jit(draw)(jax.random.PRNGKey(0))
  return jax.tree.map(lambda x: np.asarray(x, np.float64), cams), np.asarray(lights, np.float64)


class LookAtTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_frame(self):
    """look_at gives proper rotations (R^T R = I, det R = +1) whose third column (back) is -normalize(target -
    origin) and whose first column (right) is perpendicular to the up vector, with the camera's up axis on the
    up vector's side (float64 checks on random inputs)."""
    rng = np.random.default_rng(0)
    origins = rng.normal(size=(50, 3)) * 2.0
    targets = rng.normal(size=(50, 3)) * 0.3
    up = np.array([0.0, 0.0, 1.0]) + 0.3 * rng.normal(size=(50, 3))
    c2w = np.asarray(self.variant(cam_lib.look_at)(*(jnp.asarray(a, jnp.float32) for a in (origins, targets, up))),
                     np.float64)
    np.testing.assert_allclose(np.einsum('nab,nac->nbc', c2w, c2w), np.broadcast_to(np.eye(3), (50, 3, 3)),
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(c2w), 1.0, atol=1e-5)
    np.testing.assert_allclose(-c2w[:, :, 2], _unit(targets - origins), atol=1e-5)
    np.testing.assert_allclose(np.sum(c2w[:, :, 0] * up, -1), 0.0, atol=1e-5)
    assert np.all(np.sum(c2w[:, :, 1] * up, -1) > 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_degenerate_straight_down(self):
    """A camera straight above the target with up = +z (forward parallel to up) falls back to right = +x, giving
    the frame (right, up, back) = (+x, +y, +z) exactly."""
    c2w = self.variant(cam_lib.look_at)(jnp.array([[0.0, 0.0, 2.0]]), jnp.zeros((1, 3)), jnp.array([[0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(c2w[0], np.eye(3), atol=1e-6)
    assert np.all(np.isfinite(c2w))

  @chex.variants(with_jit=True, without_jit=True)
  def test_spherical_to_cartesian(self):
    """Hand-computed orbit positions: (el 0, az 0, d 2) = (2, 0, 0); (0, 90, 1) = (0, 1, 0); (90, 37, 1.5) =
    (0, 0, 1.5); (-10, 225, 1) = (-cos10/sqrt2, -cos10/sqrt2, -sin10)."""
    got = self.variant(cam_lib.spherical_to_cartesian)(jnp.array([0.0, 0.0, 90.0, -10.0]),
                                                        jnp.array([0.0, 90.0, 37.0, 225.0]),
                                                        jnp.array([2.0, 1.0, 1.5, 1.0]))
    c, s = np.cos(np.deg2rad(10.0)), np.sin(np.deg2rad(10.0))
    want = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.5], [-c / np.sqrt(2), -c / np.sqrt(2), -s]]
    np.testing.assert_allclose(got, want, atol=1e-6)

  def test_orbit_cameras_look_at_origin(self):
    """orbit_cameras put the camera at the float64 orbit position, aimed at the origin (back axis = position /
    |position|), with the stored angles, distance and focal length; the overhead pose is finite."""
    el = np.array([30.0, 0.0, 90.0, -10.0])
    az = np.array([0.0, 123.0, 45.0, 300.0])
    dist = np.array([1.5, 1.0, 2.0, 1.2])
    cams = _orbit_cameras(el, az, dist, 64.0)
    pos = _np_orbit(el, az, dist)
    np.testing.assert_allclose(cams.origins, pos, atol=1e-5)
    np.testing.assert_allclose(cams.c2w[:, :, 2], _unit(pos), atol=1e-5)
    np.testing.assert_allclose(cams.focal, 64.0)
    np.testing.assert_allclose(cams.elevation, el)
    np.testing.assert_allclose(cams.azimuth, az)
    np.testing.assert_allclose(cams.distance, dist)
    chex.assert_tree_all_finite(cams)


class SampleCamerasTest(chex.TestCase):

  def test_elevation_mixture(self):
    """Elevations lie in [-10, 90] degrees and follow the stated half/half mixture of uniform in angle (bin
    probability width / 100 deg) and uniform in area (density cos e / (sin 90 - sin(-10)), bin probability
    diff(sin e) / (1 + sin 10)); 10-degree bin frequencies match within 5 binomial standard errors."""
    cams, _ = _draws()
    e = cams.elevation
    assert e.min() >= -10.0 and e.max() <= 90.0
    edges = np.linspace(-10.0, 90.0, 11)
    s = np.sin(np.deg2rad(edges))
    probs = 0.5 * np.diff(edges) / 100.0 + 0.5 * np.diff(s) / (s[-1] - s[0])
    _assert_histogram(e, edges, probs)

  def test_azimuth_distance_focal_uniform(self):
    """Azimuth ~ U(0, 360), distance ~ U(1, 1.5), focal / width ~ U(0.7, 1.35): in range, with equal-width bin
    frequencies 1/12, 1/5 and 1/5 within 5 binomial standard errors."""
    cams, _ = _draws()
    for x, lo, hi, bins in ((cams.azimuth, 0.0, 360.0, 12), (cams.distance, 1.0, 1.5, 5),
                            (cams.focal / WIDTH, 0.7, 1.35, 5)):
      assert x.min() >= lo and x.max() <= hi
      _assert_histogram(x, np.linspace(lo, hi, bins + 1), np.full(bins, 1.0 / bins))

  def test_position_jitter(self):
    """Camera origins = orbit position (from the stored elevation, azimuth, distance; float64) + U(-0.1, 0.1)^3:
    each jitter component lies in [-0.1, 0.1], reaches the bound, has mean 0 and variance 0.1^2 / 3 (within 5 SE)."""
    cams, _ = _draws()
    jitter = cams.origins - _np_orbit(cams.elevation, cams.azimuth, cams.distance)
    assert np.abs(jitter).max() <= 0.1 + 1e-5
    assert np.abs(jitter).max() > 0.099
    np.testing.assert_array_less(np.abs(jitter.mean(0)), 5 * np.sqrt(0.01 / 3 / N))
    var_se = np.sqrt((0.1 ** 4 / 5 - (0.01 / 3) ** 2) / N)  # sqrt((E x^4 - var^2) / n) for U(-a, a)
    np.testing.assert_array_less(np.abs(jitter.var(0) - 0.01 / 3), 5 * var_se)

  def test_frames_and_look_at_spread(self):
    """Every c2w is a proper rotation; the look-at noise matches a float64 Monte Carlo of the stated process
    (target ~ N(0, 0.2^2 I)) in E|p|^2, p the point of the optical axis closest to the world origin; the up-vector
    noise (N(0, 0.02^2 I)) matches it in Var(right_z), which would be 0 without noise."""
    cams, _ = _draws()
    c2w = cams.c2w
    np.testing.assert_allclose(np.einsum('nab,nac->nbc', c2w, c2w), np.broadcast_to(np.eye(3), (N, 3, 3)),
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(c2w), 1.0, atol=1e-5)
    ref_o, ref_f, ref_r = _np_reference_cameras(np.random.default_rng(1), 100_000)

    def closest_sq(o, f):
      p = o - np.sum(o * f, -1, keepdims=True) * f
      return np.sum(p * p, -1)
    got = closest_sq(cams.origins, -c2w[:, :, 2])
    ref = closest_sq(ref_o, ref_f)
    _assert_close_mc(got, ref)
    assert 0.05 < got.mean() < 0.12  # ~ 2 * 0.2^2; a variance of 0.2 would give ~0.4
    _assert_close_mc(c2w[:, 2, 0] ** 2, ref_r[:, 2] ** 2)
    assert 1e-4 < np.mean(c2w[:, 2, 0] ** 2) < 1e-3


class SampleLightsTest(chex.TestCase):

  def test_norm_uniform(self):
    """Light distances from the origin lie in [0.8, 1.5] with 7 equal-bin frequencies 1/7 (5 binomial SE)."""
    _, lights = _draws()
    r = np.linalg.norm(lights, axis=-1)
    assert r.min() >= 0.8 - 1e-5 and r.max() <= 1.5 + 1e-5
    _assert_histogram(r, np.linspace(0.8, 1.5, 8), np.full(7, 1.0 / 7))

  def test_direction_follows_camera(self):
    """Light direction ~ normalize(camera position + N(0, I)): the mean cosine between the light direction and the
    camera direction, and the mean of its square, match a float64 Monte Carlo on the same camera positions."""
    cams, lights = _draws()
    rng = np.random.default_rng(2)
    ref = _unit(cams.origins + rng.standard_normal(cams.origins.shape))
    cam_dir = _unit(cams.origins)
    got_cos = np.sum(_unit(lights) * cam_dir, -1)
    ref_cos = np.sum(ref * cam_dir, -1)
    _assert_close_mc(got_cos, ref_cos)
    _assert_close_mc(got_cos ** 2, ref_cos ** 2)
    assert 0.5 < got_cos.mean() < 0.9


class ViewLabelsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_picked(self):
    """Default thresholds (front |az| < 45, back |az - 180| < 45, overhead el > 60), azimuths taken mod 360."""
    cases = [(0, 0, 'front'), (0, 44, 'front'), (0, 46, 'side'), (0, -44, 'front'), (0, 316, 'front'),
             (0, 359, 'front'), (0, 360, 'front'), (0, 730, 'front'), (0, 90, 'side'), (0, 134, 'side'),
             (0, 136, 'back'), (0, 180, 'back'), (0, -180, 'back'), (0, 224, 'back'), (0, 226, 'side'),
             (0, 270, 'side'), (-10, 90, 'side'), (59, 180, 'back'), (61, 180, 'overhead'), (90, 0, 'overhead'),
             (61, 45, 'overhead')]
    el, az, want = zip(*cases)
    got = self.variant(cam_lib.view_labels)(jnp.array(el, jnp.float32), jnp.array(az, jnp.float32))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, [cam_lib.VIEW_NAMES.index(w) for w in want])

  @chex.variants(with_jit=True, without_jit=True)
  def test_custom_thresholds(self):
    """front_deg = 60, back_deg = 30, overhead_deg = 30: az 50 and 305 are front, 140 side, 160 back; el 40 is
    overhead."""
    fn = self.variant(lambda e, a: cam_lib.view_labels(e, a, front_deg=60.0, back_deg=30.0, overhead_deg=30.0))
    got = fn(jnp.array([0.0, 0.0, 0.0, 40.0, 20.0]), jnp.array([50.0, 140.0, 160.0, 0.0, 305.0]))
    np.testing.assert_array_equal(got, [cam_lib.FRONT, cam_lib.SIDE, cam_lib.BACK, cam_lib.OVERHEAD,
                                        cam_lib.FRONT])


class SampleShadingTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_schedule_and_frequencies(self):
    """Before `albedo_only_steps` (1000) every camera is albedo-only; from step 1000 the modes albedo / shaded /
    textureless have frequencies 0.25 / 0.375 / 0.375 (within 5 binomial SE over 20k draws)."""
    fn = self.variant(lambda k, s: cam_lib.sample_shading(k, N, s))
    for step in (0, 999):
      got = np.asarray(fn(jax.random.PRNGKey(3), jnp.int32(step)))
      np.testing.assert_array_equal(got, cam_lib.ALBEDO)
    for step in (1000, 12000):
      got = np.asarray(fn(jax.random.PRNGKey(step), jnp.int32(step)))
      assert got.dtype == np.int32
      freq = np.array([np.mean(got == m) for m in (cam_lib.ALBEDO, cam_lib.SHADED, cam_lib.TEXTURELESS)])
      probs = np.array([0.25, 0.375, 0.375])
      np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / N))


class CameraRaysTest(chex.TestCase):

  def test_horizontal_orbit_closed_form(self):
    """A camera at elevation 0, azimuth a, distance D, focal f: forward = (-cos a, -sin a, 0), right = (-sin a,
    cos a, 0), up = +z (hand-derived), so the ray of pixel (i, j) is normalize(forward + x right + y up) with
    x = (j + 1/2 - W/2) / f and y = -(i + 1/2 - H/2) / f; all rays start at the camera (even and odd sizes)."""
    for h, w in ((4, 6), (5, 7)):
      az = np.array([0.0, 90.0, 200.0])
      f = np.array([5.0, 8.0, 6.5])
      cams = _orbit_cameras(np.zeros(3), az, np.full(3, 2.0), f)
      origins, dirs = _camera_rays(cams, h, w)
      chex.assert_shape([origins, dirs], (3, h, w, 3))
      a = np.deg2rad(az)
      fwd = np.stack([-np.cos(a), -np.sin(a), np.zeros(3)], -1)
      right = np.stack([-np.sin(a), np.cos(a), np.zeros(3)], -1)
      x = (np.arange(w) + 0.5 - w / 2)[None, None, :, None] / f[:, None, None, None]
      y = -(np.arange(h) + 0.5 - h / 2)[None, :, None, None] / f[:, None, None, None]
      want = _unit(fwd[:, None, None] + x * right[:, None, None] + y * np.array([0.0, 0.0, 1.0]))
      np.testing.assert_allclose(dirs, want, atol=1e-5)
      np.testing.assert_allclose(origins, np.broadcast_to(_np_orbit(np.zeros(3), az, np.full(3, 2.0))[:, None, None],
                                                          (3, h, w, 3)), atol=1e-5)
      # Image orientation: the top row looks up (+z), the left column to the camera's left.
      assert np.all(dirs[:, 0, :, 2] > 0) and np.all(dirs[:, -1, :, 2] < 0)
      assert np.all(np.sum(dirs[:, :, 0] * right[:, None], -1) < 0)

  def test_image_plane_hits_and_centre(self):
    """For elevated orbit cameras, ray (i, j) meets the plane one unit in front of the camera at
    o + forward + x right + y up (float64 frame from the orbit position, up = z); the centre ray (odd size) or the
    mean of the four central rays (even size) points at the look-at target, the origin."""
    el, az, dist, f = np.array([30.0, 75.0, -10.0]), np.array([10.0, 250.0, 130.0]), np.array([1.2, 1.5, 1.0]), 7.0
    cams = _orbit_cameras(el, az, dist, f)
    pos = _np_orbit(el, az, dist)
    fwd = _unit(-pos)
    right = _unit(np.cross(fwd, [0.0, 0.0, 1.0]))
    up = np.cross(right, fwd)
    for h, w in ((6, 8), (7, 9)):
      origins, dirs = _camera_rays(cams, h, w)
      dirs = np.asarray(dirs, np.float64)
      np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-6)
      hits = dirs / np.sum(dirs * fwd[:, None, None], -1, keepdims=True)  # relative to the camera
      x = (np.arange(w) + 0.5 - w / 2)[None, None, :, None] / f
      y = -(np.arange(h) + 0.5 - h / 2)[None, :, None, None] / f
      want = fwd[:, None, None] + x * right[:, None, None] + y * up[:, None, None]
      np.testing.assert_allclose(hits, want, atol=1e-5)
      if h % 2:
        centre = dirs[:, h // 2, w // 2]
      else:
        centre = _unit(dirs[:, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1].mean(axis=(1, 2)))
      np.testing.assert_allclose(centre, fwd, atol=1e-6)

  def test_sampled_cameras_rays(self):
    """Rays of randomly drawn training cameras: unit directions, origins at the camera, centre rays along the
    camera's forward axis, and the corner rays at the pinhole angle atan(|offset| / f) from it."""
    cams = jax.tree.map(lambda x: jnp.asarray(x[:4], jnp.float32), _draws()[0])
    cams = cams.replace(focal=cams.focal * 9 / WIDTH)  # drawn for width 64, used at 9x9
    origins, dirs = _camera_rays(cams, 9, 9)
    dirs = np.asarray(dirs, np.float64)
    fwd = -np.asarray(cams.c2w, np.float64)[:, :, 2]
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(origins, np.broadcast_to(np.asarray(cams.origins)[:, None, None], (4, 9, 9, 3)))
    np.testing.assert_allclose(dirs[:, 4, 4], fwd, atol=1e-6)
    f = np.asarray(cams.focal, np.float64)
    want = np.arctan(np.sqrt(2.0) * 4.0 / f)
    got = np.arccos(np.clip(np.sum(dirs[:, 0, 0] * fwd, -1), -1.0, 1.0))
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize('elevation', [30.0, -10.0, 90.0])
def test_turntable_cameras_closed_form(elevation):
  """Origins are distance * (cos e cos a, cos e sin a, sin e) with a = 360 k / N; each c2w is a rotation (orthonormal,
  det +1) whose -z column points from the origin of the camera to the world origin, whose right column is horizontal
  and whose up column has non-negative world z (the image is upright)."""
  n, dist = 12, 1.3
  cams = cam_lib.turntable_cameras(n, elevation_deg=elevation, distance=dist, focal=0.9 * 64)
  chex.assert_shape([cams.origins, cams.c2w, cams.azimuth], [(n, 3), (n, 3, 3), (n,)])
  az = np.arange(n) * 30.0
  np.testing.assert_allclose(cams.azimuth, az, atol=1e-5)
  np.testing.assert_allclose(cams.elevation, elevation)
  np.testing.assert_allclose(cams.focal, 0.9 * 64)
  a, e = np.radians(az), np.radians(elevation)
  expected = dist * np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.full(n, np.sin(e))], -1)
  np.testing.assert_allclose(cams.origins, expected, atol=1e-6)
  o = np.asarray(cams.origins, np.float64)
  np.testing.assert_allclose(np.linalg.norm(o, axis=-1), dist, atol=1e-6)
  np.testing.assert_allclose(np.degrees(np.arctan2(o[:, 2], np.hypot(o[:, 0], o[:, 1]))), elevation, atol=1e-4)
  r = np.asarray(cams.c2w, np.float64)
  np.testing.assert_allclose(np.einsum('nji,njk->nik', r, r), np.broadcast_to(np.eye(3), (n, 3, 3)), atol=1e-6)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-6)
  forward = -r[:, :, 2]
  np.testing.assert_allclose(forward, -o / dist, atol=1e-6)
  np.testing.assert_allclose(r[:, 2, 0], 0.0, atol=1e-6)
  assert np.all(r[:, 2, 1] >= -1e-6)


def test_turntable_right_axis_matches_screen():
  """At azimuth 0, elevation 0 the camera sits on +x looking at the origin: image-right is world +y, image-up is +z
  (a right-handed z-up world seen from +x); consecutive azimuths step by exactly 360 / N."""
  cams = cam_lib.turntable_cameras(7, elevation_deg=0.0, distance=2.0)
  np.testing.assert_allclose(cams.c2w[0], np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]), atol=1e-7)
  np.testing.assert_allclose(np.diff(cams.azimuth), 360.0 / 7, atol=1e-4)
  assert float(cams.azimuth.max()) < 360.0


if __name__ == '__main__':
  absltest.main()
