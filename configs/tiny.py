"""A tiny DreamFusion that runs end to end on a CPU in about a minute: a small NeRF, 16×16 renders, 40 steps, and the
tiny random Stable Diffusion from tests/fixtures/tiny_sd (the real SD code path with random weights; the result is
not meant to look like anything). Used by the tests and to check an install.

  python -m dreamjax.train --config configs/tiny.py --workdir runs/tiny
Expected runtime: about a minute on a 2-core CPU (compilation included).
"""

import pathlib

from configs import dreamfusion

TINY_SD = str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_sd")


def get_config():
  c = dreamfusion.get_config()
  c.prompt = "a red cube"
  c.train.num_steps = 40
  c.train.log_every = 10
  c.train.preview_every = 20
  c.train.preview_size = 32
  c.train.checkpoint_every = 20
  c.train.keep_checkpoints = 2
  c.shading.albedo_only_steps = 10  # shading modes appear within the short run
  c.nerf.width = 32
  c.nerf.num_blocks = 2
  c.nerf.bg_width = 16
  c.render.height = 16
  c.render.width = 16
  c.render.num_coarse = 16
  c.render.num_fine = 16
  c.optim.name = "adam"
  c.optim.lr_init = 1e-3
  c.optim.lr_peak = 1e-2
  c.optim.lr_end = 1e-3
  c.optim.warmup_steps = 5
  c.optim.eps = 1e-15
  c.prior.kind = "stable_diffusion"
  c.prior.model = TINY_SD  # random tiny weights in the diffusers layout
  c.export.video_frames = 8
  c.export.video_size = 32
  c.export.mesh_resolution = 32
  return c
