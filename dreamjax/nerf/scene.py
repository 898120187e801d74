"""The trainable scene: a `NeRFMLP` for the object and a `BackgroundMLP`, their parameters in one pytree
`{'nerf': ..., 'background': ...}`, and how they are rendered (render settings, the annealed IPE variance).

`Scene` is built once from a config (`Scene.from_config`) and then used by everything that renders: the train
step's `objective.render_view`, previews, turntables, meshes and evaluation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import schedules
from dreamjax.nerf import mlp, render


@dataclasses.dataclass(frozen=True)
class Scene:
  """The two Flax modules, how they are rendered, and the training resolution. Frozen and hashable."""
  nerf: mlp.NeRFMLP
  background: mlp.BackgroundMLP
  render: render.RenderSettings
  ipe_variance: schedules.Ramp  # IPE variance lambda_Sigma (world units^2) per step
  height: int  # training render size (pixels)
  width: int

  @classmethod
  def from_config(cls, config) -> "Scene":
    """From a run config's `nerf`, `render` and `shading` sections (and `train.num_steps` for the IPE anneal)."""
    c, r = config.nerf, config.render
    nerf = mlp.NeRFMLP(num_freqs=c.num_freqs, width=c.width, num_blocks=c.num_blocks,
                       blob_strength=c.blob_strength, blob_width=c.blob_width,
                       density_bias_init=c.density_bias_init)
    bg = mlp.BackgroundMLP(num_freqs=c.bg_num_freqs, width=c.bg_width, depth=c.bg_depth)
    settings = render.RenderSettings(radius=r.radius, near=r.near, num_coarse=r.num_coarse, num_fine=r.num_fine,
                                     resample_padding=r.resample_padding, ambient=config.shading.ambient,
                                     diffuse=config.shading.diffuse, ray_chunks=int(r.ray_chunks))
    ipe = schedules.ramp_over_fraction(c.ipe_var_start, c.ipe_var_end, c.ipe_anneal_frac, config.train.num_steps)
    return cls(nerf=nerf, background=bg, render=settings, ipe_variance=ipe, height=int(r.height),
               width=int(r.width))

  def init(self, rng) -> dict:
    """Fresh parameters {'nerf', 'background'}."""
    k1, k2 = jax.random.split(rng)
    return {"nerf": self.nerf.init(k1, jnp.zeros((1, 3)), jnp.float32(1e-2))["params"],
            "background": self.background.init(k2, jnp.zeros((1, 3)))["params"]}

  def fields(self, params: dict):
    """(field_fn, background_fn) closures over `params` for the renderer (`nerf.render`)."""
    field_fn = lambda mean, var: self.nerf.apply({"params": params["nerf"]}, mean, var)
    background_fn = lambda d: self.background.apply({"params": params["background"]}, d)
    return field_fn, background_fn

  def density_fn(self, params: dict, *, step):
    """points [N, 3] -> (density [N] (1/world unit), albedo [N, 3]) at the IPE variance of `step` (jitted)."""
    field_fn, _ = self.fields(params)
    var = self.ipe_variance(step)

    @jax.jit
    def fn(points):
      pre, albedo = field_fn(points, var)
      return mlp.trunc_exp(pre), albedo
    return fn

  def render_views(self, params: dict, cams: cam_lib.Cameras, rng, *, step, light_pos, mode, height=None,
                   width=None, randomized=True, background_fn=None, **kw) -> dict:
    """Renders `cams` at the training resolution (or height/width), differentiably. light_pos [N, 3], mode [N].

    Returns `render.render_views` outputs [N, H, W, ...]; `background_fn` replaces the background MLP.
    """
    field_fn, bg_fn = self.fields(params)
    return render.render_views(field_fn, background_fn or bg_fn, cams, height or self.height, width or self.width,
                               rng, var=self.ipe_variance(step), light_pos=light_pos, mode=mode,
                               settings=self.render, randomized=randomized, **kw)

  def render_chunked(self, params: dict, cams: cam_lib.Cameras, *, step, light_pos, height: int, width: int,
                     chunk: int = 4096, all_modes: bool = True,
                     keep=("rgb_modes", "opacity", "depth", "albedo", "normal")) -> dict:
    """Deterministic render of many pixels in fixed-size ray chunks (previews, videos, evaluation); bounded memory.

    light_pos [N, 3]. Returns numpy arrays [N, H, W, ...]; `rgb_modes` is [N, H, W, 3 modes, 3].
    """
    var = self.ipe_variance(step)
    origins, directions = cam_lib.camera_rays(cams, height, width)
    n = origins.shape[0]
    lights = jnp.broadcast_to(light_pos[:, None, None, :], origins.shape)
    flat = [np.asarray(x).reshape(-1, 3) for x in (origins, directions, lights)]
    total = flat[0].shape[0]
    pad = (-total) % chunk
    flat = [np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for x in flat]
    render_chunk = functools.partial(_render_chunk, nerf=self.nerf, bg=self.background, settings=self.render,
                                     all_modes=all_modes, keep=tuple(keep))
    pieces = [jax.device_get(render_chunk(params, *(x[i:i + chunk] for x in flat), var))
              for i in range(0, total + pad, chunk)]
    return {k: np.concatenate([pc[k] for pc in pieces])[:total].reshape((n, height, width) + pieces[0][k].shape[1:])
            for k in keep}


@functools.partial(jax.jit, static_argnames=("nerf", "bg", "settings", "all_modes", "keep"))
def _render_chunk(params, o, d, l, var, *, nerf, bg, settings, all_modes, keep):
  """One deterministic chunk for `Scene.render_chunked`; module-level and keyed on hashable statics (the Flax
  modules, settings; not the step's IPE variance, an argument), so repeated previews reuse one compilation."""
  field_fn = lambda mean, v: nerf.apply({"params": params["nerf"]}, mean, v)
  bg_fn = lambda x: bg.apply({"params": params["background"]}, x)
  out = render.render_rays(field_fn, bg_fn, o, d, jax.random.PRNGKey(0), var=var, light_pos=l,
                           mode=jnp.zeros(o.shape[0], jnp.int32), settings=settings, randomized=False,
                           all_modes=all_modes)
  return {k: out[k] for k in keep}
