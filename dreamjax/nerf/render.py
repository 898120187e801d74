"""Volume rendering of a density/albedo field inside a bounding sphere: sampling, compositing, normals, shading and
the DreamFusion regularisers. Pure functions of arrays; the fields come in as callables.

A field is `field_fn(mean [..., 3], var) -> (density_pre [...], albedo [..., 3])`, density = trunc_exp(density_pre).
A background is `background_fn(directions [..., 3]) -> rgb [..., 3]`.

Sampling is hierarchical with a shared field (as in Mip-NeRF): `num_coarse` stratified intervals between the ray's
entry and exit of the sphere, then `num_fine` intervals resampled from the coarse weights (no gradient through the
coarse pass); the image is rendered from the fine intervals.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dreamjax import cameras as cam_lib
from dreamjax.nerf.mlp import trunc_exp

FieldFn = Callable[[jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]
BackgroundFn = Callable[[jnp.ndarray], jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class RenderSettings:
  """Ray sampling and shading constants."""
  radius: float = 1.4  # bounding sphere radius (DF §3.1)
  near: float = 0.05  # samples start at least this far from the camera (the camera may be inside the sphere)
  num_coarse: int = 64  # stratified intervals per ray (coarse pass, no gradient)
  num_fine: int = 32  # intervals resampled from the coarse weights (rendered, differentiated)
  resample_padding: float = 0.01  # added to coarse weights before resampling (Mip-NeRF)
  ambient: float = 0.1  # ambient light l_a when shading is on (DF A.2)
  diffuse: float = 0.9  # diffuse light colour l_rho when shading is on (DF A.2)
  ray_chunks: int = 1  # render_views: rays in this many sequential, rematerialised chunks (memory / ray_chunks)


def intersect_sphere(origins, directions, radius):
  """Ray/sphere intersection for unit directions. Returns (t_enter, t_exit, hit), each [...]."""
  b = jnp.sum(origins * directions, axis=-1)
  c = jnp.sum(origins * origins, axis=-1) - radius ** 2
  disc = b * b - c
  hit = disc > 0
  root = jnp.sqrt(jnp.maximum(disc, 0.0))
  return -b - root, -b + root, hit


def stratified_edges(rng, near, far, num: int, randomized: bool = True):
  """Interval edges [R, num + 1] splitting [near, far] into `num` strata, each interior edge jittered within its own
  stratum (deterministic midpoints when not randomized)."""
  u = jnp.linspace(0.0, 1.0, num + 1)
  if randomized:
    jitter = (jax.random.uniform(rng, near.shape + (num + 1,)) - 0.5) / num
    u = jnp.clip(u + jitter.at[..., 0].set(0.0).at[..., -1].set(0.0), 0.0, 1.0)
  return near[..., None] + (far - near)[..., None] * u


def resample_edges(rng, edges, weights, num: int, padding: float = 0.01, randomized: bool = True):
  """Inverse-CDF resampling of `num + 1` sorted edges from the piecewise-constant pdf given by `weights` [R, S] on
  `edges` [R, S + 1]. The result carries no gradient."""
  edges, weights = jax.lax.stop_gradient(edges), jax.lax.stop_gradient(weights)
  w = weights + padding
  pdf = w / jnp.sum(w, axis=-1, keepdims=True)
  cdf = jnp.concatenate([jnp.zeros_like(pdf[..., :1]), jnp.minimum(1.0, jnp.cumsum(pdf, axis=-1))], axis=-1)
  cdf = cdf.at[..., -1].set(1.0)
  u = (jnp.arange(num + 1, dtype=edges.dtype) + 0.5) / (num + 1)
  u = jnp.broadcast_to(u, edges.shape[:-1] + (num + 1,))
  if randomized:
    u = jnp.clip(u + (jax.random.uniform(rng, u.shape) - 0.5) / (num + 1), 0.0, 1.0)
  u = jnp.sort(u, axis=-1)
  idx = jax.vmap(lambda c, q: jnp.searchsorted(c, q, side="right"))(
      cdf.reshape(-1, cdf.shape[-1]), u.reshape(-1, u.shape[-1])).reshape(u.shape)
  idx = jnp.clip(idx, 1, cdf.shape[-1] - 1)
  c0, c1 = jnp.take_along_axis(cdf, idx - 1, -1), jnp.take_along_axis(cdf, idx, -1)
  e0, e1 = jnp.take_along_axis(edges, idx - 1, -1), jnp.take_along_axis(edges, idx, -1)
  frac = jnp.clip((u - c0) / jnp.maximum(c1 - c0, 1e-12), 0.0, 1.0)
  new = e0 + frac * (e1 - e0)
  # Keep the full ray extent so empty space is never skipped entirely.
  new = new.at[..., 0].set(edges[..., 0]).at[..., -1].set(edges[..., -1])
  return jax.lax.stop_gradient(jnp.sort(new, axis=-1))


def alpha_weights(density, edges):
  """Volume-rendering weights w_i = alpha_i prod_{j<i}(1 - alpha_j), alpha_i = 1 - exp(-tau_i delta_i).

  density [R, S] (>= 0), edges [R, S + 1] (unit-direction ray distances). Returns weights [R, S].
  """
  delta = edges[..., 1:] - edges[..., :-1]
  tau_delta = density * delta
  alpha = 1.0 - jnp.exp(-tau_delta)
  # Transmittance exp(-sum_{j<i} tau_j delta_j): an exclusive cumulative sum, stable for large optical depths.
  accum = jnp.concatenate([jnp.zeros_like(tau_delta[..., :1]), jnp.cumsum(tau_delta[..., :-1], axis=-1)], axis=-1)
  return alpha * jnp.exp(-accum)


def field_normals(field_fn: FieldFn, points, var):
  """Evaluates the field and its normals n = -grad(tau)/|grad(tau)| by autodiff.

  points [..., 3]. Returns (density_pre [...], albedo [..., 3], normals [..., 3]). The gradient of the
  pre-activation has the density gradient's direction (tau = exp(pre) is monotone) and is better conditioned.
  """
  def pre_fn(x):
    pre, albedo = field_fn(x, var)
    return pre, albedo
  pre, vjp_fn, albedo = jax.vjp(pre_fn, points, has_aux=True)
  (grad,) = vjp_fn(jnp.ones_like(pre))
  norm = jnp.sqrt(jnp.maximum(jnp.sum(grad * grad, axis=-1, keepdims=True), 1e-20))
  return pre, albedo, -grad / norm


def lambertian(albedo, normals, points, light_pos, mode, ambient: float = 0.1, diffuse: float = 0.9):
  """DF Eq. 7: c = rho ∘ (l_rho · max(0, n·(l - mu)/|l - mu|) + l_a), with the mode picking the terms.

  albedo, normals, points [..., 3]; light_pos [..., 3]; mode [...] int (cameras.ALBEDO | SHADED | TEXTURELESS).
  ALBEDO: l_a = 1, l_rho = 0 (c = rho). SHADED: l_a = ambient, l_rho = diffuse. TEXTURELESS: as SHADED with rho = 1.
  """
  to_light = light_pos - points
  to_light = to_light / jnp.sqrt(jnp.maximum(jnp.sum(to_light ** 2, -1, keepdims=True), 1e-20))
  cos = jnp.maximum(0.0, jnp.sum(normals * to_light, axis=-1, keepdims=True))
  mode = mode[..., None]
  l_a = jnp.where(mode == cam_lib.ALBEDO, 1.0, ambient)
  l_rho = jnp.where(mode == cam_lib.ALBEDO, 0.0, diffuse)
  rho = jnp.where(mode == cam_lib.TEXTURELESS, jnp.ones_like(albedo), albedo)
  return rho * (l_rho * cos + l_a)


def render_rays(field_fn: FieldFn, background_fn: BackgroundFn, origins, directions, rng, *, var, light_pos, mode,
                settings: RenderSettings = RenderSettings(), randomized: bool = True, all_modes: bool = False) -> dict:
  """Renders R rays.

  origins, directions [R, 3] (unit directions); var: IPE variance (scalar); light_pos [R, 3]; mode [R] int.
  Returns a dict of per-ray outputs: rgb [R, 3] (composited over the background), opacity [R], depth [R]
  (expected ray distance of the surface, 0 where empty), albedo [R, 3], normal [R, 3] (weighted, unnormalised),
  loss_orient [R] (sum_i sg(w_i) max(0, n_i·v)^2), loss_opacity [R] (sqrt(opacity^2 + 0.01)),
  weights [R, S] and t_mid [R, S]. With all_modes, also rgb_modes [R, 3 modes, 3]: the image in every shading mode
  (ALBEDO, SHADED, TEXTURELESS) from one field evaluation (previews); `mode` is then ignored.
  """
  k_coarse, k_fine = jax.random.split(rng)
  t0, t1, hit = intersect_sphere(origins, directions, settings.radius)
  near = jnp.maximum(t0, settings.near)
  far = jnp.where(hit, jnp.maximum(t1, near), near)

  def points_at(edges):
    t_mid = 0.5 * (edges[..., 1:] + edges[..., :-1])
    return origins[..., None, :] + t_mid[..., None] * directions[..., None, :], t_mid

  # Coarse pass: forward only, for the sampling distribution.
  edges_c = stratified_edges(k_coarse, near, far, settings.num_coarse, randomized)
  pts_c, _ = points_at(edges_c)
  pre_c, _ = field_fn(jax.lax.stop_gradient(pts_c), var)
  weights_c = alpha_weights(trunc_exp(jax.lax.stop_gradient(pre_c)), edges_c)

  # Fine pass: resampled intervals, rendered with normals and shading.
  edges = resample_edges(k_fine, edges_c, weights_c, settings.num_fine, settings.resample_padding, randomized)
  pts, t_mid = points_at(edges)
  pre, albedo, normals = field_normals(field_fn, pts, var)
  weights = alpha_weights(trunc_exp(pre), edges)
  n_rays, n_samples = weights.shape
  colour = lambertian(albedo, normals, pts, jnp.broadcast_to(light_pos[:, None, :], pts.shape),
                      jnp.broadcast_to(mode[:, None], (n_rays, n_samples)), settings.ambient, settings.diffuse)

  w = weights[..., None]
  opacity = jnp.sum(weights, axis=-1)
  background = background_fn(directions)
  rgb = jnp.sum(w * colour, axis=-2) + (1.0 - opacity[..., None]) * background
  n_dot_v = jnp.sum(normals * directions[..., None, :], axis=-1)
  extra = {}
  if all_modes:
    composite = lambda c: jnp.sum(w * c, axis=-2) + (1.0 - opacity[..., None]) * background
    extra["rgb_modes"] = jnp.stack([
        composite(lambertian(albedo, normals, pts, jnp.broadcast_to(light_pos[:, None, :], pts.shape),
                             jnp.full((n_rays, n_samples), m), settings.ambient, settings.diffuse))
        for m in (cam_lib.ALBEDO, cam_lib.SHADED, cam_lib.TEXTURELESS)], axis=-2)
  return extra | {
      "rgb": rgb,
      "opacity": opacity,
      "depth": jnp.sum(weights * t_mid, axis=-1),
      "albedo": jnp.sum(w * albedo, axis=-2),
      "normal": jnp.sum(w * normals, axis=-2),
      "background": background,
      "loss_orient": jnp.sum(jax.lax.stop_gradient(weights) * jnp.maximum(0.0, n_dot_v) ** 2, axis=-1),
      "loss_opacity": jnp.sqrt(opacity ** 2 + 0.01),
      "weights": weights,
      "t_mid": t_mid,
  }


def render_views(field_fn: FieldFn, background_fn: BackgroundFn, cams: cam_lib.Cameras, height: int, width: int,
                 rng, *, var, light_pos, mode, settings: RenderSettings = RenderSettings(), randomized: bool = True,
                 keep=("rgb", "opacity", "depth", "albedo", "normal", "loss_orient", "loss_opacity")) -> dict:
  """Renders N cameras. light_pos [N, 3], mode [N] int. Returns the `keep` outputs of `render_rays` reshaped to
  [N, H, W, ...].

  With settings.ray_chunks = K > 1 the N*H*W rays are rendered as K equal chunks in sequence (`lax.map`), each under
  `jax.checkpoint`: the backward pass recomputes one chunk at a time, so the renderer's activation memory shrinks
  about K-fold for one more forward pass. Chunk i draws its samples with fold_in(rng, i) (same distribution, other
  draws than K = 1 when randomized; identical results when not).
  """
  origins, directions = cam_lib.camera_rays(cams, height, width)
  n = origins.shape[0]
  flat = lambda x: x.reshape((-1,) + x.shape[4:] if x.ndim > 4 else (-1, x.shape[-1]))
  per_ray = lambda x: jnp.broadcast_to(x[:, None, None], (n, height, width) + x.shape[1:]).reshape(
      (n * height * width,) + x.shape[1:])
  rays = (flat(origins), flat(directions), per_ray(light_pos), per_ray(mode))

  def render(rays, key):
    o, d, light, m = rays
    out = render_rays(field_fn, background_fn, o, d, key, var=var, light_pos=light, mode=m, settings=settings,
                      randomized=randomized)
    return {k: out[k] for k in keep}

  k = int(settings.ray_chunks)
  r = n * height * width
  if k <= 1:
    out = render(rays, rng)
  else:
    if r % k:
      raise ValueError(f"render.ray_chunks={k} does not divide the {r} rays of {n} camera(s) x {height}x{width}")
    chunked = jax.tree.map(lambda x: x.reshape((k, r // k) + x.shape[1:]), rays)
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(k))
    out = jax.lax.map(jax.checkpoint(lambda a: render(*a)), (chunked, keys))
    out = jax.tree.map(lambda x: x.reshape((r,) + x.shape[2:]), out)
  return {name: out[name].reshape((n, height, width) + out[name].shape[1:]) for name in keep}
