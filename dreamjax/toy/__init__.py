"""The toy world: procedural coloured primitives, their renders, a small text-to-image pixel prior trained on them,
a small latent-diffusion model in Stable Diffusion's own layout (run through the SD code path), and an independent
(shape, colour) classifier, so that text-to-3D can run and be evaluated offline on any CPU.

  shapes.py       analytic objects (SDF, density field, occupancy, silhouette, visible part) and their prompts
  dataset.py      renders of those objects with the project's renderer and training cameras, with captions
  text.py         word-level tokenizer and the small text encoder
  prior.py        the diffusion model, `load(path=None)` -> PixelPrior with the shipped weights
  train_prior.py  `python -m dreamjax.toy.train_prior` (trains the prior)
  classifier.py   `python -m dreamjax.toy.classifier` (trains the evaluation classifier)
  sd_folder.py    the toy latent-diffusion model as a Stable Diffusion folder: configs, CLIP tokenizer, PyTorch names
  train_sd.py     `python -m dreamjax.toy.train_sd` (trains it: VAE, then UNet + CLIP text encoder; configs/toy_sd.py)
  evaluate.py     `python -m dreamjax.toy.evaluate`: toy R-precision, IoU, part colour of two-part objects
  ablate.py       `python -m dreamjax.toy.ablate`: config variants x prompts, one table
  binding.py      `python -m dreamjax.toy.binding`: does the prior bind each colour of a two-part prompt to its part
"""
