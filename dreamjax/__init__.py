"""dreamjax: DreamFusion (text-to-3D by Score Distillation Sampling) in JAX/Flax.

Where things live:
  cameras.py          camera, light and view-label sampling; rays           (renderer side)
  nerf/encoding.py    Mip-NeRF integrated positional encoding               (renderer side)
  nerf/mlp.py         density/albedo MLP with the density blob; background  (renderer side)
  nerf/render.py      sampling, volume rendering, normals, shading, losses  (renderer side)
  priors/             2D diffusion priors behind one interface (priors/base.py)   (prior side)
  distill.py          SDS / NFSD / SJC: pure functions of eps predictions          (prior side)
  optim.py            Shampoo-style optax transformation and LR schedules
  train.py            the data-parallel train step and `python -m dreamjax.train`
"""

__version__ = "0.1.0"
