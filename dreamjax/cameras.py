"""Training views (DreamFusion §3.2, A.2): camera, light, shading mode, view label and background, sampled from
frozen settings; orbit and turntable cameras; rays through pixel centres.

Conventions used everywhere in dreamjax:
  * World space is z-up; the object sits at the origin inside a bounding sphere (radius 1.4 by default).
  * Elevation is measured from the xy-plane (degrees, +90 looks straight down), azimuth from +x toward +y (degrees).
    Azimuth 0 is the object's "front".
  * A camera-to-world rotation `c2w [3, 3]` has columns (right, up, back): the camera looks along -z of its own frame
    (OpenGL convention). Pixel (row i, col j) of an H×W image maps to the camera-frame direction
    ((j + 0.5 - W/2) / f, -(i + 0.5 - H/2) / f, -1), with f the focal length in pixels.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# View labels, in the order of the prompt suffixes ", front view", ", side view", ...
FRONT, SIDE, BACK, OVERHEAD = 0, 1, 2, 3
VIEW_NAMES = ("front", "side", "back", "overhead")


def view_prompt(prompt: str, label: int) -> str:
  """The view-dependent prompt of view label `label`: "a red cube" -> "a red cube, side view" (DF §3.2)."""
  return f"{prompt}, {VIEW_NAMES[label]} view"


@struct.dataclass
class Cameras:
  """A batch of N pinhole cameras.

  origins [N, 3] world units; c2w [N, 3, 3] (columns right, up, back); focal [N] pixels;
  elevation, azimuth [N] degrees (of the un-jittered orbit position); distance [N] world units.
  """
  origins: jnp.ndarray
  c2w: jnp.ndarray
  focal: jnp.ndarray
  elevation: jnp.ndarray
  azimuth: jnp.ndarray
  distance: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class CameraSampling:
  """Ranges of the random training cameras; the defaults are the paper's (DF A.2)."""
  elevation_range: tuple[float, float] = (-10.0, 90.0)  # degrees
  azimuth_range: tuple[float, float] = (0.0, 360.0)  # degrees
  distance_range: tuple[float, float] = (1.0, 1.5)  # world units
  uniform_angle_prob: float = 0.5  # P(elevation uniform in angle); otherwise uniform in area on the sphere
  position_jitter: float = 0.1  # camera position += U(-j, j)^3
  look_at_std: float = 0.2  # look-at point ~ N(0, std^2 I) (the paper's "N(0, 0.2 I)"; std as in threestudio)
  up_std: float = 0.02  # up vector = z + N(0, std^2 I)
  focal_range: tuple[float, float] = (0.7, 1.35)  # focal length = U(lo, hi) * image width


@dataclasses.dataclass(frozen=True)
class LightSampling:
  """Point lights of the training views (DF A.2)."""
  distance_range: tuple[float, float] = (0.8, 1.5)  # |light position| ~ U(lo, hi)
  direction_std: float = 1.0  # direction ~ N(camera position, std^2 I), normalised


@dataclasses.dataclass(frozen=True)
class ShadingSampling:
  """Shading-mode schedule (DF A.2): albedo only at first, then lit / textureless at random."""
  albedo_only_steps: int = 1000
  shading_prob: float = 0.75  # P(lit) after the albedo-only steps ...
  textureless_prob: float = 0.5  # ... and P(textureless | lit): net albedo 0.25 / shaded 0.375 / textureless 0.375


@dataclasses.dataclass(frozen=True)
class ViewLabelling:
  """Azimuth / elevation thresholds (degrees) of the view labels that pick the view-dependent prompt."""
  front_deg: float = 45.0  # |azimuth| < front_deg is FRONT
  back_deg: float = 45.0  # |azimuth - 180| < back_deg is BACK
  overhead_deg: float = 60.0  # elevation > overhead_deg is OVERHEAD


