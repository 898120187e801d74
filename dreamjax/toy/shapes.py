"""Procedural toy objects as analytic fields: primitives given by signed distance functions (SDFs), coloured by part.

World units, z up, every object inside radius 0.6 of the origin. A primitive of kind k at centre c with scale s has
SDF s · sdf_k((x - c) / s), where the unit primitives are (all axis-aligned, centred at the origin):

  sphere    radius 0.45                                    volume 4/3 π r³
  cube      half-side 0.32                                 volume (2a)³
  cylinder  radius 0.35, half-height 0.35 (axis z)         volume π r² (2h)
  cone      base radius 0.40 at z = -0.35, apex at +0.35   volume π r² (2h) / 3
  torus     major radius 0.36, minor 0.14, lying in z = 0   volume 2 π² R r²

An object is the union (min of SDFs) of one or two parts; its albedo is the colour of the part nearest to the point.
Its density pre-activation is SHARPNESS · (-sdf) + OFFSET (density = trunc_exp(pre) as in nerf/render.py): the
optical depth reaches 1 about 0.03 inside the surface, and the halo outside is thin (integral e^OFFSET / SHARPNESS).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax import cameras as cam_lib

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.15),
}
COLOUR_NAMES = tuple(COLOURS)

# Unit primitive dimensions (world units); see the module docstring.
SPHERE_R = 0.45
CUBE_A = 0.32
CYL_R, CYL_H = 0.35, 0.35
CONE_R, CONE_H = 0.40, 0.35
TORUS_R, TORUS_r = 0.36, 0.14

SHARPNESS = 100.0  # density pre-activation per unit of signed distance
OFFSET = 2.0  # pre-activation on the surface (density e^2)
MAX_PARTS = 2


def closed_form_volume(shape: str, scale: float = 1.0) -> float:
  """Exact volume (world units³) of a unit primitive scaled by `scale`."""
  v = {"sphere": 4.0 / 3.0 * np.pi * SPHERE_R ** 3,
       "cube": (2 * CUBE_A) ** 3,
       "cylinder": np.pi * CYL_R ** 2 * 2 * CYL_H,
       "cone": np.pi * CONE_R ** 2 * 2 * CONE_H / 3.0,
       "torus": 2 * np.pi ** 2 * TORUS_R * TORUS_r ** 2}[shape]
  return float(v * scale ** 3)


# ----------------------------------------------------------------------------------------------- unit SDFs


def _len(*xs):
  return jnp.sqrt(sum(x * x for x in xs) + 1e-12)


def _box2(q, z, a, h):
  """SDF of the 2-D box |q| <= a, |z| <= h (q, z [...])."""
  dq, dz = jnp.abs(q) - a, jnp.abs(z) - h
  return _len(jnp.maximum(dq, 0.0), jnp.maximum(dz, 0.0)) + jnp.minimum(jnp.maximum(dq, dz), 0.0)


def _segment(px, py, ax, ay, bx, by):
  """Distance from points (px, py) to the segment a-b."""
  ex, ey = bx - ax, by - ay
  h = jnp.clip(((px - ax) * ex + (py - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
  return _len(px - ax - h * ex, py - ay - h * ey)


def sdf_sphere(p):
  return _len(p[..., 0], p[..., 1], p[..., 2]) - SPHERE_R


def sdf_cube(p):
  d = jnp.abs(p) - CUBE_A
  outside = _len(*(jnp.maximum(d[..., i], 0.0) for i in range(3)))
  return outside + jnp.minimum(jnp.max(d, axis=-1), 0.0)


def sdf_cylinder(p):
  return _box2(_len(p[..., 0], p[..., 1]), p[..., 2], CYL_R, CYL_H)


def sdf_cone(p):
  """Exact SDF of the solid of revolution of the triangle (0,-h), (r,-h), (0,h) in (radial, z)."""
  q, z = _len(p[..., 0], p[..., 1]), p[..., 2]
  d_base = _segment(q, z, 0.0, -CONE_H, CONE_R, -CONE_H)
  d_slant = _segment(q, z, CONE_R, -CONE_H, 0.0, CONE_H)
  inside = (z > -CONE_H) & (q < CONE_R * (CONE_H - z) / (2 * CONE_H))
  d = jnp.minimum(d_base, d_slant)
  return jnp.where(inside, -d, d)


def sdf_torus(p):
  return _len(_len(p[..., 0], p[..., 1]) - TORUS_R, p[..., 2]) - TORUS_r


_UNIT_SDFS = (sdf_sphere, sdf_cube, sdf_cylinder, sdf_cone, sdf_torus)


def unit_sdf(kind, p):
  """SDF [...] of unit primitive `kind` (int index into SHAPES, scalar, may be traced) at points p [..., 3]."""
  return jnp.select([kind == i for i in range(len(SHAPES))], [f(p) for f in _UNIT_SDFS])


# ----------------------------------------------------------------------------------------------- objects


@dataclasses.dataclass(frozen=True)
class Part:
  shape: str
  colour: str
  centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
  scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class ToyObject:
  """One object of the world: its prompt and its parts (the first part is the 'main' one)."""
  prompt: str
  parts: tuple[Part, ...]

  @property
  def shape(self) -> str:
    return self.parts[0].shape

  @property
  def colour(self) -> str:
    return self.parts[0].colour

  @property
  def is_single(self) -> bool:
    return len(self.parts) == 1

  def arrays(self) -> dict:
    """Fixed-size array form (MAX_PARTS parts): kind [P] int32, centre [P, 3], scale [P], colour [P, 3], active [P]."""
    pad = MAX_PARTS - len(self.parts)
    parts = list(self.parts) + [self.parts[0]] * pad
    return {"kind": np.array([SHAPES.index(q.shape) for q in parts], np.int32),
            "centre": np.array([q.centre for q in parts], np.float32),
            "scale": np.array([q.scale for q in parts], np.float32),
            "colour": np.array([COLOURS[q.colour] for q in parts], np.float32),
            "active": np.array([True] * len(self.parts) + [False] * pad)}


def _two_part(bottom_colour, bottom_shape, top_colour, top_shape) -> ToyObject:
  """A main part scaled 0.7 sitting low and a second part scaled 0.5 resting on top of it (slightly sunk in)."""
  tops = {"cube": CUBE_A, "cylinder": CYL_H, "sphere": SPHERE_R, "cone": CONE_H}
  bottoms = {"sphere": SPHERE_R, "cone": CONE_H, "cube": CUBE_A, "cylinder": CYL_H}
  zb = -0.12
  top_of_bottom = zb + 0.7 * tops[bottom_shape]
  zt = top_of_bottom + 0.5 * bottoms[top_shape] - 0.02
  return ToyObject(f"a {bottom_colour} {bottom_shape} with a {top_colour} {top_shape} on top",
                   (Part(bottom_shape, bottom_colour, (0.0, 0.0, zb), 0.7),
                    Part(top_shape, top_colour, (0.0, 0.0, zt), 0.5)))


def world_objects() -> tuple[ToyObject, ...]:
  """All objects of the world: every (colour, shape) single object (20) then 4 two-part objects."""
  singles = tuple(ToyObject(f"a {c} {s}", (Part(s, c),)) for s in SHAPES for c in COLOUR_NAMES)
  pairs = (_two_part("red", "cube", "blue", "sphere"), _two_part("blue", "cube", "red", "sphere"),
           _two_part("green", "cylinder", "yellow", "cone"), _two_part("yellow", "cylinder", "green", "sphere"))
  return singles + pairs


OBJECTS = world_objects()
PROMPTS = tuple(o.prompt for o in OBJECTS)


def object_for_prompt(prompt: str) -> ToyObject:
  """The object whose prompt is `prompt` (a view suffix ', X view' is ignored)."""
  base = prompt.split(",")[0].strip().lower()
  for o in OBJECTS:
    if o.prompt == base:
      return o
  raise KeyError(f"{prompt!r} is not a prompt of the toy world; known: {', '.join(PROMPTS)}")


def stack_arrays(objects: Sequence[ToyObject]) -> dict:
  """Array forms of several objects stacked on a leading axis [N, P, ...]."""
  arrs = [o.arrays() for o in objects]
  return {k: np.stack([a[k] for a in arrs]) for k in arrs[0]}


def part_sdfs(arrs: dict, p: jnp.ndarray) -> jnp.ndarray:
  """SDF of every part [..., P] at points p [..., 3]; inactive parts are +inf-like (1e3)."""
  out = []
  for i in range(arrs["kind"].shape[0]):
    s = arrs["scale"][i]
    d = s * unit_sdf(arrs["kind"][i], (p - arrs["centre"][i]) / s)
    out.append(jnp.where(arrs["active"][i], d, 1e3))
  return jnp.stack(out, axis=-1)


def sdf(arrs: dict, p: jnp.ndarray) -> jnp.ndarray:
  """SDF [...] of the object given in array form (ToyObject.arrays()) at points p [..., 3]: the union of its parts."""
  return jnp.min(part_sdfs(arrs, p), axis=-1)


def occupancy(arrs: dict, p: jnp.ndarray) -> jnp.ndarray:
  """bool [...]: p [..., 3] is inside the object (sdf < 0)."""
  return sdf(arrs, p) < 0.0


def field(arrs: dict):
  """The object's field for nerf.render: field_fn(mean [..., 3], var) -> (density_pre [...], albedo [..., 3])."""
  colour = jnp.asarray(arrs["colour"])

  def field_fn(mean, var):
    del var
    d = part_sdfs(arrs, mean)
    nearest = jnp.argmin(d, axis=-1)
    albedo = jnp.take(colour, nearest, axis=0)
    return SHARPNESS * (-jnp.min(d, axis=-1)) + OFFSET, albedo
  return field_fn


