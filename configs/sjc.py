"""DreamFusion's NeRF and schedule with Score Jacobian Chaining (Wang et al., CVPR 2023): SJC's PAAS gradient instead of
SDS (VE form sigma = sqrt((1 - abar)/abar), s = 100 in the diffusers CFG form, variance-reduced score, t in
[10, 970]) and SJC's emptiness loss (dreamjax/regularisers.py).

  python -m dreamjax.train --config configs/sjc.py --config.prompt="a DSLR photo of a hamburger" --workdir runs/x
Expected runtime: as configs/dreamfusion.py.

What differs from SJC's own setup, as far as our NeRF allows: SJC optimises a 100^3 voxel grid whose 4 feature
channels are rendered directly as SD latents (no VAE encoder), with Adamax lr 0.05 for 10k steps, batch 1; here the
Mip-NeRF MLP renders RGB that the VAE encodes, with DreamFusion's Shampoo, 15k steps and batch 4. SJC's centre-depth
loss is off by default there too (weight 0; its README uses 10, 50 or 100 for some prompts): set
--config.loss.center_depth.
"""

from configs import dreamfusion

from dreamjax import distill


def get_config():
  c = dreamfusion.get_config()
  c.distill = distill.default_distill_config("sjc")
  c.loss.emptiness = 1e4  # SJC: emptiness_weight 1e4 ...
  c.loss.emptiness_multiplier = 20.0  # ... x20 ...
  c.loss.emptiness_step_frac = 0.5  # ... after half the steps (emptiness_step 0.5)
  c.loss.emptiness_scale = 10.0  # SJC: emptiness_scale B = 10
  c.loss.center_depth = 0.0  # SJC: depth_weight 0 by default
  return c
