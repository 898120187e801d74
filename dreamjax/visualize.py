"""Pictures of a scene for people: orbit cameras and lights for previews, normal and depth images, and the preview
grid (4 cameras × albedo, shaded, textureless, normals, depth) that training, `render_preview` and exports share."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import video
from dreamjax.nerf.scene import Scene

COLUMNS = ("albedo", "shaded", "textureless", "normals", "depth")


@dataclasses.dataclass(frozen=True)
class Orbit:
  """Where previews and turntables look from: cameras on a circle around the origin."""
  elevation: float = 30.0  # degrees (DF evaluates at 30°)
  distance: float = 1.5  # world units
  focal: float = 1.0  # focal length as a multiple of the image width

  @classmethod
  def from_config(cls, config) -> "Orbit":
    e = config.export
    return cls(elevation=float(e.video_elevation), distance=float(e.video_distance), focal=float(e.video_focal))

  def cameras(self, num_views: int, size: int) -> cam_lib.Cameras:
    """`num_views` cameras at azimuths k * 360 / num_views (k = 0..N-1) for size × size images."""
    return cam_lib.turntable_cameras(num_views, self.elevation, self.distance, self.focal * size)


def preview_lights(cams: cam_lib.Cameras) -> jnp.ndarray:
  """A light above and to the right of each camera, 1.5 units from the origin, so shading shows relief. [N, 3]."""
  right, up = cams.c2w[..., 0], cams.c2w[..., 1]
  d = cams.origins / jnp.linalg.norm(cams.origins, axis=-1, keepdims=True) + 0.6 * right + 0.6 * up
  return 1.5 * d / jnp.linalg.norm(d, axis=-1, keepdims=True)


def normal_image(out: dict) -> np.ndarray:
  """World-space normals of `Scene.render_chunked` outputs as colours (0.5 + 0.5 n) over white, [..., H, W, 3]."""
  opacity = out["opacity"][..., None]
  normals = out["normal"] / np.maximum(np.linalg.norm(out["normal"], axis=-1, keepdims=True), 1e-6)
  return (0.5 + 0.5 * normals) * opacity + (1.0 - opacity)


def depth_image(out: dict, lo: float, hi: float) -> np.ndarray:
  """Expected surface depth mapped from [lo, hi] (world units) to grey [0, 1], over white, [..., H, W, 3]."""
  opacity = out["opacity"][..., None]
  depth = out["depth"] / np.maximum(out["opacity"], 1e-6)
  grey = np.clip((depth - lo) / (hi - lo), 0, 1)[..., None] * opacity + (1.0 - opacity)
  return np.repeat(grey, 3, -1)


def render_panels(scene: Scene, params, cams: cam_lib.Cameras, *, step, size: int, distance: float) -> np.ndarray:
  """Panels [N, 5, H, W, 3] in [0, 1]: albedo, shaded, textureless, normals, depth for each camera (depth shown over
  distance ± the scene radius)."""
  out = scene.render_chunked(params, cams, step=step, light_pos=preview_lights(cams), height=size, width=size)
  radius = scene.render.radius
  modes = [out["rgb_modes"][..., m, :] for m in range(3)]
  panels = modes + [normal_image(out), depth_image(out, distance - radius, distance + radius)]
  return np.clip(np.stack(panels, axis=1), 0.0, 1.0)


def preview_grid(scene: Scene, params, orbit: Orbit, *, step, size: int = 96, num_views: int = 4) -> np.ndarray:
  """One image [rows·H, cols·W, 3]: rows are cameras at azimuth 0, 90, 180, 270 (front, side, back, side), columns
  are `COLUMNS`."""
  panels = render_panels(scene, params, orbit.cameras(num_views, size), step=step, size=size,
                         distance=orbit.distance)
  return video.image_grid(panels.reshape((-1,) + panels.shape[2:]), rows=num_views, cols=len(COLUMNS))


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8, value: float = 1.0) -> np.ndarray:
  """Two images [H, W1, C] and [H, W2, C] next to each other with a `gap`-pixel column of `value` between them
  (an edit's preview: source | edit). Returns [H, W1 + gap + W2, C]."""
  left, right = np.asarray(left), np.asarray(right)
  if left.shape[0] != right.shape[0] or left.shape[2:] != right.shape[2:]:
    raise ValueError(f"side_by_side needs equal heights and channels, got {left.shape} and {right.shape}")
  column = np.full((left.shape[0], gap) + left.shape[2:], value, left.dtype)
  return np.concatenate([left, column, right.astype(left.dtype)], axis=1)
