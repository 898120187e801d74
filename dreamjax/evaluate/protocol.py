"""The views DreamFusion's CLIP R-Precision is computed from (DF §4, A.3; Dream Fields' evaluation code): cameras at
30° elevation looking at the origin from the run's turntable distance and focal length, at given azimuths (one
render, azimuth 0 = the front, by default), rendered square at the CLIP input size over a white background.
Color = the shaded render (albedo lit by the preview light), Geo = the textureless render (the same light on a white
albedo), both from `Scene.render_chunked`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import visualize
from dreamjax.nerf.scene import Scene

KINDS = ("color", "geo")  # DF Table 1's columns
_MODE = {"color": cam_lib.SHADED, "geo": cam_lib.TEXTURELESS}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Where the evaluation renders are made from."""
  elevation: float = 30.0  # degrees
  azimuths: tuple[float, ...] = (0.0,)  # degrees; DF averages over several, Dream Fields uses one
  background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white

  @classmethod
  def evenly(cls, num_views: int, elevation: float = 30.0, offset: float = 0.0) -> "Protocol":
    """`num_views` azimuths offset + k · 360 / num_views."""
    if num_views < 1:
      raise ValueError(f"--views must be >= 1, got {num_views}")
    return cls(elevation=float(elevation), azimuths=tuple(float(offset + k * 360.0 / num_views)
                                                          for k in range(num_views)))

  def cameras(self, orbit: visualize.Orbit, size: int) -> cam_lib.Cameras:
    """One camera per azimuth for size × size renders, at the orbit's distance and focal length."""
    n = len(self.azimuths)
    return cam_lib.orbit_cameras(np.full(n, self.elevation), np.array(self.azimuths), orbit.distance,
                                 orbit.focal * size)

  def to_json(self) -> dict:
    return {"elevation": self.elevation, "azimuths": list(self.azimuths), "background": list(self.background)}


def over_background(rgb_modes: np.ndarray, opacity: np.ndarray, scene_background: np.ndarray,
                    colour) -> np.ndarray:
  """Re-composites renders over a solid colour: rgb_modes [..., M, 3] were composited over `scene_background`
  [..., 3] with `opacity` [...]; returns sum(w c) + (1 - opacity) · colour, [..., M, 3]."""
  clear = (1.0 - opacity)[..., None, None]
  return rgb_modes + clear * (np.asarray(colour, np.float32) - scene_background[..., None, :])


def render(scene: Scene, params, protocol: Protocol, orbit: visualize.Orbit, *, step, size: int) -> dict:
  """{'color', 'geo'}: renders [A, size, size, 3] in [0, 1] at the protocol's azimuths A."""
  cams = protocol.cameras(orbit, size)
  out = scene.render_chunked(params, cams, step=step, light_pos=visualize.preview_lights(cams), height=size,
                             width=size, keep=("rgb_modes", "opacity", "background"))
  images = np.clip(over_background(out["rgb_modes"], out["opacity"], out["background"], protocol.background), 0, 1)
  return {k: images[..., _MODE[k], :] for k in KINDS}
