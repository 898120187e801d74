"""Trains the toy prior (dreamjax/toy/prior.py) on renders of the toy world.

  python -m dreamjax.toy.train_prior --out /tmp/my_toy_prior [--steps N --batch B --lr LR --data /tmp/x.npz]
(the shipped weights in dreamjax/toy/weights are replaced only with --out dreamjax/toy/weights --overwrite)

Data: `dataset.load_or_generate(--data, --num_data, seed=--data_seed)` (rendered once, cached as .npz; keep the
cache outside the repository). Every step draws a batch, re-composites the stored object renders over fresh random
backgrounds, flips half of them left-right (every toy object is mirror-symmetric and a mirrored camera keeps its view
label), drops the caption to the empty prompt with prob --p_uncond, draws t ~ U{0..T-1} and eps ~ N(0, I), and
minimises |eps_hat(sqrt(abar) x + sqrt(1 - abar) eps, t, text) - eps|² (mean over pixels) with Adam over the UNet
and the text encoder jointly (linear warm-up, then cosine decay to lr/10). An exponential moving average of the
weights is kept and is what gets saved. Everything derives from --seed, so a run is reproducible on one backend.

Weights are written to --out every --save_every steps and at the end (so a usable prior exists if a run is cut
short), with the running summary (steps, loss, held-out eps-MSE) in toy_prior.json.
"""

from __future__ import annotations

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamjax.priors.weights import check_flax_tree
from dreamjax.toy import dataset as ds
from dreamjax.toy import prior as prior_lib
from dreamjax.toy import shapes
from dreamjax.toy import text as text_lib
from dreamjax.toy import weights_io

EVAL_TIMESTEPS = (100, 250, 500, 750, 900)


def caption_tokens() -> np.ndarray:
  """Token ids [num_objects, 4 view labels, MAX_LEN] of every caption of the world."""
  return np.stack([text_lib.tokenize([ds.caption(o, v) for v in range(4)]) for o in range(len(shapes.OBJECTS))])


def make_batch(data: dict, tokens: np.ndarray, rng: np.random.Generator, batch: int, p_uncond: float):
  """A training batch: renders [B, 32, 32, 3] in [0, 1] and token ids [B, L] (PAD rows = empty prompt)."""
  idx = rng.integers(0, len(data["obj"]), size=batch)
  images = ds.composite(data["fg"][idx], data["alpha"][idx], rng)
  flip = rng.uniform(size=batch) < 0.5
  images[flip] = images[flip, :, ::-1]
  ids = tokens[data["obj"][idx], data["label"][idx]].copy()
  ids[rng.uniform(size=batch) < p_uncond] = text_lib.PAD_ID
  return images, ids


def eps_loss(params, unet, text_encoder, abar, x0, ids, t, eps):
  """Mean squared eps error of the UNet on x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

  x0, eps [B, R, R, 3] at the model resolution R, x0 in [-1, 1]; ids [B, L]; t [B] int.
  """
  a = abar[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
  emb = text_encoder.apply({"params": params["text"]}, ids)
  out = unet.apply({"params": params["unet"]}, jnp.transpose(x_t, (0, 3, 1, 2)), t, emb).sample
  return jnp.mean((jnp.transpose(out, (0, 2, 3, 1)) - eps) ** 2)


def heldout_eps_mse(params, unet, text_encoder, abar, holdout: dict, timesteps=EVAL_TIMESTEPS, seed: int = 123,
                    num: int = 256) -> dict:
  """Eps-MSE per timestep on held-out renders (their stored backgrounds, true captions, fixed noise)."""
  tokens = caption_tokens()
  x0 = prior_lib.to_latents(jnp.asarray(holdout["images"][:num], jnp.float32) / 255.0)
  ids = tokens[holdout["obj"][:num], holdout["label"][:num]]
  eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape)
  fn = jax.jit(lambda p, t: eps_loss(p, unet, text_encoder, abar, x0, ids, t, eps))
  return {int(t): float(fn(params, jnp.full((x0.shape[0],), t, jnp.int32))) for t in timesteps}


