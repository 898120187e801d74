"""Trains the toy latent-diffusion model (a Stable Diffusion in miniature, `dreamjax.toy.sd_folder`) on renders of the
toy world and saves it in diffusers' SD layout, so that `--config.prior.model=<folder>` runs text-to-3D through
`priors/stable_diffusion.py` exactly as SD 1.5 would.

  python -m dreamjax.toy.train_sd --out /tmp/toy_sd [--vae_steps N --unet_steps N --text trained|frozen --resume]
(the shipped model, dreamjax/toy/weights/toy_sd, is replaced only with --out dreamjax/toy/weights/toy_sd --overwrite)

Two stages, as SD was made:
  1. VAE (AutoencoderKL, 32x32x3 -> 8x8x4): |D(z) - x|² + kl_weight · KL(q(z|x) | N(0, I)), z ~ q(z|x), means over
     pixels and latents; fresh random backgrounds and left-right flips every step. Then the latent scale is measured
     as SD's 0.18215 was: scaling_factor = 1 / std of sampled latents of training renders. The VAE is frozen after.
  2. UNet (+ the CLIP text encoder unless --text frozen): |eps_hat(sqrt(abar) z + sqrt(1 - abar) eps, t, text) -
     eps|², z = scaling_factor · (a sample of q(z|x)), t ~ U{0..999} on SD's scaled_linear schedule, captions
     "{prompt}, {view} view" tokenized to 77 CLIP tokens, replaced by "" with prob --p_uncond. Adam with warm-up and
     cosine decay; an EMA of the weights is what is saved.
Data: `dataset.load_or_generate` (the pixel prior's renders, 32², cached as .npz outside the repository).

Resumable: the folder holds `train_state.msgpack` (stage, step, weights, EMA, optimiser) from the last save; --resume
continues from it (the batches are drawn from (seed, step), so a resumed run sees what an uninterrupted one would).
The finished folder gets `training_summary.json`, `MODEL_CARD.md` and `samples/` (DDIM samples decoded by the VAE,
scored by the toy classifier); `train_state.msgpack` is then removed.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from dreamjax import cameras as cam_lib
from dreamjax import files
from dreamjax.toy import dataset as ds
from dreamjax.toy import sd_folder
from dreamjax.toy import shapes

STATE_FILE = "train_state.msgpack"
SUMMARY_FILE = "training_summary.json"
SHIPPED = pathlib.Path(__file__).resolve().parent / "weights" / "toy_sd"
EVAL_TIMESTEPS = (100, 250, 500, 750, 900)


# ----------------------------------------------------------------------------------------------- models


def build_modules():
  """(unet, vae, text_encoder) Flax modules of the toy model (float32); the text encoder is transformers'
  FlaxCLIPTextModel built without weights."""
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  from dreamjax.priors import stable_diffusion as sd
  unet, vae = sd.build_modules(sd_folder.UNET_CONFIG, sd_folder.VAE_CONFIG, jnp.float32, "toy_sd")
  with_ids = sd_folder.TEXT_CONFIG | text_ids()
  text_encoder = FlaxCLIPTextModel(CLIPTextConfig(**with_ids), dtype=jnp.float32, _do_init=False)
  return unet, vae, text_encoder


@functools.lru_cache(maxsize=1)
def _tokenizer_and_ids():
  """The toy CLIP tokenizer (built once per process; its files are read at load, so the folder can go) and its ids."""
  import tempfile
  with tempfile.TemporaryDirectory(prefix="toy_sd_tokenizer.") as tmp:
    sd_folder.write_tokenizer(tmp)
    return sd_folder.load_tokenizer(tmp), sd_folder.text_token_ids(pathlib.Path(tmp))


def tokenizer():
  return _tokenizer_and_ids()[0]


def text_ids() -> dict:
  return dict(_tokenizer_and_ids()[1])


def init_params(seed: int, unet, vae, text_encoder) -> dict:
  k_unet, k_vae, k_text = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"unet": unet.init_weights(k_unet), "vae": vae.init_weights(k_vae),
          "text_encoder": text_encoder.init_weights(k_text, (1, 77))}


def encode_moments(vae, vae_params, x):
  """x [B, 32, 32, 3] in [-1, 1] -> posterior mean, logvar [B, 8, 8, 4] (clipped as in StableDiffusion)."""
  moments = vae.apply({"params": vae_params}, x, method=lambda m, x: m.quant_conv(m.encoder(x, deterministic=True)))
  mean, logvar = jnp.split(moments, 2, axis=-1)
  return mean, jnp.clip(logvar, -30.0, 20.0)


def decode(vae, vae_params, z):
  """Unscaled latents [B, 8, 8, 4] -> images [B, 32, 32, 3] in about [-1, 1]."""
  return vae.apply({"params": vae_params}, z, method=lambda m, z: m.decoder(m.post_quant_conv(z), deterministic=True))


def caption_tokens(tok) -> np.ndarray:
  """CLIP token ids [num_objects, 4 view labels, 77] of every caption of the world."""
  return np.stack([np.asarray(tok([ds.caption(o, v) for v in range(4)], padding="max_length", max_length=77,
                                  truncation=True, return_tensors="np").input_ids, np.int32)
                   for o in range(len(shapes.OBJECTS))])


def empty_tokens(tok) -> np.ndarray:
  return np.asarray(tok([""], padding="max_length", max_length=77, return_tensors="np").input_ids[0], np.int32)


def make_batch(data: dict, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """Renders [B, 32, 32, 3] in [-1, 1] over fresh backgrounds, half flipped, and their example indices [B]."""
  idx = rng.integers(0, len(data["obj"]), size=batch)
  images = ds.composite(data["fg"][idx], data["alpha"][idx], rng)
  flip = rng.uniform(size=batch) < 0.5
  images[flip] = images[flip, :, ::-1]
  return 2.0 * images - 1.0, idx


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
  return np.random.default_rng([seed, {"vae": 1, "unet": 2}[stage], step])


def optimiser(lr: float, warmup: int, steps: int):
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr / 10)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def ema_update(ema, params, decay, step):
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, ema, params)


# ----------------------------------------------------------------------------------------------- state


def save_state(out: pathlib.Path, state: dict) -> None:
  raw = serialization.to_state_dict(jax.device_get(state))
  files.write_bytes(out / STATE_FILE, serialization.msgpack_serialize(raw))


# ----------------------------------------------------------------------------------------------- stage 1: VAE


def train_vae(state: dict, vae, data: dict, a, log) -> dict:
  """Trains state['params']['vae'] (and its EMA) from state['step'] to a.vae_steps; saves every a.save_every."""
  tx = optimiser(a.vae_lr, min(100, a.vae_steps // 10), a.vae_steps)
  if state.get("opt") is None:
    state["opt"] = tx.init(state["params"]["vae"])

  def loss_fn(p, x, key):
    mean, logvar = encode_moments(vae, p, x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    rec = decode(vae, p, z)
    mse = jnp.mean((rec - x) ** 2)
    kl = 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
    return mse + a.kl_weight * kl, (mse, kl)

  @jax.jit
  def step_fn(p, opt, ema, x, key, step):
    (loss, (mse, kl)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, key)
    upd, opt = tx.update(g, opt, p)
    p = optax.apply_updates(p, upd)
    return p, opt, ema_update(ema, p, a.ema_decay, step), mse, kl

  return _loop(state, "vae", a.vae_steps, a.vae_batch, data, a, log, lambda s, x, k: step_fn(
      s["params"]["vae"], s["opt"], s["ema"]["vae"], x, k, s["step"]), ("mse", "kl"))


def measure_scaling_factor(vae, vae_params, data: dict, num: int = 2048, seed: int = 7) -> dict:
  """1 / std of sampled (unscaled) latents of `num` training renders over fresh backgrounds, and their mean."""
  rng = np.random.default_rng(seed)
  fn = jax.jit(lambda p, x, k: _sample_latent(vae, p, x, k))
  zs = [np.asarray(fn(vae_params, jnp.asarray(make_batch(data, rng, 256)[0]), jax.random.PRNGKey(i)))
        for i in range(num // 256)]
  z = np.concatenate(zs)
  return {"scaling_factor": float(1.0 / z.std()), "latent_std": float(z.std()), "latent_mean": float(z.mean()),
          "num_renders": int(len(z))}


def standardise_latent_channels(vae, vae_params, data: dict, num: int = 2048, seed: int = 11) -> tuple[dict, dict]:
  """Centres each latent channel and gives it unit std, folded into the VAE's 1x1 quant_conv (encoder side) and
  post_quant_conv (decoder side): an exact reparametrisation, decode(encode(x)) is unchanged.

  Why: a VAE trained with a small KL term leaves channels with large, unequal offsets (the first toy VAE: scaled
  channel means -0.31, -0.24, 1.50, 1.50 against stds 0.32-0.58), so one global 1 / std (SD's scaling_factor) leaves
  the image's structure at about a third of unit scale and the noise schedule erases it early. With z' = (z - mu) /
  sigma per channel: quant_conv's mean outputs become (W x + b - mu) / sigma, its log-variance outputs shift by
  -2 log sigma, and post_quant_conv's input weights are scaled by sigma with W mu added to its bias.
  Returns (new VAE params, {"channel_mean": mu, "channel_std": sigma} of the old latents, as lists).
  """
  rng = np.random.default_rng(seed)
  fn = jax.jit(lambda p, x, k: _sample_latent(vae, p, x, k))
  z = np.concatenate([np.asarray(fn(vae_params, jnp.asarray(make_batch(data, rng, 256)[0]), jax.random.PRNGKey(i)))
                      for i in range(max(1, num // 256))]).reshape(-1, sd_folder.VAE_CONFIG["latent_channels"])
  mu, sigma = z.mean(0).astype(np.float64), z.std(0).astype(np.float64)
  c = len(mu)
  p = jax.tree_util.tree_map(lambda x: np.array(x, np.float64), jax.device_get(vae_params))
  q, pq = p["quant_conv"], p["post_quant_conv"]
  q["kernel"][..., :c] /= sigma
  q["bias"][:c] = (q["bias"][:c] - mu) / sigma
  q["bias"][c:] -= 2.0 * np.log(sigma)
  pq["bias"] = pq["bias"] + mu @ pq["kernel"][0, 0]
  pq["kernel"] = pq["kernel"] * sigma[None, None, :, None]
  new = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), p)
  return new, {"channel_mean": [float(x) for x in mu], "channel_std": [float(x) for x in sigma]}


def load_folder(folder: str) -> dict:
  """{unet, vae, text_encoder} params of a finished SD folder (`--vae_from`, `--init`), read by the SD loader."""
  from dreamjax.priors.stable_diffusion import StableDiffusion
  prior = StableDiffusion.from_pretrained(str(folder))
  params = {"unet": prior.params["unet"], "vae": prior.params["vae"], "text_encoder": prior.text_params}
  return jax.tree_util.tree_map(jnp.asarray, params)


def _sample_latent(vae, p, x, key):
  mean, logvar = encode_moments(vae, p, x)
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)


def vae_psnr(vae, vae_params, holdout: dict, num: int = 512) -> float:
  """PSNR (dB, images in [0, 1]) of decode(mean of q(z|x)) on held-out renders over their stored backgrounds."""
  x = 2.0 * jnp.asarray(holdout["images"][:num], jnp.float32) / 255.0 - 1.0
  rec = jax.jit(lambda p, x: decode(vae, p, encode_moments(vae, p, x)[0]))(vae_params, x)
  mse = float(jnp.mean((jnp.clip(rec, -1, 1) * 0.5 - x * 0.5) ** 2))
  return float(10.0 * np.log10(1.0 / mse))


# ----------------------------------------------------------------------------------------------- stage 2: UNet


def eps_loss(unet, text_encoder, abar, p_unet, p_text, z0, ids, t, eps):
  """Mean |eps_hat - eps|² for scaled latents z0 [B, 8, 8, 4], ids [B, 77], int t [B], eps like z0."""
  a = abar[t][:, None, None, None]
  z_t = jnp.sqrt(a) * z0 + jnp.sqrt(1.0 - a) * eps
  emb = text_encoder(ids, params=p_text).last_hidden_state
  out = unet.apply({"params": p_unet}, jnp.transpose(z_t, (0, 3, 1, 2)), t, emb).sample
  return jnp.mean((jnp.transpose(out, (0, 2, 3, 1)) - eps) ** 2)


def abar_schedule() -> jnp.ndarray:
  from dreamjax.priors import stable_diffusion as sd
  return jnp.asarray(sd.alphas_cumprod_from_config(sd_folder.SCHEDULER_CONFIG))


def train_unet(state: dict, unet, vae, text_encoder, data: dict, a, log) -> dict:
  tok = tokenizer()
  tokens, empty = caption_tokens(tok), empty_tokens(tok)
  abar = abar_schedule()
  scale = state["scaling_factor"]
  train_text = a.text == "trained"
  trainable = lambda p: {"unet": p["unet"], "text_encoder": p["text_encoder"]} if train_text else {"unet": p["unet"]}
  tx = optimiser(a.unet_lr, min(200, a.unet_steps // 10), a.unet_steps)
  if state.get("opt") is None:
    state["opt"] = tx.init(trainable(state["params"]))
  vae_params = state["params"]["vae"]
  frozen_text = state["params"]["text_encoder"]

  def loss_fn(p, x, ids, key):
    k_z, k_t, k_eps = jax.random.split(key, 3)
    z0 = jax.lax.stop_gradient(_sample_latent(vae, vae_params, x, k_z)) * scale
    t = jax.random.randint(k_t, (x.shape[0],), 0, abar.shape[0])
    eps = jax.random.normal(k_eps, z0.shape)
    return eps_loss(unet, text_encoder, abar, p["unet"], p.get("text_encoder", frozen_text), z0, ids, t, eps)

  @jax.jit
  def step_fn(p, opt, ema, x, ids, key, step):
    loss, g = jax.value_and_grad(loss_fn)(p, x, ids, key)
    upd, opt = tx.update(g, opt, p)
    p = optax.apply_updates(p, upd)
    return p, opt, ema_update(ema, p, a.ema_decay, step), loss

  def one(s, x, k, idx, rng):
    ids = tokens[data["obj"][idx], data["label"][idx]].copy()
    ids[rng.uniform(size=len(idx)) < a.p_uncond] = empty
    p, opt, ema, loss = step_fn(trainable(s["params"]), s["opt"], trainable(s["ema"]), x, jnp.asarray(ids), k,
                                s["step"])
    return p, opt, ema, loss

  return _loop(state, "unet", a.unet_steps, a.batch, data, a, log, one, ("loss",), with_ids=True)


def _loop(state, stage, steps, batch, data, a, log, step, names, with_ids=False) -> dict:
  """The shared training loop: batches from (seed, stage, step), progress lines, periodic saves, --max_minutes."""
  t0, hist = time.time(), []
  out = pathlib.Path(a.out)
  start = int(state["step"])
  wall_key = f"{stage}_wall_s"  # training seconds of this stage over all processes (a resumed run adds to it)
  wall_before = float(state["extra"].get(wall_key, 0.0))
  while int(state["step"]) < steps:
    i = int(state["step"])
    rng = step_rng(a.seed, stage, i)
    x, idx = make_batch(data, rng, batch)
    key = jax.random.fold_in(jax.random.PRNGKey(a.seed), 1000003 * (stage == "unet") + i)
    res = step(state, jnp.asarray(x), key, idx, rng) if with_ids else step(state, jnp.asarray(x), key)
    p, opt, ema, *metrics = res
    if stage == "vae":
      state["params"]["vae"], state["ema"]["vae"] = p, ema
    else:
      state["params"].update(p)
      state["ema"].update(ema)
    state["opt"] = opt
    state["step"] = i + 1
    hist.append([float(m) for m in metrics])
    done = i + 1
    elapsed = time.time() - t0
    if done % a.log_every == 0 or done == steps:
      rate = (done - start) / max(elapsed, 1e-9)
      m = np.mean(hist[-a.log_every:], axis=0)
      eta = (steps - done) / max(rate, 1e-9)
      log(f"{stage} {done:6d}/{steps}  " + "  ".join(f"{n} {v:.5f}" for n, v in zip(names, m)) +
          f"  {rate:.2f} steps/s  eta {eta / 60:.1f} min")
    out_of_time = a.max_minutes > 0 and elapsed > 60 * a.max_minutes
    if done % a.save_every == 0 or done == steps or out_of_time:
      state["extra"][wall_key] = round(wall_before + elapsed, 1)
      state.setdefault("curves", {}).setdefault(stage, [])
      state["curves"][stage] = list(state["curves"][stage]) + [float(np.mean(hist, axis=0)[0])]
      hist = hist[-a.log_every:]
      save_state(out, state)
    if out_of_time:
      log(f"stopping: --max_minutes {a.max_minutes} reached at {stage} step {done}; --resume continues")
      state["stopped"] = True
      break
  return state


# ----------------------------------------------------------------------------------------------- evaluation


def ddim_sample(prior, prompts, rng, num_steps: int = 25, guidance: float = 3.0) -> np.ndarray:
  """Deterministic DDIM samples (eta = 0) of a `StableDiffusion` prior with classifier-free guidance (diffusers
  form), decoded by its VAE: images [N, S, S, 3] in [0, 1]."""
  prompts = list(prompts)
  n = len(prompts)
  emb = jnp.concatenate([prior.encode_text(prompts), prior.encode_text([""] * n)])
  abar = jnp.asarray(prior.alphas_cumprod)
  steps = np.linspace(len(prior.alphas_cumprod) - 1, 0, num_steps).round().astype(np.int32)

  @jax.jit
  def update(z, t, t_prev):
    eps_c, eps_u = jnp.split(prior.predict_eps(prior.params, jnp.concatenate([z, z]), jnp.full((2 * n,), t), emb), 2)
    eps = eps_u + guidance * (eps_c - eps_u)
    a = abar[t]
    z0 = (z - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
    a_prev = jnp.where(t_prev >= 0, abar[jnp.maximum(t_prev, 0)], 1.0)
    return jnp.sqrt(a_prev) * z0 + jnp.sqrt(1 - a_prev) * eps

  z = jax.random.normal(rng, (n,) + prior.latent_shape)
  for i, t in enumerate(steps):
    z = update(z, jnp.int32(t), jnp.int32(steps[i + 1] if i + 1 < len(steps) else -1))
  return np.asarray(prior.decode(prior.params, z))


def caption_following(prior, guidances=(3.0, 10.0), per_view: int = 1, seed: int = 1) -> dict:
  """The toy classifier on DDIM samples of the 80 single-object view captions: shape / colour / both accuracy per
  guidance scale (chance 20% / 25% / 5%)."""
  from dreamjax.toy import classifier as clf_lib
  clf = clf_lib.load()
  singles = [i for i, o in enumerate(shapes.OBJECTS) if o.is_single]
  prompts = [cam_lib.view_prompt(shapes.PROMPTS[i], v) for i in singles for v in range(4) for _ in range(per_view)]
  s_true = np.repeat(clf_lib.SHAPE_OF[singles], 4 * per_view)
  c_true = np.repeat(clf_lib.COLOUR_OF[singles], 4 * per_view)
  out = {}
  for g in guidances:
    x = ddim_sample(prior, prompts, jax.random.PRNGKey(seed), guidance=g)
    s, c = clf.predict(x)
    out[str(g)] = {"shape": float(np.mean(s == s_true)), "colour": float(np.mean(c == c_true)),
                   "both": float(np.mean((s == s_true) & (c == c_true))), "num": len(prompts)}
  return out


def heldout_eps_mse(prior, holdout: dict, num: int = 256, seed: int = 123) -> dict:
  """eps-MSE per t on held-out renders with the true caption, the empty caption and another object's caption (same
  view), fixed noise; the gap true < wrong is what caption following needs."""
  x = jnp.asarray(holdout["images"][:num], jnp.float32) / 255.0
  obj, label = holdout["obj"][:num], holdout["label"][:num]
  wrong = (obj + 1 + np.random.default_rng(seed).integers(0, len(shapes.OBJECTS) - 1, size=num)) % len(shapes.OBJECTS)
  z0 = prior.to_latents(prior.params, x, jax.random.PRNGKey(seed))
  eps = jax.random.normal(jax.random.PRNGKey(seed + 1), z0.shape)
  abar = jnp.asarray(prior.alphas_cumprod)
  embs = {"true": prior.encode_text(ds.captions(obj, label)), "empty": prior.encode_text([""] * num),
          "wrong": prior.encode_text(ds.captions(wrong, label))}
  out = {}
  for t in EVAL_TIMESTEPS:
    a = abar[t]
    z_t = jnp.sqrt(a) * z0 + jnp.sqrt(1 - a) * eps
    tt = jnp.full((num,), t, jnp.int32)
    out[str(t)] = {k: float(jnp.mean((prior.predict_eps(prior.params, z_t, tt, e) - eps) ** 2))
                   for k, e in embs.items()}
  return out


def write_samples(prior, folder: pathlib.Path, guidance: float = 10.0, per_view: int = 2, seed: int = 0) -> None:
  """samples/<prompt>.png: rows front/side/back/overhead captions, `per_view` DDIM samples each, upscaled 2x."""
  from dreamjax import video
  prompts = [cam_lib.view_prompt(p, v) for p in shapes.PROMPTS for v in range(4) for _ in range(per_view)]
  images = np.concatenate([ddim_sample(prior, prompts[i:i + 96], jax.random.PRNGKey(seed + i), guidance=guidance)
                           for i in range(0, len(prompts), 96)])
  images = images.reshape(len(shapes.PROMPTS), 4 * per_view, *images.shape[1:])
  for p, im in zip(shapes.PROMPTS, images):
    big = np.repeat(np.repeat(im, 2, axis=1), 2, axis=2)
    video.save_png(video.image_grid(big, 4, per_view), folder / "samples" / (p.replace(" ", "_") + ".png"))


# ----------------------------------------------------------------------------------------------- CLI


def check_flags(a) -> None:
  """Every flag checked before any data is rendered or weights are touched (ValueError, one line)."""
  for name in ("vae_steps", "unet_steps", "batch", "vae_batch", "save_every", "log_every", "num_data"):
    if a[name].value < 1:
      raise ValueError(f"--{name} must be >= 1 (got {a[name].value})")
  for name in ("vae_lr", "unet_lr"):
    if not 0 < a[name].value < float("inf"):
      raise ValueError(f"--{name} must be a finite number > 0 (got {a[name].value})")
  for name in ("p_uncond", "ema_decay"):
    if not 0.0 <= a[name].value < 1.0:
      raise ValueError(f"--{name} must be in [0, 1) (got {a[name].value})")
  if not 0.0 <= a.kl_weight < float("inf"):
    raise ValueError(f"--kl_weight must be a finite number >= 0 (got {a.kl_weight})")
  if not 0.0 <= a.max_minutes < float("inf"):
    raise ValueError(f"--max_minutes must be >= 0 (got {a.max_minutes})")
  for name in ("vae_from", "init"):
    if a[name].value and not (pathlib.Path(a[name].value).expanduser() / "model_index.json").is_file():
      raise ValueError(f"--{name} {a[name].value!r} holds no model_index.json; pass a finished SD folder (e.g. the "
                       f"shipped {SHIPPED})")
  if a.init and a.vae_from and pathlib.Path(a.init).resolve() != pathlib.Path(a.vae_from).resolve():
    raise ValueError("--init and --vae_from name different folders; --init takes its VAE from the same folder")
  if a.init and a.standardise_latents:
    raise ValueError("--standardise_latents with --init would change the latents the UNet was trained on; drop one")
  out = pathlib.Path(a.out).expanduser()
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {str(out)!r} is a file, not a folder; pass a folder for the model")
  has_state = (out / STATE_FILE).exists()
  has_model = (out / "model_index.json").exists()
  if a.resume and not has_state:
    raise ValueError(f"--resume: {str(out)!r} holds no {STATE_FILE} to continue from; drop --resume to start anew")
  if not a.resume and (has_state or has_model) and not a.overwrite:
    shipped = " (the model shipped in the package)" if out.resolve() == SHIPPED else ""
    what = "an unfinished training run (pass --resume to continue it)" if has_state else "a model"
    raise ValueError(f"--out {str(out)!r} already holds {what}{shipped}; pass another --out, or --overwrite to "
                     f"replace it")


def train(a, log=print) -> dict:
  """Runs both stages (or what is left of them with --resume) and finishes the folder. Returns the summary."""
  out = pathlib.Path(a.out).expanduser()
  unet, vae, text_encoder = build_modules()
  params = init_params(a.seed, unet, vae, text_encoder)
  n = {k: int(sum(x.size for x in jax.tree_util.tree_leaves(v))) for k, v in params.items()}
  log(f"parameters: unet {n['unet']:,}  vae {n['vae']:,}  text encoder {n['text_encoder']:,}")
  state = {"stage": "vae", "step": 0, "params": params, "ema": jax.tree_util.tree_map(jnp.copy, params),
           "opt": None, "scaling_factor": 1.0, "curves": {}, "extra": {}}
  if a.resume:
    state = _resume(out, state, unet, vae, text_encoder, a)
    log(f"resuming {out} at {state['stage']} step {state['step']}")
  data = ds.load_or_generate(a.data, a.num_data, a.data_seed)
  holdout = ds.load_or_generate(a.holdout, 512, a.holdout_seed)
  if state["stage"] == "vae":
    if a.init:
      loaded = load_folder(a.init)
      for k in ("unet", "text_encoder"):
        state["params"][k] = loaded[k]
        state["ema"][k] = jax.tree_util.tree_map(jnp.copy, loaded[k])
      log(f"UNet and text encoder start from {a.init}")
      state["extra"]["init"] = {"from": str(a.init), "unet": _summary(a.init).get("unet", {}).get("steps")}
    vae_from = a.vae_from or a.init
    if vae_from:
      ema_vae = loaded["vae"] if a.init else load_folder(vae_from)["vae"]
      trained = _summary(vae_from).get("vae", {})
      record = {"from": str(vae_from), "steps": trained.get("steps"), "final_mse": trained.get("final_mse"),
                "wall_s": trained.get("wall_s")}
      log(f"VAE: taken from {vae_from} (not trained here)")
    else:
      state = train_vae(state, vae, data, a, log)
      if state.pop("stopped", False):
        return {}
      ema_vae = state["ema"]["vae"]
      record = {"steps": a.vae_steps, "final_mse": state["curves"]["vae"][-1],
                "wall_s": state["extra"].get("vae_wall_s")}
    if a.standardise_latents:
      ema_vae, record["standardised"] = standardise_latent_channels(vae, ema_vae, data)
      log("VAE latent channels standardised (folded into quant_conv / post_quant_conv): old means "
          f"{np.round(record['standardised']['channel_mean'], 3).tolist()}, stds "
          f"{np.round(record['standardised']['channel_std'], 3).tolist()}")
    state["extra"]["vae"] = measure_scaling_factor(vae, ema_vae, data) | {
        "heldout_psnr_db": vae_psnr(vae, ema_vae, holdout)} | record
    log(f"VAE: held-out PSNR {state['extra']['vae']['heldout_psnr_db']:.2f} dB, latent std "
        f"{state['extra']['vae']['latent_std']:.4f} -> scaling_factor {state['extra']['vae']['scaling_factor']:.5f}")
    state.update(stage="unet", step=0, opt=None, scaling_factor=state["extra"]["vae"]["scaling_factor"])
    state["params"]["vae"] = ema_vae  # frozen from here on: the EMA weights
    save_state(out, state)
  state = train_unet(state, unet, vae, text_encoder, data, a, log)
  if state.pop("stopped", False):
    return {}
  folder = sd_folder.write_folder(out, _final_params(state), state["scaling_factor"])
  from dreamjax.priors.stable_diffusion import StableDiffusion
  prior = StableDiffusion.from_pretrained(str(folder))  # read back through the SD loader: what users get
  summary = {
      "data": {"num_train": int(a.num_data), "data_seed": a.data_seed, "holdout_seed": a.holdout_seed,
               "resolution": ds.RESOLUTION},
      "parameters": n, "vae": state["extra"]["vae"],
      "unet": {"steps": a.unet_steps, "batch": a.batch, "vae_batch": a.vae_batch, "lr": a.unet_lr, "text": a.text,
               "p_uncond": a.p_uncond,
               "ema_decay": a.ema_decay, "loss_curve": state["curves"]["unet"],
               "final_loss": state["curves"]["unet"][-1], "wall_s": state["extra"].get("unet_wall_s"),
               "init": state["extra"].get("init")},
      "heldout_eps_mse": heldout_eps_mse(prior, holdout),
      "caption_following": caption_following(prior),
      "seed": a.seed,
  }
  files.write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1))
  write_samples(prior, out)
  files.write_text(out / "MODEL_CARD.md", model_card(summary))
  (out / STATE_FILE).unlink()
  log(f"wrote {out}: caption following {summary['caption_following']}")
  return summary


def model_card(summary: dict) -> str:
  """MODEL_CARD.md of a trained folder, from its training_summary.json."""
  v, u, n = summary["vae"], summary["unet"], summary["parameters"]
  lines = [
      "# Toy latent-diffusion model (Stable Diffusion layout): model card", "",
      "Trained here from scratch on renders of the toy world (`dreamjax/toy/shapes.py`, `dreamjax/toy/dataset.py`) "
      "by `python -m dreamjax.toy.train_sd`; nothing from any other model or data set. Loaded like SD 1.5: "
      "`--config.prior.model=<this folder>` (configs/toy_sd.py).", "",
      "## Architecture (diffusers / transformers classes, SD 1.x layout)",
      "- VAE `AutoencoderKL`: 32×32×3 ↔ 8×8×4 (factor 4), block_out_channels "
      f"{sd_folder.VAE_CONFIG['block_out_channels']}, "
      f"{n['vae']:,} parameters; `scaling_factor` {v['scaling_factor']:.5f} = 1 / std of sampled latents of "
      f"{v['num_renders']} training renders (std {v['latent_std']:.4f}, mean {v['latent_mean']:.4f}), as SD's 0.18215.",
      "- UNet `UNet2DConditionModel`: 8×8×4 latents, block_out_channels "
      f"{sd_folder.UNET_CONFIG['block_out_channels']}, "
      f"cross-attention on the text states at 8×8, 4×4 and the middle block (no pooled-text path: SD 1.x has none), "
      f"{n['unet']:,} parameters.",
      f"- Text encoder `CLIPTextModel`: width {sd_folder.TEXT_WIDTH}, {sd_folder.TEXT_CONFIG['num_hidden_layers']} "
      f"layers, 77 positions, {n['text_encoder']:,} parameters, {u['text']}; tokenizer `CLIPTokenizer` (byte-level "
      "BPE; every toy word and view word is one token; pad = <|endoftext|>). Trained with the UNet (`--text "
      "trained`, the pixel prior's choice) or kept at its random initialisation (`--text frozen`): one run "
      "each, frozen followed captions at least as well (shape named in 61% vs 48% of guidance-10 samples; "
      "docs/toy_sd.md).",
      "- Scheduler: DDPM, scaled_linear 0.00085–0.012, 1000 steps, epsilon prediction (SD 1.5's training schedule).",
      "", "## Data",
      f"- {summary['data']['num_train']:,} renders ({summary['data']['resolution']}², "
      f"seed {summary['data']['data_seed']}"
      "), the pixel toy prior's data: the paper's training-view distribution, shading 0.25 albedo / 0.375 shaded / "
      "0.375 textureless, re-composited over fresh random backgrounds and flipped left-right at every step; captions "
      "`\"{prompt}, {view} view\"`. Held-out: 512 renders, seed " + f"{summary['data']['holdout_seed']}.",
      "", "## Training",
      (f"- VAE (taken from `{v['from']}`, not retrained): " if v.get("from") else "- VAE: ") +
      f"{v['steps']} steps, batch {u.get('vae_batch', '?')}, Adam 1e-3 (warm-up, cosine), "
      "|D(z) - x|² + 1e-6 KL; "
      f"final training MSE {v['final_mse']:.4f} (images in [-1, 1]); **held-out PSNR {v['heldout_psnr_db']:.2f} dB** "
      f"(decoded posterior mean, images in [0, 1]); {v['wall_s']:.0f} s." + (
          " Latent channels standardised (folded into quant_conv / post_quant_conv; old means "
          + ", ".join(f"{x:.3f}" for x in v["standardised"]["channel_mean"]) + ", stds "
          + ", ".join(f"{x:.3f}" for x in v["standardised"]["channel_std"]) + ")." if v.get("standardised") else ""),
      f"- UNet + text encoder: {u['steps']} steps" + (
          f" continuing `{u['init']['from']}` (after its {u['init']['unet']} steps)" if u.get("init") else "") +
      f", batch {u['batch']}, Adam {u['lr']} (warm-up, cosine to 1/10), "
      f"{100 * u['p_uncond']:.0f}% empty captions, EMA {u['ema_decay']} (shipped); final loss {u['final_loss']:.4f}; "
      f"{u['wall_s']:.0f} s on the 2-core CPU" + (f" ({u['wall_note']})" if u.get("wall_note") else "") +
      f". Loss per {len(u['loss_curve'])} saves: "
      + ", ".join(f"{x:.4f}" for x in u["loss_curve"]) + ".",
      "", "## Does it follow its caption?",
      "ε-MSE on 256 held-out renders, fixed noise, with the true caption, the empty caption and another object's "
      "caption (same view):", "", "| t | true | empty | wrong |", "|---|---|---|---|"]
  for t, m in summary["heldout_eps_mse"].items():
    lines.append(f"| {t} | {m['true']:.4f} | {m['empty']:.4f} | {m['wrong']:.4f} |")
  lines += ["", "The toy classifier (dreamjax/toy/weights/toy_classifier) on DDIM samples (25 steps, decoded by the "
            "VAE) "
            "of the 80 single-object view captions:", "", "| guidance | shape | colour | both |", "|---|---|---|---|"]
  for g, m in summary["caption_following"].items():
    lines.append(f"| {float(g):g} | {100 * m['shape']:.1f}% | {100 * m['colour']:.1f}% | {100 * m['both']:.1f}% |")
  lines += ["", "Chance: 20% / 25% / 5%. Colour is capped below 100% by the data: 37.5% of the training renders are "
            "textureless (white).", "",
            "Sample grids: `samples/<prompt>.png`, rows front / side / back / overhead captions, 2 DDIM samples each "
            "(guidance 10, seed 0), upscaled 2×.", ""]
  return "\n".join(lines)


def _summary(folder: str) -> dict:
  """training_summary.json of a finished folder, or {} when it has none (a folder not made by this trainer)."""
  path = pathlib.Path(folder).expanduser() / SUMMARY_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def _final_params(state) -> dict:
  ema = state["ema"]
  return {"unet": ema["unet"], "vae": state["params"]["vae"], "text_encoder": ema["text_encoder"]}


def _resume(out, state, unet, vae, text_encoder, a) -> dict:
  raw = serialization.msgpack_restore((out / STATE_FILE).read_bytes())
  stage = raw["stage"]
  state["stage"] = stage
  if stage == "vae":
    state["opt"] = optimiser(a.vae_lr, 1, 2).init(state["params"]["vae"])
  else:
    tr = {"unet": state["params"]["unet"]}
    if a.text == "trained":
      tr["text_encoder"] = state["params"]["text_encoder"]
    state["opt"] = optimiser(a.unet_lr, 1, 2).init(tr)
  state["extra"] = raw.get("extra", {})
  state["curves"] = raw.get("curves", {})
  restored = serialization.from_state_dict({k: state[k] for k in ("step", "params", "ema", "opt",
                                                                  "scaling_factor")}, raw)
  state.update(restored)
  state["curves"] = {k: [float(x) for x in (v.values() if isinstance(v, dict) else v)]
                     for k, v in state["curves"].items()}
  return state


def main(argv) -> None:
  from absl import flags
  a = flags.FLAGS
  if a.card_only:
    summary = pathlib.Path(a.out) / SUMMARY_FILE
    if not summary.exists():
      raise ValueError(f"--card_only: {str(summary)!r} is missing; train the model first")
    files.write_text(pathlib.Path(a.out) / "MODEL_CARD.md", model_card(json.loads(summary.read_text())))
    return
  check_flags(a)
  train(a, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
  from absl import flags
  from dreamjax import cli
  flags.DEFINE_string("out", str(SHIPPED), "Model folder (diffusers SD layout).")
  flags.DEFINE_bool("overwrite", False, "Replace a model already in --out (the default --out is the shipped one).")
  flags.DEFINE_bool("resume", False, "Continue the unfinished run in --out.")
  flags.DEFINE_bool("card_only", False, "Only (re)write MODEL_CARD.md of --out from its training_summary.json.")
  flags.DEFINE_integer("vae_steps", 800, "VAE training steps.")
  flags.DEFINE_integer("unet_steps", 3500, "UNet training steps.")
  flags.DEFINE_integer("batch", 64, "UNet batch size.")
  flags.DEFINE_integer("vae_batch", 32, "VAE batch size.")
  flags.DEFINE_float("vae_lr", 1e-3, "Peak Adam learning rate of the VAE.")
  flags.DEFINE_float("unet_lr", 1e-3, "Peak Adam learning rate of the UNet (and text encoder).")
  flags.DEFINE_string("vae_from", "", "Take the VAE of this finished SD folder instead of training one (the UNet "
                      "and text encoder are trained anew).")
  flags.DEFINE_string("init", "", "Continue from this finished SD folder: its VAE (frozen), UNet and text encoder; "
                      "the UNet stage runs --unet_steps more steps with a fresh schedule.")
  flags.DEFINE_bool("standardise_latents", False, "Centre the VAE's latent channels and give them unit std (an "
                    "exact reparametrisation folded into its 1x1 convs) before the scaling_factor is measured. Off by "
                    "default: measured on 'a red cube' it did not make text-to-3D draw shapes (docs/toy_sd.md).")
  flags.DEFINE_float("kl_weight", 1e-6, "KL weight of the VAE loss (means over pixels and latents).")
  flags.DEFINE_enum("text", "trained", ["trained", "frozen"], "Train the CLIP text encoder with the UNet, or keep "
                    "its random initialisation.")
  flags.DEFINE_float("p_uncond", 0.1, "Probability of the empty caption (classifier-free guidance).")
  flags.DEFINE_float("ema_decay", 0.995, "EMA decay of the saved weights.")
  flags.DEFINE_integer("seed", 0, "Training seed.")
  flags.DEFINE_integer("save_every", 250, "Save interval (steps).")
  flags.DEFINE_integer("log_every", 50, "Progress line interval (steps).")
  flags.DEFINE_float("max_minutes", 0.0, "Stop (and save; --resume continues) after this wall time; 0 = off.")
  flags.DEFINE_string("data", "/tmp/toy_prior_train.npz", "Dataset cache (.npz), generated if absent.")
  flags.DEFINE_integer("num_data", 8000, "Training renders.")
  flags.DEFINE_integer("data_seed", 0, "Seed of the training renders.")
  flags.DEFINE_string("holdout", "/tmp/toy_heldout.npz", "Held-out renders (cache .npz, generated if absent).")
  flags.DEFINE_integer("holdout_seed", 2, "Seed of the held-out renders.")
  cli.run(main, "toy.train_sd")
