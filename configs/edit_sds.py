"""Editing with plain SDS (DreamFusion's rule toward the new prompt, starting from the source scene): the baseline
that PDS and DDS are compared with. Laid over the source run's config by `python -m dreamjax.edit`.

  python -m dreamjax.edit --source runs/red_cube --prompt "a blue cube" --method sds --workdir runs/blue_cube
"""

import ml_collections

from dreamjax import distill


def get_config():
  c = ml_collections.ConfigDict()
  c.edit = ml_collections.ConfigDict()
  c.edit.num_steps = 0  # steps of the edit; 0 = as many as the source run
  # "all": every parameter may change (the papers' setting); "appearance": only the albedo head and the background
  # MLP, so the geometry stays the source's exactly (a colour or texture edit; see the README's editing section).
  c.edit.trainable = "all"
  c.distill = distill.default_distill_config("sds")  # DreamFusion: omega = 100 (paper form), w = sigma^2
  return c