@dataclasses.dataclass(frozen=True)
class ViewSampling:
  """Everything random about one training view; the defaults are the paper's."""
  camera: CameraSampling = CameraSampling()
  light: LightSampling = LightSampling()
  shading: ShadingSampling = ShadingSampling()
  labels: ViewLabelling = ViewLabelling()
  random_background_prob: float = 0.0  # P(a random solid colour replaces the background MLP) per view

  @classmethod
  def from_config(cls, config) -> "ViewSampling":
    """From a run config's `camera`, `light`, `shading` and `render.random_background_prob` sections."""
    c, s = config.camera, config.shading
    return cls(
        camera=CameraSampling(
            elevation_range=tuple(c.elevation_range), azimuth_range=tuple(c.azimuth_range),
            distance_range=tuple(c.distance_range), uniform_angle_prob=c.uniform_angle_prob,
            position_jitter=c.position_jitter, look_at_std=c.look_at_std, up_std=c.up_std,
            focal_range=tuple(c.focal_range)),
        light=LightSampling(distance_range=tuple(config.light.distance_range),
                            direction_std=config.light.direction_std),
        shading=ShadingSampling(albedo_only_steps=s.albedo_only_steps, shading_prob=s.shading_prob,
                                textureless_prob=s.textureless_prob),
        labels=ViewLabelling(front_deg=c.front_deg, back_deg=c.back_deg, overhead_deg=c.overhead_deg),
        random_background_prob=config.render.random_background_prob)


@struct.dataclass
class View:
  """A batch of N training views seen together.

  cams: `Cameras` [N]; light [N, 3] point-light positions (world units); mode [N] int32 shading mode; label [N] int32
  view label (FRONT | SIDE | BACK | OVERHEAD); solid_background [3] rgb in [0, 1] and use_solid_background (bool
  scalar): when true, the background MLP is replaced by that colour for this batch.
  """
  cams: Cameras
  light: jnp.ndarray
  mode: jnp.ndarray
  label: jnp.ndarray
  solid_background: jnp.ndarray
  use_solid_background: jnp.ndarray


def _normalize(v: jnp.ndarray, eps: float = 1e-9) -> jnp.ndarray:
  return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), eps * eps))


def spherical_to_cartesian(elevation_deg, azimuth_deg, distance):
  """Orbit position [..., 3] for elevation/azimuth in degrees and a distance."""
  e = jnp.deg2rad(elevation_deg)
  a = jnp.deg2rad(azimuth_deg)
  return jnp.stack([jnp.cos(e) * jnp.cos(a), jnp.cos(e) * jnp.sin(a), jnp.sin(e)], axis=-1) * distance[..., None]


def look_at(origins: jnp.ndarray, targets: jnp.ndarray, up: jnp.ndarray) -> jnp.ndarray:
  """Camera-to-world rotations [..., 3, 3] (columns right, up, back) for cameras at `origins` looking at `targets`.

  When the view direction is parallel to `up` (a camera straight overhead), +x is used as the fallback right axis.
  """
  forward = _normalize(targets - origins)
  right = jnp.cross(forward, up)
  degenerate = jnp.sum(right * right, axis=-1, keepdims=True) < 1e-12
  fallback = jnp.cross(forward, jnp.broadcast_to(jnp.array([0.0, 1.0, 0.0]), forward.shape))
  right = _normalize(jnp.where(degenerate, fallback, right))
  true_up = jnp.cross(right, forward)
  return jnp.stack([right, true_up, -forward], axis=-1)


def sample_elevation(rng: jnp.ndarray, n: int, lo_deg: float, hi_deg: float, uniform_angle_prob: float):
  """Elevations [n] in degrees: with prob p uniform in angle, otherwise uniform in area (sin(e) uniform)."""
  k_mode, k_angle, k_area = jax.random.split(rng, 3)
  u_angle = jax.random.uniform(k_angle, (n,), minval=lo_deg, maxval=hi_deg)
  s = jax.random.uniform(k_area, (n,), minval=np.sin(np.deg2rad(lo_deg)), maxval=np.sin(np.deg2rad(hi_deg)))
  u_area = jnp.rad2deg(jnp.arcsin(jnp.clip(s, -1.0, 1.0)))
  use_angle = jax.random.uniform(k_mode, (n,)) < uniform_angle_prob
  return jnp.where(use_angle, u_angle, u_area)


