"""Turntable videos and marching-cubes meshes of a scene.

  python -m dreamjax.export --workdir runs/hamburger [--out runs/hamburger/export]
exports the latest checkpoint of a run: `turntable.mp4` (shaded colour | textureless | normals, 360° at 30°
elevation) and `mesh.obj/.ply/.glb` with vertex colours.
"""

from __future__ import annotations

import logging
import pathlib
import sys

import jax
import ml_collections
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import mesh as mesh_lib
from dreamjax import video
from dreamjax.nerf import mlp, scene
from dreamjax.render_preview import normal_image, preview_lights

log = logging.getLogger(__name__)


def turntable_frames(params, config: ml_collections.ConfigDict, *, step, num_frames=None, size=None) -> np.ndarray:
  """Frames [N, H, 3W, 3] in [0, 1]: shaded colour, textureless and normals side by side, orbiting at the export
  elevation and distance."""
  e = config.export
  n = num_frames or e.video_frames
  size = size or e.video_size
  cams = cam_lib.orbit_cameras(np.full(n, e.video_elevation), np.arange(n) * 360.0 / n, e.video_distance,
                               e.video_focal * size)
  out = scene.render_scene_chunked(params, config, cams, step=step, light_pos=preview_lights(cams), height=size,
                                   width=size)
  normal_img = normal_image(out)
  frames = np.concatenate([out["rgb_modes"][..., cam_lib.SHADED, :], out["rgb_modes"][..., cam_lib.TEXTURELESS, :],
                           normal_img], axis=2)
  return np.clip(frames, 0.0, 1.0)


def scene_density_fn(params, config: ml_collections.ConfigDict, *, step):
  """points [N, 3] -> (density [N], albedo [N, 3]) at the IPE variance of `step` (jitted)."""
  field_fn, _ = scene.fields(params, config)
  var = scene.ipe_variance(config, step)

  @jax.jit
  def fn(points):
    pre, albedo = field_fn(points, var)
    return mlp.trunc_exp(pre), albedo
  return fn


def export_mesh(params, config: ml_collections.ConfigDict, *, step) -> mesh_lib.Mesh:
  e = config.export
  return mesh_lib.extract_mesh(scene_density_fn(params, config, step=step), resolution=e.mesh_resolution,
                               radius=config.render.radius, threshold=e.mesh_threshold or None)


def export_all(params, config: ml_collections.ConfigDict, *, step, out_dir) -> list[pathlib.Path]:
  """Writes the turntable video and the meshes into out_dir. Returns the paths written. An empty scene (no surface)
  is reported and skips the mesh; the video is still written."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = [video.write_video(turntable_frames(params, config, step=step), out_dir / "turntable.mp4",
                               fps=config.export.video_fps)]
  try:
    m = export_mesh(params, config, step=step)
  except ValueError as e:
    log.warning("mesh export skipped: %s", e)
    print(f"mesh export skipped: {e}", file=sys.stderr)
    return written
  for fmt in config.export.mesh_formats:
    written.append(mesh_lib.save_mesh(m, out_dir / f"mesh.{fmt}"))
  return written


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs restores at INFO
  from dreamjax import checkpoint as ckpt_lib
  f = flags.FLAGS
  try:
    run = ckpt_lib.restore_latest_params(f.workdir)
  except ckpt_lib.CheckpointError as e:
    sys.exit(f"export: {e}")
  config = run.config
  if f.frames:
    config.export.video_frames = f.frames
  if f.size:
    config.export.video_size = f.size
  if f.mesh_resolution:
    config.export.mesh_resolution = f.mesh_resolution
  out = f.out or str(pathlib.Path(f.workdir) / "export")
  for p in export_all(run.params, config, step=run.step, out_dir=out):
    print(f"wrote {p}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "Run directory (its latest checkpoint is exported).", required=True)
  flags.DEFINE_string("out", "", "Output folder (default: <workdir>/export).")
  flags.DEFINE_integer("frames", 0, "Turntable frames (default: the run's config).")
  flags.DEFINE_integer("size", 0, "Turntable resolution (default: the run's config).")
  flags.DEFINE_integer("mesh_resolution", 0, "Marching-cubes grid (default: the run's config).")
  app.run(main)
