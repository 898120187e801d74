"""DreamFusion's NeRF and schedule with Score Jacobian Chaining's PAAS gradient (Wang et al., CVPR 2023) instead of
SDS: VE form sigma = sqrt((1 - abar)/abar), s = 100 (diffusers CFG form), variance-reduced score, t in [10, 970].
SJC's own voxel grid, emptiness and depth losses are not part of this preset.

  python -m dreamjax.train --config configs/sjc.py --config.prompt="a DSLR photo of a hamburger" --workdir runs/x
Expected runtime: as configs/dreamfusion.py.
"""

from configs import dreamfusion

from dreamjax import distill


def get_config():
  c = dreamfusion.get_config()
  c.distill = distill.default_distill_config("sjc")
  return c