def sample_cameras(rng: jnp.ndarray, n: int, width: int, spec: CameraSampling = CameraSampling()) -> Cameras:
  """Draws n random training cameras as in DreamFusion A.2. `width` (pixels) scales the focal length."""
  ks = jax.random.split(rng, 7)
  elevation = sample_elevation(ks[0], n, *spec.elevation_range, spec.uniform_angle_prob)
  azimuth = jax.random.uniform(ks[1], (n,), minval=spec.azimuth_range[0], maxval=spec.azimuth_range[1])
  distance = jax.random.uniform(ks[2], (n,), minval=spec.distance_range[0], maxval=spec.distance_range[1])
  origins = spherical_to_cartesian(elevation, azimuth, distance)
  origins = origins + jax.random.uniform(ks[3], (n, 3), minval=-spec.position_jitter, maxval=spec.position_jitter)
  targets = spec.look_at_std * jax.random.normal(ks[4], (n, 3))
  up = jnp.array([0.0, 0.0, 1.0]) + spec.up_std * jax.random.normal(ks[5], (n, 3))
  focal = width * jax.random.uniform(ks[6], (n,), minval=spec.focal_range[0], maxval=spec.focal_range[1])
  return Cameras(origins=origins, c2w=look_at(origins, targets, up), focal=focal,
                 elevation=elevation, azimuth=azimuth, distance=distance)


def orbit_cameras(elevation_deg, azimuth_deg, distance, focal) -> Cameras:
  """Deterministic cameras [N] on an orbit looking at the origin (previews, turntables, evaluation)."""
  elevation, azimuth, distance, focal = (jnp.asarray(v, jnp.float32) for v in
                                         (elevation_deg, azimuth_deg, distance, focal))
  elevation, azimuth, distance, focal = jnp.broadcast_arrays(elevation, azimuth, distance, focal)
  origins = spherical_to_cartesian(elevation, azimuth, distance)
  up = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]), origins.shape)
  return Cameras(origins=origins, c2w=look_at(origins, jnp.zeros_like(origins), up), focal=focal,
                 elevation=elevation, azimuth=azimuth, distance=distance)


def view_labels(elevation_deg: jnp.ndarray, azimuth_deg: jnp.ndarray, front_deg: float = 45.0,
                back_deg: float = 45.0, overhead_deg: float = 60.0) -> jnp.ndarray:
  """View label per camera (int32 [N]): OVERHEAD if elevation > overhead_deg, else FRONT if the azimuth is within
  front_deg of 0, BACK if within back_deg of 180, else SIDE (DF §3.2; thresholds as in threestudio)."""
  az = jnp.mod(azimuth_deg + 180.0, 360.0) - 180.0  # (-180, 180]
  label = jnp.where(jnp.abs(az) < front_deg, FRONT, jnp.where(jnp.abs(az) > 180.0 - back_deg, BACK, SIDE))
  return jnp.where(elevation_deg > overhead_deg, OVERHEAD, label).astype(jnp.int32)


def sample_lights(rng: jnp.ndarray, camera_origins: jnp.ndarray, distance_range=(0.8, 1.5),
                  direction_std: float = 1.0) -> jnp.ndarray:
  """Point-light positions [N, 3]: direction ~ N(camera position, std^2 I) normalised, norm ~ U(lo, hi) (DF A.2)."""
  k_dir, k_norm = jax.random.split(rng)
  direction = _normalize(camera_origins + direction_std * jax.random.normal(k_dir, camera_origins.shape))
  norm = jax.random.uniform(k_norm, camera_origins.shape[:-1] + (1,), minval=distance_range[0],
                            maxval=distance_range[1])
  return direction * norm


