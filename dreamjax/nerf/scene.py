"""The trainable scene: a `NeRFMLP` for the object and a `BackgroundMLP`, with their parameters in one pytree
`{'nerf': ..., 'background': ...}`, and the render call the train step, previews and exports share."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from dreamjax import cameras as cam_lib
from dreamjax.nerf import encoding, mlp, render


def make_models(config: ml_collections.ConfigDict) -> tuple[mlp.NeRFMLP, mlp.BackgroundMLP]:
  """The two Flax modules from `config.nerf`."""
  c = config.nerf
  nerf = mlp.NeRFMLP(num_freqs=c.num_freqs, width=c.width, num_blocks=c.num_blocks,
                     blob_strength=c.blob_strength, blob_width=c.blob_width,
                     density_bias_init=c.density_bias_init)
  bg = mlp.BackgroundMLP(num_freqs=c.bg_num_freqs, width=c.bg_width, depth=c.bg_depth)
  return nerf, bg


def init_params(rng, config: ml_collections.ConfigDict) -> dict:
  """Fresh scene parameters {'nerf', 'background'}."""
  nerf, bg = make_models(config)
  k1, k2 = jax.random.split(rng)
  return {"nerf": nerf.init(k1, jnp.zeros((1, 3)), jnp.float32(1e-2))["params"],
          "background": bg.init(k2, jnp.zeros((1, 3)))["params"]}


def render_settings(config: ml_collections.ConfigDict) -> render.RenderSettings:
  c = config.render
  return render.RenderSettings(radius=c.radius, near=c.near, num_coarse=c.num_coarse, num_fine=c.num_fine,
                               resample_padding=c.resample_padding, ambient=config.shading.ambient,
                               diffuse=config.shading.diffuse, ray_chunks=int(c.get("ray_chunks", 1)))


def ipe_variance(config: ml_collections.ConfigDict, step) -> jnp.ndarray:
  """The annealed IPE variance at `step` (5e-2 -> 2e-3 over `anneal_frac` of training by default)."""
  c = config.nerf
  return encoding.annealed_variance(step, int(c.ipe_anneal_frac * config.train.num_steps), c.ipe_var_start,
                                    c.ipe_var_end)


def fields(params: dict, config: ml_collections.ConfigDict):
  """(field_fn, background_fn) closures over `params` for the renderer."""
  nerf, bg = make_models(config)
  field_fn = lambda mean, var: nerf.apply({"params": params["nerf"]}, mean, var)
  background_fn = lambda d: bg.apply({"params": params["background"]}, d)
  return field_fn, background_fn


def render_scene(params: dict, config: ml_collections.ConfigDict, cams: cam_lib.Cameras, rng, *, step, light_pos,
                 mode, height=None, width=None, randomized=True, background_fn=None, **kw) -> dict:
  """Renders the scene from `cams` at the config's resolution (or height/width). Returns [N, H, W, ...] outputs."""
  field_fn, bg_fn = fields(params, config)
  h = height or config.render.height
  w = width or config.render.width
  return render.render_views(field_fn, background_fn or bg_fn, cams, h, w, rng, var=ipe_variance(config, step),
                             light_pos=light_pos, mode=mode, settings=render_settings(config),
                             randomized=randomized, **kw)


@functools.partial(jax.jit, static_argnames=("nerf", "bg", "settings", "all_modes", "keep"))
def _render_chunk(params, o, d, l, var, *, nerf, bg, settings, all_modes, keep):
  """One deterministic chunk for `render_scene_chunked`; module-level and keyed on hashable statics (the Flax
  modules, settings), so repeated previews reuse one compilation instead of recompiling a fresh closure."""
  field_fn = lambda mean, v: nerf.apply({"params": params["nerf"]}, mean, v)
  bg_fn = lambda x: bg.apply({"params": params["background"]}, x)
  out = render.render_rays(field_fn, bg_fn, o, d, jax.random.PRNGKey(0), var=var, light_pos=l,
                           mode=jnp.zeros(o.shape[0], jnp.int32), settings=settings, randomized=False,
                           all_modes=all_modes)
  return {k: out[k] for k in keep}


def render_scene_chunked(params: dict, config: ml_collections.ConfigDict, cams: cam_lib.Cameras, *, step,
                         light_pos, height: int, width: int, chunk: int = 4096, all_modes: bool = True,
                         keep=("rgb_modes", "opacity", "depth", "albedo", "normal")) -> dict:
  """Deterministic render of many pixels in fixed-size ray chunks (previews, videos, evaluation); bounded memory.

  light_pos [N, 3]. Returns numpy arrays [N, H, W, ...]; `rgb_modes` is [N, H, W, 3 modes, 3].
  """
  import numpy as np  # local: the hot path above is pure JAX
  nerf, bg = make_models(config)
  settings = render_settings(config)
  var = ipe_variance(config, step)
  origins, directions = cam_lib.camera_rays(cams, height, width)
  n = origins.shape[0]
  lights = jnp.broadcast_to(light_pos[:, None, None, :], origins.shape)
  flat = [np.asarray(x).reshape(-1, 3) for x in (origins, directions, lights)]
  total = flat[0].shape[0]
  pad = (-total) % chunk
  flat = [np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for x in flat]
  render_chunk = functools.partial(_render_chunk, nerf=nerf, bg=bg, settings=settings, all_modes=all_modes,
                                   keep=tuple(keep))
  pieces = [jax.device_get(render_chunk(params, *(x[i:i + chunk] for x in flat), var))
            for i in range(0, total + pad, chunk)]
  return {k: np.concatenate([pc[k] for pc in pieces])[:total].reshape((n, height, width) + pieces[0][k].shape[1:])
          for k in keep}
