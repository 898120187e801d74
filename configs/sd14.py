"""DreamFusion (paper settings, configs/dreamfusion.py) with Stable Diffusion 1.4 as the prior.

  python -m dreamjax.train --config configs/sd14.py --config.prompt="a DSLR photo of a hamburger" --workdir runs/x
Expected runtime: as configs/dreamfusion.py (see docs/performance.md).
"""

from configs import dreamfusion


def get_config():
  c = dreamfusion.get_config()
  c.prior.model = "CompVis/stable-diffusion-v1-4"  # hub id; or a local folder in the diffusers layout
  return c