def camera_rays(cams: Cameras, height: int, width: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Rays through pixel centres. Returns origins and unit directions, each [N, H, W, 3]."""
  chex.assert_rank(cams.c2w, 3)
  j, i = jnp.meshgrid(jnp.arange(width, dtype=jnp.float32) + 0.5, jnp.arange(height, dtype=jnp.float32) + 0.5)
  f = cams.focal[:, None, None]
  d_cam = jnp.stack([(j[None] - width / 2) / f, -(i[None] - height / 2) / f,
                     -jnp.ones((cams.focal.shape[0], height, width))], axis=-1)
  # Full float32 for this 3x3 rotation: the default matmul precision is bf16 on TPU / TF32 on recent GPUs, which
  # bends rays by ~1e-3 rad, a sizeable fraction of a pixel at video resolutions.
  d_world = jnp.einsum("nab,nhwb->nhwa", cams.c2w, d_cam, precision=jax.lax.Precision.HIGHEST)
  directions = _normalize(d_world)
  origins = jnp.broadcast_to(cams.origins[:, None, None, :], directions.shape)
  return origins, directions


# Shading modes (DF A.2). Stored as data (int32), never as Python control flow, so one compiled step serves all.
ALBEDO, SHADED, TEXTURELESS = 0, 1, 2
SHADING_NAMES = ("albedo", "shaded", "textureless")


def sample_shading(rng: jnp.ndarray, n: int, step: jnp.ndarray, albedo_only_steps: int = 1000,
                   shading_prob: float = 0.75, textureless_prob: float = 0.5) -> jnp.ndarray:
  """Shading mode per camera (int32 [n]). Albedo only for the first `albedo_only_steps`; afterwards shaded with
  prob `shading_prob`, of which textureless with prob `textureless_prob` (paper: 0.25 / 0.375 / 0.375)."""
  k_shade, k_tex = jax.random.split(rng)
  shade = jax.random.uniform(k_shade, (n,)) < shading_prob
  textureless = jax.random.uniform(k_tex, (n,)) < textureless_prob
  mode = jnp.where(shade, jnp.where(textureless, TEXTURELESS, SHADED), ALBEDO)
  return jnp.where(step < albedo_only_steps, ALBEDO, mode).astype(jnp.int32)


def sample_view(settings: ViewSampling, key: jnp.ndarray, step, width: int, n: int = 1) -> View:
  """n random training views at `step` (shading schedule) for renders `width` pixels wide (focal length scale).

  The background is the scene's own (use_solid_background False); `with_random_background` draws it.
  """
  k_cam, k_light, k_shade = jax.random.split(key, 3)
  cams = sample_cameras(k_cam, n, width, settings.camera)
  light = sample_lights(k_light, cams.origins, settings.light.distance_range, settings.light.direction_std)
  s = settings.shading
  mode = sample_shading(k_shade, n, step, s.albedo_only_steps, s.shading_prob, s.textureless_prob)
  lb = settings.labels
  label = view_labels(cams.elevation, cams.azimuth, lb.front_deg, lb.back_deg, lb.overhead_deg)
  return View(cams=cams, light=light, mode=mode, label=label, solid_background=jnp.zeros(3),
              use_solid_background=jnp.asarray(False))


def with_random_background(view: View, key: jnp.ndarray, prob: float) -> View:
  """`view` whose background is, with probability `prob`, one uniform random solid colour (else unchanged)."""
  k_use, k_col = jax.random.split(key)
  return view.replace(use_solid_background=jax.random.uniform(k_use) < prob,
                      solid_background=jax.random.uniform(k_col, (3,)))


def turntable_cameras(num_frames: int, elevation_deg: float = 30.0, distance: float = 1.25,
                      focal: float = 64.0) -> Cameras:
  """`num_frames` orbit cameras at one elevation, azimuth k * 360 / num_frames (k = 0..N-1), looking at the origin;
  focal length in pixels (= focal scale x image width)."""
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  azimuth = np.arange(num_frames) * (360.0 / num_frames)
  return orbit_cameras(np.full(num_frames, float(elevation_deg)), azimuth, distance, focal)
