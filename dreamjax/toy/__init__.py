"""The toy world: procedural coloured primitives, their renders, a small text-to-image pixel prior trained on them
and an independent (shape, colour) classifier, so that text-to-3D can run and be evaluated offline on any CPU.

  shapes.py       analytic objects (SDF, density field, occupancy, silhouette) and their prompts
  dataset.py      renders of those objects with the project's renderer and training cameras, with captions
  text.py         word-level tokenizer and the small text encoder
  prior.py        the diffusion model, `load(path=None)` -> PixelPrior with the shipped weights
  train_prior.py  `python -m dreamjax.toy.train_prior` (trains the prior)
  classifier.py   `python -m dreamjax.toy.classifier` (trains the evaluation classifier)
"""
