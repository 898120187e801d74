"""Preview grids of a scene: 4 cameras (rows) × albedo, shaded, textureless, normals, depth (columns).

  python -m dreamjax.render_preview --config configs/dreamfusion.py --out preview.png
renders the initial scene (the density blob) from the config's seed; `--workdir runs/x` renders the latest checkpoint
of a run instead. The train loop writes the same grid at intervals.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import video
from dreamjax.nerf import scene

COLUMNS = ("albedo", "shaded", "textureless", "normals", "depth")


def preview_cameras(config: ml_collections.ConfigDict, num_views: int = 4, size: int = 96):
  """Orbit cameras at the export elevation, azimuths 0, 90, 180, 270 (front, side, back, side)."""
  az = np.arange(num_views) * 360.0 / num_views
  return cam_lib.orbit_cameras(np.full(num_views, config.export.video_elevation), az,
                               config.export.video_distance, config.export.video_focal * size)


def preview_lights(cams: cam_lib.Cameras) -> jnp.ndarray:
  """A light above and to the right of each camera, 1.5 units from the origin, so shading shows relief."""
  right, up = cams.c2w[..., 0], cams.c2w[..., 1]
  d = cams.origins / jnp.linalg.norm(cams.origins, axis=-1, keepdims=True) + 0.6 * right + 0.6 * up
  return 1.5 * d / jnp.linalg.norm(d, axis=-1, keepdims=True)


def normal_image(out: dict) -> np.ndarray:
  """World-space normals of `render_scene_chunked` outputs as colours (0.5 + 0.5 n) over white, [..., H, W, 3]."""
  opacity = out["opacity"][..., None]
  normals = out["normal"] / np.maximum(np.linalg.norm(out["normal"], axis=-1, keepdims=True), 1e-6)
  return (0.5 + 0.5 * normals) * opacity + (1.0 - opacity)


def render_panels(params, config, cams, *, step, size: int) -> np.ndarray:
  """Panels [N, 5, H, W, 3] in [0, 1]: albedo, shaded, textureless, normals, depth for each camera."""
  out = scene.render_scene_chunked(params, config, cams, step=step, light_pos=preview_lights(cams), height=size,
                                   width=size)
  opacity = out["opacity"][..., None]
  normal_img = normal_image(out)
  depth = out["depth"] / np.maximum(out["opacity"], 1e-6)
  lo, hi = config.export.video_distance - config.render.radius, config.export.video_distance + config.render.radius
  depth_img = np.clip((depth - lo) / (hi - lo), 0, 1)[..., None] * opacity + (1.0 - opacity)
  modes = [out["rgb_modes"][..., m, :] for m in range(3)]
  return np.clip(np.stack(modes + [normal_img, np.repeat(depth_img, 3, -1)], axis=1), 0.0, 1.0)


def preview_grid(params, config, *, step, size: int = 96, num_views: int = 4) -> np.ndarray:
  """One image [rows·H, cols·W, 3]: rows are cameras, columns are `COLUMNS`."""
  panels = render_panels(params, config, preview_cameras(config, num_views, size), step=step, size=size)
  return video.image_grid(panels.reshape((-1,) + panels.shape[2:]), rows=num_views, cols=len(COLUMNS))


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs restores at INFO
  cfg = flags.FLAGS.config
  if flags.FLAGS.workdir:
    from dreamjax import checkpoint as ckpt_lib
    try:
      state = ckpt_lib.restore_latest_params(flags.FLAGS.workdir)
    except ckpt_lib.CheckpointError as e:
      sys.exit(f"render_preview: {e}")
    params, step, cfg = state.params, state.step, state.config
  else:
    params, step = scene.init_params(jax.random.PRNGKey(cfg.seed), cfg), 0
  grid = preview_grid(params, cfg, step=step, size=flags.FLAGS.size)
  path = video.save_png(grid, flags.FLAGS.out)
  print(f"wrote {path} (rows: 4 cameras at azimuth 0/90/180/270; columns: {', '.join(COLUMNS)})")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/dreamfusion.py", "Config file (any field overridable).")
  flags.DEFINE_string("out", "preview.png", "Output PNG.")
  flags.DEFINE_string("workdir", "", "Render the latest checkpoint of this run instead of the initial scene.")
  flags.DEFINE_integer("size", 96, "Panel size in pixels.")
  app.run(main)