def train(out: str, steps: int, batch: int, lr: float, warmup: int, seed: int, data: dict, holdout: dict | None,
          p_uncond: float = 0.1, ema_decay: float = 0.995, save_every: int = 200, log_every: int = 25,
          max_minutes: float = 0.0, init: str | None = None) -> dict:
  unet = prior_lib.build_unet()
  text_encoder = prior_lib.build_text_encoder()
  abar = jnp.asarray(prior_lib.cosine_alphas_cumprod())
  params = prior_lib.init_params(jax.random.PRNGKey(seed), unet, text_encoder)
  init_summary = None
  if init:  # continue from earlier weights (their EMA); the optimiser and schedule start afresh
    tree, meta = prior_lib.read_params(init)
    if "add_embedding" in params["unet"] and "unet" in tree and "add_embedding" not in tree["unet"]:
      # weights from before the pooled-text path: it joins at zero output, so the model starts as it was
      tree = {**tree, "unet": {**tree["unet"], "add_embedding": params["unet"]["add_embedding"]}}
      print("--init weights have no pooled-text path; adding it with a zero output layer", flush=True)
    params = jax.tree_util.tree_map(jnp.asarray, check_flax_tree(tree, params, what="--init weights"))
    init_summary = {"path": str(init), **{k: v for k, v in meta.get("summary", {}).items() if k != "loss_curve"}}
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(f"parameters: {n_params:,} (unet {sum(x.size for x in jax.tree_util.tree_leaves(params['unet'])):,})",
        flush=True)
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr / 10)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
  opt_state = tx.init(params)
  ema = jax.tree_util.tree_map(jnp.copy, params)
  tokens = caption_tokens()
  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed + 1)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step_fn(params, opt_state, ema, images, ids, key, step):
    x0 = prior_lib.to_latents(images)
    k_t, k_eps = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, abar.shape[0])
    eps = jax.random.normal(k_eps, x0.shape)
    loss, grads = jax.value_and_grad(eps_loss)(params, unet, text_encoder, abar, x0, ids, t, eps)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    d = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, ema, params)
    return params, opt_state, ema, loss

  summary = {"steps": 0, "batch": batch, "lr": lr, "seed": seed, "num_data": int(len(data["obj"])),
             "p_uncond": p_uncond, "ema_decay": ema_decay}
  if init_summary:
    summary["init"] = init_summary
  losses, t0, step = [], time.time(), 0
  for step in range(steps):
    images, ids = make_batch(data, tokens, rng, batch, p_uncond)
    key, k = jax.random.split(key)
    params, opt_state, ema, loss = step_fn(params, opt_state, ema, jnp.asarray(images), jnp.asarray(ids), k,
                                           jnp.asarray(step, jnp.float32))
    losses.append(float(loss))
    done = step + 1
    if done % log_every == 0 or done == 1:
      print(f"step {done:5d}  loss {np.mean(losses[-log_every:]):.4f}  {time.time() - t0:7.1f}s", flush=True)
    out_of_time = max_minutes > 0 and time.time() - t0 > 60 * max_minutes
    if done % save_every == 0 or done == steps or out_of_time:
      summary.update(steps=done, final_loss=float(np.mean(losses[-100:])), wall_s=round(time.time() - t0, 1))
      prior_lib.save(out, ema, summary)
      print(f"saved {out} at step {done}", flush=True)
    if out_of_time:
      print(f"stopping: --max_minutes {max_minutes} reached", flush=True)
      break
  if holdout is not None:
    mse = heldout_eps_mse(ema, unet, text_encoder, abar, holdout)
    summary["heldout_eps_mse"] = mse
    print("held-out eps-MSE by t:", {k: round(v, 4) for k, v in mse.items()}, flush=True)
    prior_lib.save(out, ema, summary)
  summary["loss_curve"] = [float(np.mean(losses[i:i + 100])) for i in range(0, len(losses), 100)]
  prior_lib.save(out, ema, summary)
  return summary


def write_samples(out: str, per_view: int = 2, seed: int = 0, guidance: float = 10.0, num_steps: int = 25) -> dict:
  """Writes samples/<prompt>.png for every prompt of the world (rows: front/side/back/overhead captions, `per_view`
  DDIM samples each, upscaled 4×) and returns the shipped classifier's accuracy on the single-object samples."""
  from dreamjax import cameras as cam_lib
  from dreamjax import video
  from dreamjax.toy import classifier as clf_lib
  prior = prior_lib.load(out)
  folder = pathlib.Path(out) / "samples"
  folder.mkdir(parents=True, exist_ok=True)
  prompts = [cam_lib.view_prompt(p, v) for p in shapes.PROMPTS for v in range(len(cam_lib.VIEW_NAMES))
             for _ in range(per_view)]
  images = []
  for i in range(0, len(prompts), 96):
    images.append(prior_lib.sample(prior, prompts[i:i + 96], jax.random.PRNGKey(seed + i), num_steps, guidance))
  images = np.concatenate(images).reshape(len(shapes.PROMPTS), 4 * per_view, *images[0].shape[1:])
  for p, im in zip(shapes.PROMPTS, images):
    big = np.repeat(np.repeat(im, 4, axis=1), 4, axis=2)
    video.save_png(video.image_grid(big, 4, per_view), folder / (p.replace(" ", "_") + ".png"))
  result = {}
  try:
    clf = clf_lib.load(out)
  except Exception as e:  # the classifier is optional here
    print(f"no classifier ({e}); skipping the sample accuracy", flush=True)
    return result
  singles = [i for i, o in enumerate(shapes.OBJECTS) if o.is_single]
  x = images[singles].reshape(-1, *images.shape[2:])
  s_pred, c_pred = clf.predict(x)
  s_true = np.repeat(clf_lib.SHAPE_OF[singles], 4 * per_view)
  c_true = np.repeat(clf_lib.COLOUR_OF[singles], 4 * per_view)
  result = {"num": int(len(x)), "guidance": guidance, "ddim_steps": num_steps,
            "shape": float(np.mean(s_pred == s_true)), "colour": float(np.mean(c_pred == c_true)),
            "both": float(np.mean((s_pred == s_true) & (c_pred == c_true)))}
  print("classifier on prior samples:", result, flush=True)
  return result


