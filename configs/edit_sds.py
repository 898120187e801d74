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
  # Identity: the weight of mean((opacity_edit - opacity_source)^2) over each training render, source and edit at
  # the same view (edit_objective.keep_opacity_loss). Not in the papers (DDS edits images, PDS nerfacto scenes that
  # fill the frame; an object on a background can fade out instead). Measured in the toy world (README "Editing a
  # result"): at 0 every rule empties the scene within ~50 steps (at 10 PDS still emptied "a red sphere"); at 100 all
  # three recolour keeping silhouette IoU 0.86-0.97 and a sphere can move toward a cube; 1000 keeps 0.96-0.97
  # (colour-only edits). At SD scale unmeasured: grad_share/keep (train.grad_shares_every) shows how hard it holds.
  c.edit.keep_opacity = 100.0
  c.distill = distill.default_distill_config("sds")  # DreamFusion: omega = 100 (paper form), w = sigma^2
  return c