def visible_part(arrs: dict, cams: cam_lib.Cameras, height: int, width: int, num_steps: int = 96,
                 tol: float = 1e-3) -> jnp.ndarray:
  """Analytic visible part [N, H, W] int32 of pixel-centre rays (cameras.camera_rays): the index of the part whose
  surface the ray meets first, -1 where it misses the object.

  Sphere tracing of the SDF: a ray hits when the SDF falls below `tol` within distance 4 of the camera, and the hit
  belongs to the part of smallest SDF there. Every SDF here is exact or a lower bound on the distance (the union),
  so sphere tracing never steps through a surface.
  """
  o, d = cam_lib.camera_rays(cams, height, width)

  def step(carry, _):
    t, hit = carry
    dist = sdf(arrs, o + t[..., None] * d)
    hit = hit | (dist < tol)
    return (jnp.where(hit, t, jnp.minimum(t + dist, 4.0)), hit), None
  t0 = jnp.zeros(o.shape[:-1])
  (t, hit), _ = jax.lax.scan(step, (t0, jnp.zeros(o.shape[:-1], bool)), None, length=num_steps)
  part = jnp.argmin(part_sdfs(arrs, o + t[..., None] * d), axis=-1).astype(jnp.int32)
  return jnp.where(hit, part, -1)


def silhouette(arrs: dict, cams: cam_lib.Cameras, height: int, width: int, num_steps: int = 96,
               tol: float = 1e-3) -> jnp.ndarray:
  """Analytic silhouette [N, H, W] bool: the pixels whose ray meets the object (`visible_part` >= 0)."""
  return visible_part(arrs, cams, height, width, num_steps, tol) >= 0


if __name__ == "__main__":  # python -m dreamjax.toy.shapes: the toy prompts, one per line
  print(*PROMPTS, sep="\n")
