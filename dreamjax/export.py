"""Turntable videos and marching-cubes meshes of a scene.

  python -m dreamjax.export --workdir runs/hamburger [--out runs/hamburger/export]
exports the latest checkpoint of a run: `turntable.mp4` (shaded colour | textureless | normals, 360° at 30°
elevation) and `mesh.obj/.ply/.glb` with vertex colours.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import sys

import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import checkpoint as ckpt_lib
from dreamjax import cli
from dreamjax import mesh as mesh_lib
from dreamjax import video
from dreamjax import visualize
from dreamjax import workdir as workdir_lib
from dreamjax.nerf.scene import Scene

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportSettings:
  """What an export writes (the config's `export` section)."""
  orbit: visualize.Orbit = visualize.Orbit()
  video_frames: int = 120
  video_fps: float = 30.0
  video_size: int = 256
  mesh_resolution: int = 128
  mesh_threshold: float = 0.0  # density level of the surface; 0 = automatic (`mesh.default_threshold`)
  mesh_formats: tuple = ("obj", "ply", "glb")

  @classmethod
  def from_config(cls, config) -> "ExportSettings":
    e = config.export
    return cls(orbit=visualize.Orbit.from_config(config), video_frames=int(e.video_frames),
               video_fps=float(e.video_fps), video_size=int(e.video_size), mesh_resolution=int(e.mesh_resolution),
               mesh_threshold=float(e.mesh_threshold), mesh_formats=tuple(e.mesh_formats))


def turntable_frames(scene: Scene, params, settings: ExportSettings, *, step) -> np.ndarray:
  """Frames [N, H, 3W, 3] in [0, 1]: shaded colour, textureless and normals side by side, orbiting at the export
  elevation and distance."""
  size = settings.video_size
  cams = settings.orbit.cameras(settings.video_frames, size)
  out = scene.render_chunked(params, cams, step=step, light_pos=visualize.preview_lights(cams), height=size,
                             width=size)
  frames = np.concatenate([out["rgb_modes"][..., cam_lib.SHADED, :], out["rgb_modes"][..., cam_lib.TEXTURELESS, :],
                           visualize.normal_image(out)], axis=2)
  return np.clip(frames, 0.0, 1.0)


def export_mesh(scene: Scene, params, settings: ExportSettings, *, step) -> mesh_lib.Mesh:
  return mesh_lib.extract_mesh(scene.density_fn(params, step=step), resolution=settings.mesh_resolution,
                               radius=scene.render.radius, threshold=settings.mesh_threshold or None)


def export_all(scene: Scene, params, settings: ExportSettings, *, step, out_dir) -> list[pathlib.Path]:
  """Writes the turntable video and the meshes into out_dir. Returns the paths written. An empty scene (no surface)
  is reported and skips the mesh; the video is still written."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = [video.write_video(turntable_frames(scene, params, settings, step=step), out_dir / "turntable.mp4",
                               fps=settings.video_fps)]
  try:
    m = export_mesh(scene, params, settings, step=step)
  except ValueError as e:
    log.warning("mesh export skipped: %s", e)
    print(f"mesh export skipped: {e}", file=sys.stderr)
    return written
  for fmt in settings.mesh_formats:
    written.append(mesh_lib.save_mesh(m, out_dir / f"mesh.{fmt}"))
  return written


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  for name, low in (("frames", 1), ("size", 1), ("mesh_resolution", 8)):
    if f[name].value != 0 and f[name].value < low:
      raise ValueError(f"--{name} must be >= {low}, or 0 for the run's config (got {f[name].value})")
  out = f.out or str(pathlib.Path(f.workdir) / "export")
  workdir_lib.remove_empty(workdir_lib.probe(pathlib.Path(out), "--out"))
  run = ckpt_lib.restore_latest_params(f.workdir)
  settings = ExportSettings.from_config(run.config)
  settings = dataclasses.replace(settings, video_frames=f.frames or settings.video_frames,
                                 video_size=f.size or settings.video_size,
                                 mesh_resolution=f.mesh_resolution or settings.mesh_resolution)
  written = export_all(Scene.from_config(run.config), run.params, settings, step=run.step, out_dir=out)
  if pathlib.Path(out) == pathlib.Path(f.workdir) / "export" and run.step == run.config.train.num_steps:
    workdir_lib.mark_export_complete(out, run.step, written)
  for p in written:
    print(f"wrote {p}")


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_string("workdir", None, "Run directory (its latest checkpoint is exported).", required=True)
  flags.DEFINE_string("out", "", "Output folder (default: <workdir>/export).")
  flags.DEFINE_integer("frames", 0, "Turntable frames (default: the run's config).")
  flags.DEFINE_integer("size", 0, "Turntable resolution (default: the run's config).")
  flags.DEFINE_integer("mesh_resolution", 0, "Marching-cubes grid (default: the run's config).")
  cli.run(main, "export", errors=(ckpt_lib.CheckpointError, workdir_lib.WorkdirError))