def check_flags(a) -> None:
  """Every flag checked before any data is rendered or weights are touched (ValueError, one line)."""
  for name in ("steps", "batch", "save_every", "num_data"):
    if a[name].value < 1:
      raise ValueError(f"--{name} must be >= 1 (got {a[name].value})")
  if a.warmup < 0:
    raise ValueError(f"--warmup must be >= 0 (got {a.warmup})")
  for name in ("lr", "guidance"):
    if not (a[name].value > 0 and a[name].value < float("inf")):
      raise ValueError(f"--{name} must be a finite number > 0 (got {a[name].value})")
  for name in ("p_uncond", "ema_decay"):
    if not 0.0 <= a[name].value < 1.0:
      raise ValueError(f"--{name} must be in [0, 1) (got {a[name].value})")
  if not 0.0 <= a.max_minutes < float("inf"):
    raise ValueError(f"--max_minutes must be >= 0 (got {a.max_minutes})")
  if a.init:
    prior_lib.read_params(a.init)  # a missing or unreadable --init is a WeightsError now, not after the data


def main(argv) -> None:
  from absl import flags
  a = flags.FLAGS
  if a.samples_only:
    if not a.guidance > 0:
      raise ValueError(f"--guidance must be > 0 (got {a.guidance})")
    prior_lib.read_params(a.out)
    if (pathlib.Path(a.out) / "samples").exists() and not a.overwrite:
      raise ValueError(f"--out {a.out!r} already holds samples/; pass --overwrite to replace the sample grids")
    write_samples(a.out, guidance=a.guidance)
    return
  check_flags(a)
  weights_io.check_writable(a.out, prior_lib.NAME, overwrite=a.overwrite)
  data = ds.load_or_generate(a.data, a.num_data, a.data_seed)
  holdout = ds.load_or_generate(a.holdout, 512, a.holdout_seed) if a.holdout else None
  t0 = time.time()
  s = train(a.out, a.steps, a.batch, a.lr, a.warmup, a.seed, data, holdout, a.p_uncond, a.ema_decay, a.save_every,
            max_minutes=a.max_minutes, init=a.init or None)
  print(f"done: {s['steps']} steps, final loss {s['final_loss']:.4f}, {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
  from absl import flags
  from dreamjax import cli
  weights_io.define_out_flags(prior_lib.NAME)
  flags.DEFINE_integer("steps", 1500, "Training steps.")
  flags.DEFINE_integer("batch", 32, "Batch size.")
  flags.DEFINE_float("lr", 1e-3, "Peak Adam learning rate.")
  flags.DEFINE_integer("warmup", 100, "Linear warm-up steps.")
  flags.DEFINE_integer("seed", 0, "Training seed.")
  flags.DEFINE_float("p_uncond", 0.1, "Probability of the empty caption (classifier-free guidance).")
  flags.DEFINE_float("ema_decay", 0.995, "EMA decay of the saved weights.")
  flags.DEFINE_integer("save_every", 200, "Save interval (steps).")
  flags.DEFINE_float("max_minutes", 0.0, "Stop (and save) after this wall time; 0 = off.")
  flags.DEFINE_string("data", "/tmp/toy_prior_train.npz", "Dataset cache (.npz), generated if absent.")
  flags.DEFINE_integer("num_data", 8000, "Training renders.")
  flags.DEFINE_integer("data_seed", 0, "Seed of the training renders.")
  flags.DEFINE_string("holdout", "/tmp/toy_heldout.npz", "Held-out renders ('' = skip the evaluation).")
  flags.DEFINE_integer("holdout_seed", 2, "Seed of the held-out renders.")
  flags.DEFINE_string("init", "", "Start from these weights (folder or .msgpack) instead of random.")
  flags.DEFINE_bool("samples_only", False, "Only write sample grids of the weights in --out.")
  flags.DEFINE_float("guidance", 10.0, "Classifier-free guidance of the sample grids.")
  cli.run(main, "toy.train_prior")
