"""Does the latent path carry shape? SDS against exact denoisers, in pixel space and in a latent-diffusion model's
latent space, for toy objects.

For each toy prompt, two NeRFs are trained with the config (configs/toy_sd.py by default) and scored as
`toy.evaluate` scores them (Color, Geo, IoU, floaters):
  * pixel oracle (`priors.oracle.OraclePrior`): eps_hat is exact for the view's true render x* at the render size;
  * latent oracle (`priors.oracle.LatentOraclePrior`): eps_hat is exact for z* = the scaled VAE latents of x*, and
    the gradient reaches the scene through the latent prior's own `to_latents` (resize, VAE encoder, posterior
    sample, scaling_factor), as in every Stable Diffusion run. The prior is `config.prior` (the toy SD folder, or
    any SD folder or hub id).
Neither has a learned denoiser, so when the latent oracle rebuilds the object as well as the pixel oracle, a failure
of text-to-3D with that model lies in its UNet's knowledge, not in the SD code path. Guidance is off (the oracles
ignore text) and the true renders are over white, so the runs use the background MLP in every view (it learns the
white; random solid backgrounds off).

  python -m dreamjax.toy.oracle_check --prompts "a red cone;a red cube" [--steps 150] [--config configs/toy_sd.py]
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax

from dreamjax import cli
from dreamjax import config_check
from dreamjax import stop_signals
from dreamjax import workdir as workdir_lib
from dreamjax.nerf import render
from dreamjax.priors import oracle
from dreamjax.toy import classifier as clf_lib
from dreamjax.toy import evaluate
from dreamjax.toy import shapes

KINDS = ("pixel", "latent")


def oracle_config(config, prompt: str, steps: int):
  """The config of an oracle run: `config` with the prompt, `steps`, guidance 0 and the background MLP only."""
  c = config.copy_and_resolve_references()
  c.prompt = prompt
  if steps:
    c.train.num_steps = steps
  c.distill.guidance_scale = 0.0
  c.render.random_background_prob = 0.0
  c.train.preview_every = 0
  c.train.checkpoint_every = c.train.num_steps
  return c


def make_oracle(kind: str, prompt: str, latent_prior=None, samples: int = 48):
  """The pixel or latent oracle of the toy object named by `prompt` (true renders with `samples` coarse and fine
  samples per ray)."""
  arrs = shapes.object_for_prompt(prompt).arrays()
  settings = render.RenderSettings(num_coarse=samples, num_fine=samples)
  if kind == "pixel":
    return oracle.OraclePrior(field_fn=shapes.field(arrs), settings=settings)
  return oracle.LatentOraclePrior(latent_prior, field_fn=shapes.field(arrs), settings=settings)


def workdir_for(root: pathlib.Path, kind: str, prompt: str) -> pathlib.Path:
  return root / f"{kind}_{prompt.replace(' ', '_')}"


def run(kind: str, prompt: str, config, workdir, classifier, latent_prior=None,
        num_devices: int | None = None) -> evaluate.Score:
  """Trains one oracle run into `workdir` (a new folder) on `num_devices` (None: all) and scores it as toy.evaluate
  does."""
  from dreamjax import train
  t0 = time.time()
  prior = make_oracle(kind, prompt, latent_prior)
  state = train.train_and_evaluate(config, workdir, prior=prior, export=False, progress=False,
                                     num_devices=num_devices)
  s = evaluate.score_params(jax.device_get(state.params), config, prompt, classifier)
  return evaluate.Score.from_result(prompt, s, time.time() - t0)


def main(argv) -> None:
  del argv
  from absl import flags
  from dreamjax.priors import load
  f = flags.FLAGS
  prompts = [p.strip() for p in f.prompts.split(";") if p.strip()]
  if not prompts:
    raise ValueError("--prompts is empty: give toy prompts separated by ';', e.g. --prompts \"a red cone\"")
  for p in prompts:  # a prompt outside the toy world fails here, before anything trains
    try:
      shapes.object_for_prompt(p)
    except KeyError as e:
      raise ValueError(f"--prompts: {e.args[0]}") from None
  if f.steps < 0:
    raise ValueError(f"--steps must be >= 0 (got {f.steps}; 0 keeps the config's)")
  root = pathlib.Path(f.workdir_root)
  for wd in (workdir_for(root, k, p) for p in prompts for k in KINDS):
    if wd.exists():
      raise ValueError(f"{wd} exists: choose another --workdir_root (nothing was changed)")
  base = cli.resolved_config()
  if base.prior.kind != "stable_diffusion":
    raise ValueError(f"config.prior.kind is {base.prior.kind!r}: the latent oracle needs a latent-diffusion prior "
                     "('stable_diffusion', e.g. --config configs/toy_sd.py)")
  config_check.check(oracle_config(base, prompts[0], f.steps))  # before anything loads; prompts change nothing else
  latent_prior = load.load_prior(base)
  classifier = clf_lib.load()
  scores = []
  for p in prompts:
    c = oracle_config(base, p, f.steps)
    for k in KINDS:
      s = run(k, p, c, workdir_for(root, k, p), classifier, latent_prior)
      print(f"{k} oracle, {p}: Color {s.color}, Geo {s.geo}, IoU {s.iou:.3f}, floaters {s.floaters:.4f} "
            f"({s.seconds:.0f} s)", flush=True)
      scores.append(dataclasses.replace(s, prompt=f"{p} ({k} oracle)"))
  print(evaluate.table(scores))


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flag("configs/toy_sd.py")
  flags.DEFINE_string("prompts", "a red cone;a red cube", "';'-separated toy prompts.")
  flags.DEFINE_integer("steps", 150, "Training steps per run (0: the config's).")
  flags.DEFINE_string("workdir_root", "runs/oracle_check", "One run directory per prompt and oracle below this.")
  cli.run(main, "toy.oracle_check", errors=(config_check.ConfigError, workdir_lib.WorkdirError),
          interrupted=(stop_signals.Interrupted,))
