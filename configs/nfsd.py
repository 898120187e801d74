"""DreamFusion's NeRF and schedule with Noise-Free Score Distillation (Katzir et al., ICLR 2024) instead of SDS:
gradient w(t)(delta_D + s delta_C), s = 7.5, delta_D from the negative prompt above t = 200 (3 UNet passes per step).

  python -m dreamjax.train --config configs/nfsd.py --config.prompt="a DSLR photo of a hamburger" --workdir runs/x
Expected runtime: about 1.5× configs/dreamfusion.py per step (one more UNet pass).
"""

from configs import dreamfusion

from dreamjax import distill


def get_config():
  c = dreamfusion.get_config()
  c.distill = distill.default_distill_config("nfsd")  # s = 7.5, diffusers CFG form, w(t) = 1 - abar
  return c
