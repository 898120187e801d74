"""`python -m dreamjax.render_preview`: a preview grid of a scene (4 cameras × albedo, shaded, textureless, normals,
depth; `dreamjax.visualize.preview_grid`, the grid the train loop writes at intervals).

  python -m dreamjax.render_preview --config configs/dreamfusion.py --out preview.png
renders the initial scene (the density blob) from the config's seed; `--workdir runs/x` renders the latest checkpoint
of a run instead.
"""

from __future__ import annotations

import jax

from dreamjax import checkpoint as ckpt_lib
from dreamjax import cli
from dreamjax import config_check
from dreamjax import video
from dreamjax import visualize
from dreamjax import workdir as workdir_lib
from dreamjax.nerf.scene import Scene


def main(argv) -> None:
  from absl import flags
  if flags.FLAGS.size < 1:
    raise ValueError(f"--size must be >= 1 pixels (got {flags.FLAGS.size})")
  workdir_lib.check_output_file(flags.FLAGS.out)
  if flags.FLAGS.workdir:
    run = ckpt_lib.restore_latest_params(flags.FLAGS.workdir)
    cfg, params, step = run.config, run.params, run.step
    scene = Scene.from_config(cfg)
  else:
    cfg = cli.resolved_config()
    config_check.check(cfg, require_prompt=False)
    scene = Scene.from_config(cfg)
    params, step = scene.init(jax.random.PRNGKey(cfg.seed)), 0
  grid = visualize.preview_grid(scene, params, visualize.Orbit.from_config(cfg), step=step, size=flags.FLAGS.size)
  path = video.save_png(grid, flags.FLAGS.out)
  print(f"wrote {path} (rows: 4 cameras at azimuth 0/90/180/270; columns: {', '.join(visualize.COLUMNS)})")


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flag("configs/dreamfusion.py")
  flags.DEFINE_string("out", "preview.png", "Output PNG.")
  flags.DEFINE_string("workdir", "", "Render the latest checkpoint of this run instead of the initial scene.")
  flags.DEFINE_integer("size", 96, "Panel size in pixels.")
  cli.run(main, "render_preview", errors=(ckpt_lib.CheckpointError, config_check.ConfigError,
                                          workdir_lib.WorkdirError))
