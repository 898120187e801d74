"""`python -m dreamjax.bench`: speed and memory of the real DreamFusion train step, whole and phase by phase.

  python -m dreamjax.bench --config configs/dreamfusion.py --arch sd15 --batch 1,2,4,8 --steps 20 --warmup 3
  python -m dreamjax.bench --config configs/tiny.py --arch config --steps 5 --warmup 2   # CPU / CI
  python -m dreamjax.bench --config configs/dreamfusion.py --arch sd21 --dtype bfloat16 --json sd21.json

--arch sd15 | sd21 builds the Stable Diffusion 1.5 / 2.1-base UNet and VAE from their architectures with random
weights (nothing is downloaded) and feeds random text embeddings [N, 77, 768] / [N, 77, 1024] instead of running CLIP;
--arch config uses the prior the config names (configs/tiny.py: the tiny SD fixture). Any config field can be
overridden (`--config.render.num_fine=64`).

Per per-device batch B (each device renders B cameras, as in training) it reports:
  * the whole compiled step (`train_step.make_train_step`, jit(shard_map), state donated): median and min ms over
    --steps timed calls after --warmup calls, each synchronised with `jax.block_until_ready`; it/s = 1000 / median ms
    and images/s = global batch × it/s; compile seconds;
  * each phase as its own jitted function on the step's shapes, vmapped over the B cameras like the step:
      render     camera/light draw + render + normals, forward and backward to the NeRF (the prior replaced by the
                 identity, so the cotangent is the SDS gradient of the image itself),
      encode     prior.to_latents forward + vjp at the render's input (SD: bilinear resize to 512², VAE encoder),
      unet       prior.predict_eps on the CFG batch (2 per camera; 3 for NFSD), no gradient,
      guidance   the prior side of the step: encode + noise + UNet + distillation rule + vjp to the image,
      optimizer  tx.update + apply_updates on the scene parameters;
  * FLOPs of each compiled function from XLA's cost analysis (per device; library custom calls such as the eigh of
    Shampoo's inverse roots may count as zero) and achieved TFLOP/s = FLOPs / median time;
  * memory: the device allocator's peak (`device.memory_stats()['peak_bytes_in_use']`, the process's peak so far:
    batches run in ascending order) where the backend reports it (GPU/TPU; "n/a" on CPU), and XLA's static estimate
    for the compiled step (arguments + outputs + temporaries - aliased).

--flops_only counts FLOPs from the lowered (unoptimised) HLO with abstract weights instead: nothing is compiled,
allocated or run, so SD-size FLOP counts come from any host. --compile_only also compiles (still abstract
weights, nothing run) and adds XLA's static memory estimate and the optimised HLO's FLOPs for this host's backend.
--xla_option KEY=VALUE passes compiler options to every compiled function (levers such as XLA GPU flags; the CI
test uses it to compile faster). Speed and memory levers are config fields: --config.prior.attention,
--config.render.ray_chunks, --config.prior.remat_encoder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dreamjax import distill
from dreamjax import train_state as ts_lib
from dreamjax import train_step as step_lib
from dreamjax.nerf import scene

PyTree = Any

ARCHS = ("sd15", "sd21", "config")
PHASES = ("render", "encode", "unet", "guidance", "optimizer")
PHASE_LABELS = {
    "step": "full train step",
    "render": "render + normals, fwd+bwd",
    "encode": "encode (to_latents), fwd+bwd",
    "unet": "UNet fwd, CFG batch",
    "guidance": "guidance: encode+UNet+grad",
    "optimizer": "optimizer update",
}

# ------------------------------------------------------------------------------------------------ SD architectures
# The component configs of the public checkpoints, in their diffusers config.json form (entries the Flax classes
# read; `stable_diffusion._flax_kwargs` keeps the fields of each class, as `from_pretrained` does).

_SD_UNET_COMMON = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
    "dropout": 0.0, "only_cross_attention": False, "mid_block_type": "UNetMidBlock2DCrossAttn",
}
_SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "act_fn": "silu", "sample_size": 512, "scaling_factor": 0.18215,
}
_SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                 "beta_end": 0.012, "prediction_type": "epsilon"}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A Stable Diffusion architecture: component configs (diffusers config.json form) and the text width D."""
  name: str
  unet: dict
  vae: dict
  scheduler: dict
  text_dim: int
  text_len: int = 77


ARCHITECTURES = {
    # stable-diffusion-v1-5: 8 heads everywhere, CLIP ViT-L/14 text (768), conv in/out projections in attention.
    "sd15": Architecture("sd15", _SD_UNET_COMMON | {"attention_head_dim": 8, "cross_attention_dim": 768,
                                                    "use_linear_projection": False},
                         _SD_VAE, _SD_SCHEDULER, text_dim=768),
    # stable-diffusion-2-1-base (512², epsilon): head widths 64 (5/10/20/20 heads), OpenCLIP ViT-H text (1024),
    # linear in/out projections.
    "sd21": Architecture("sd21", _SD_UNET_COMMON | {"attention_head_dim": [5, 10, 20, 20],
                                                    "cross_attention_dim": 1024, "use_linear_projection": True},
                         _SD_VAE, _SD_SCHEDULER, text_dim=1024),
}


def sd_modules(arch: str, dtype: Any = jnp.float32, use_memory_efficient_attention: bool = False):
  """(FlaxUNet2DConditionModel, FlaxAutoencoderKL) of architecture `arch` ('sd15' | 'sd21'), computing in dtype."""
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  from dreamjax.priors import stable_diffusion as sd
  a = ARCHITECTURES[arch]
  sd._check_supported(a.unet, sd._UNET_REQUIRED, f"{arch}: unet")  # the checks from_pretrained applies
  sd._check_supported(a.vae, sd._VAE_REQUIRED, f"{arch}: vae")
  unet = FlaxUNet2DConditionModel(**sd._flax_kwargs(FlaxUNet2DConditionModel, a.unet), dtype=dtype,
                                  use_memory_efficient_attention=use_memory_efficient_attention)
  vae = FlaxAutoencoderKL(**sd._flax_kwargs(FlaxAutoencoderKL, a.vae), dtype=dtype)
  sd._quiet_diffusers_flax()
  return unet, vae


def param_count(tree: PyTree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal_leaf(key, shape: tuple, dtype, std):
  return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def random_like(shapes: PyTree, key, dtype: Any) -> PyTree:
  """Random parameters with the shapes of `shapes` (ShapeDtypeStructs), cast to dtype, made on the device leaf by
  leaf (one small compiled generator per distinct shape; no float32 copy of the whole tree).

  'kernel' ~ N(0, 1/fan_in) (fan_in = product of all but the last axis: Flax's LeCun scale), 'scale' = 1,
  'bias' = 0, anything else ~ N(0, 0.02²). The values only have to keep activations of a sensible size.
  """
  paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for i, (path, s) in enumerate(paths):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(int(d) for d in s.shape)
    if name == "bias":
      x = jnp.zeros(shape, dtype)
    elif name == "scale":
      x = jnp.ones(shape, dtype)
    else:
      std = 1.0 / math.sqrt(max(int(np.prod(shape[:-1])), 1)) if name == "kernel" else 0.02
      x = _normal_leaf(jax.random.fold_in(key, i), shape, jnp.dtype(dtype), np.float32(std))
    out.append(x)
  return jax.tree_util.tree_unflatten(treedef, out)


def random_stable_diffusion(arch: str, dtype: Any = jnp.float32, seed: int = 0,
                            use_memory_efficient_attention: bool = False, abstract: bool = False,
                            attention: str = "auto", remat_encoder: bool = False):
  """A `StableDiffusion` of architecture `arch` with random weights, built with the class's constructor.

  It has no text encoder or tokenizer (`encode_text` is unavailable): use `random_text` for embeddings. With
  abstract=True its params are jax.ShapeDtypeStructs (nothing allocated; for `jax.eval_shape` checks).
  attention, remat_encoder: as in `StableDiffusion.from_pretrained`.
  """
  from dreamjax.priors import stable_diffusion as sd
  a = ARCHITECTURES[arch]
  unet, vae = sd_modules(arch, dtype, use_memory_efficient_attention)
  key = jax.random.PRNGKey(seed)
  k_unet, k_vae = jax.random.split(key)
  if abstract:
    make = lambda shapes, k, dt: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, dt), shapes)
  else:
    make = random_like
  params = {"unet": make(jax.eval_shape(unet.init_weights, key), k_unet, dtype),
            "vae": make(jax.eval_shape(vae.init_weights, key), k_vae, dtype)}
  image_size = int(unet.sample_size) * 2 ** (len(vae.block_out_channels) - 1)
  return sd.StableDiffusion(unet=unet, vae=vae, text_encoder=None, tokenizer=None, params=params, text_params=None,
                            alphas_cumprod=sd.alphas_cumprod_from_config(a.scheduler),
                            prediction_type=a.scheduler["prediction_type"], image_size=image_size, dtype=dtype,
                            scaling_factor=a.vae["scaling_factor"], source=f"random:{arch}", attention=attention,
                            remat_encoder=remat_encoder)


def random_text(config: ml_collections.ConfigDict, dim: int, length: int = 77, seed: int = 0) -> dict:
  """Random N(0, 1) stand-ins for `train_step.text_embeddings`: 'views' [4, L, D], 'uncond' [1, L, D] (and 'neg'
  [1, L, D] for NFSD), float32."""
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  text = {"views": jax.random.normal(k[0], (4, length, dim)), "uncond": jax.random.normal(k[1], (1, length, dim))}
  if config.distill.name == "nfsd":
    text["neg"] = jax.random.normal(k[2], (1, length, dim))
  return text


# ------------------------------------------------------------------------------------------------ measurement


def _flops(compiled) -> float | None:
  """Total FLOPs of a compiled (or lowered) computation from XLA's cost analysis (None when there is none)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def _xla_bytes(compiled) -> int | None:
  """XLA's static memory estimate of an executable: arguments + outputs + temporaries - aliased (bytes)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def device_memory(device=None) -> dict | None:
  """{'peak_bytes', 'bytes_in_use'} from the allocator, or None where the backend keeps no statistics (CPU)."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return {"peak_bytes": int(stats["peak_bytes_in_use"]), "bytes_in_use": int(stats.get("bytes_in_use", 0))}


def _summary(times_s: Sequence[float], flops: float | None, xla_bytes: int | None = None) -> dict:
  med = statistics.median(times_s)
  return {"median_ms": 1e3 * med, "min_ms": 1e3 * min(times_s), "flops": flops,
          "tflops_per_s": (flops / med / 1e12) if flops and med > 0 else None, "xla_bytes": xla_bytes,
          "times_ms": [1e3 * t for t in times_s]}


def time_jitted(fn: Callable, args: tuple, steps: int, warmup: int, compiler_options: dict | None = None) -> dict:
  """Compiles jit(fn) for `args`, then times `steps` synchronised calls after `warmup` calls."""
  compiled = jax.jit(fn).lower(*args).compile(compiler_options)
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return _summary(times, _flops(compiled), _xla_bytes(compiled))


class _IdentityPrior:
  """Stands in for the prior in the render phase: latents are the image itself and every eps prediction is 0, so
  the camera loss costs the render, its regularisers and the SDS cotangent, and nothing of a network."""

  def __init__(self, alphas_cumprod: np.ndarray):
    self.alphas_cumprod = alphas_cumprod
    self.params = None

  def to_latents(self, params, images, rng):
    del params, rng
    return images

  def predict_eps(self, params, z_t, t, emb):
    del params, t, emb
    return jnp.zeros_like(z_t)


def phase_functions(config: ml_collections.ConfigDict, prior, tx: optax.GradientTransformation) -> dict:
  """The step's phases as pure functions (jit them); per-camera inputs have a leading axis B (cameras).

    render(params, text, keys [B, 2], step)              -> (loss, grads)
    encode(prior_params, images [B, 1, H, W, 3], keys, ct [B, 1, h, w, c]) -> (z, d images)
    unet(prior_params, z_t [B, n, h, w, c], t [B, n], emb [B, n, L, D]) -> eps
    guidance(prior_params, text, images [B, 1, H, W, 3], keys) -> d loss / d images
    optimizer(grads, opt_state, params)                  -> (params, opt_state)
  """
  identity = _IdentityPrior(np.asarray(prior.alphas_cumprod))

  def render(params, text, keys, step):
    def mean_loss(p):
      return jnp.mean(jax.vmap(lambda k: step_lib.camera_loss(p, None, text, k, step, config=config,
                                                              prior=identity)[0])(keys))
    return jax.value_and_grad(mean_loss)(params)

  def encode(prior_params, images, keys, ct):
    def one(x, k, c):
      z, vjp = jax.vjp(lambda img: prior.to_latents(prior_params, img, k), x)
      return z, vjp(c)[0]
    return jax.vmap(one)(images, keys, ct)

  def unet(prior_params, z_t, t, emb):
    return jax.vmap(lambda z, tt, e: prior.predict_eps(prior_params, z, tt, e))(z_t, t, emb)

  def guidance(prior_params, text, images, keys):
    def one(x, k):
      k_lat, k_dist, k_view = jax.random.split(k, 3)
      label = jax.random.randint(k_view, (1,), 0, text["views"].shape[0])  # per camera, as in the step
      def loss(img):
        z = prior.to_latents(prior_params, img, k_lat)
        g, _ = distill.distill_step(config.distill, prior, prior_params, z, k_dist, text["views"][label],
                                    text["uncond"], text.get("neg"))
        return distill.surrogate_loss(z, g)
      return jax.grad(loss)(x)
    return jax.vmap(one)(images, keys)

  def optimizer(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return {"render": render, "encode": encode, "unet": unet, "guidance": guidance, "optimizer": optimizer}


# ------------------------------------------------------------------------------------------------ the benchmark


def build(config: ml_collections.ConfigDict, arch: str, dtype: str = "auto", seed: int = 0,
          use_memory_efficient_attention: bool = False, abstract: bool = False):
  """(prior, text) for `arch`: a random-weight SD architecture with random text (abstract: parameters as
  ShapeDtypeStructs), or the config's prior with `train_step.text_embeddings`. dtype 'auto' is bfloat16 on GPU/TPU
  and float32 on CPU (or the config's prior.dtype for arch 'config')."""
  from dreamjax.priors.load import load_prior, resolve_dtype, sd_options
  if arch not in ARCHS:
    raise ValueError(f"--arch {arch!r} is unknown; use one of {', '.join(ARCHS)}")
  if arch == "config":
    if dtype != "auto":
      config.prior.dtype = dtype
    prior = load_prior(config)
    return prior, step_lib.text_embeddings(prior, config)
  prior = random_stable_diffusion(arch, resolve_dtype(dtype), seed, use_memory_efficient_attention, abstract,
                                  **sd_options(config))
  return prior, random_text(config, ARCHITECTURES[arch].text_dim, ARCHITECTURES[arch].text_len, seed)


def _cfg_batch(config) -> int:
  return 3 if config.distill.name == "nfsd" else 2


def _batch_config(config: ml_collections.ConfigDict, batch: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  config.render.batch_per_device = batch
  config.train.disable_jit = False
  return config


def _phase_args(name: str, config: ml_collections.ConfigDict, prior, text: dict, state, prior_params, batch: int,
                put: Callable = lambda x: x) -> tuple:
  """Inputs of phase `name` at per-device batch `batch` (see `phase_functions`); `state` and `prior_params` may be
  abstract (jax.ShapeDtypeStruct trees); small random inputs are made here and placed with `put`."""
  h, w = config.render.height, config.render.width
  keys = put(jax.random.split(jax.random.PRNGKey(1), batch))
  images = put(jax.random.uniform(jax.random.PRNGKey(2), (batch, 1, h, w, 3)))
  z_shape = jax.eval_shape(prior.to_latents, prior_params, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32),
                           jax.random.PRNGKey(0)).shape
  n = _cfg_batch(config)
  if name == "render":
    return (state.params, text, keys, jnp.int32(config.shading.albedo_only_steps))
  if name == "encode":
    return (prior_params, images, keys, put(jax.random.normal(jax.random.PRNGKey(3), (batch,) + z_shape)))
  if name == "unet":
    z_t = jax.random.normal(jax.random.PRNGKey(4), (batch, n) + z_shape[1:])
    t = jax.random.randint(jax.random.PRNGKey(5), (batch, n), 20, 981)
    embs = [text["views"][0], text["uncond"][0]] + ([text["neg"][0]] if n == 3 else [])
    emb = jnp.broadcast_to(jnp.stack(embs), (batch, n) + tuple(text["views"].shape[1:]))
    return (prior_params, put(z_t), put(t), put(emb))
  if name == "guidance":
    return (prior_params, text, images, keys)
  if name == "optimizer":
    params = state.params
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(params)):
      grads = params
    else:
      grads = jax.tree_util.tree_map(lambda p: 1e-3 * jnp.ones_like(p) + 1e-2 * p, params)
    return (grads, state.opt_state, params)
  raise ValueError(f"unknown phase {name!r}; use {', '.join(PHASES)}")


def benchmark_batch(config: ml_collections.ConfigDict, prior, text: dict, batch: int, *, steps: int, warmup: int,
                    num_devices: int = 1, phases: Sequence[str] = PHASES, compiler_options: dict | None = None,
                    log: Callable[[str], None] = print) -> dict:
  """Times the compiled step (and `phases`) at per-device batch `batch` on `num_devices` devices. Returns a dict
  with it_per_s, images_per_s, compile_s, memory and per-phase {median_ms, min_ms, flops, tflops_per_s, ...}."""
  config = _batch_config(config, batch)
  mesh = step_lib.make_mesh(num_devices)
  n_dev = mesh.devices.size
  put = lambda x: step_lib.replicate(x, mesh)
  tx = ts_lib.make_optimizer(config)
  state = put(ts_lib.create(config, tx))
  prior_params = put(prior.params)
  text = put(text)

  step_fn = step_lib.make_train_step(config, prior, tx, mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, prior_params, text).compile(compiler_options)
  compile_s = time.perf_counter() - t0
  log(f"  batch {batch}: step compiled in {compile_s:.1f} s")
  for _ in range(warmup):
    state, metrics = compiled(state, prior_params, text)
    jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, prior_params, text)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  mem = device_memory(jax.local_devices()[0])
  result = {"batch_per_device": batch, "devices": n_dev, "global_batch": batch * n_dev, "compile_s": compile_s,
            "phases": {"step": _summary(times, _flops(compiled), _xla_bytes(compiled))},
            "peak_bytes": mem["peak_bytes"] if mem else None,
            "loss_finite": bool(np.isfinite(float(jax.device_get(metrics["loss"]))))}
  del compiled
  med = result["phases"]["step"]["median_ms"] / 1e3
  result["it_per_s"] = 1.0 / med
  result["images_per_s"] = batch * n_dev / med
  log(f"  batch {batch}: step median {1e3 * med:.2f} ms ({result['it_per_s']:.3g} it/s)")

  fns = phase_functions(config, prior, tx)
  for name in (p for p in phases if p != "step"):  # the step itself was timed above
    args = _phase_args(name, config, prior, text, state, prior_params, batch, put)
    result["phases"][name] = time_jitted(fns[name], args, steps, warmup, compiler_options)
    log(f"  batch {batch}: {name} median {result['phases'][name]['median_ms']:.2f} ms")
  return result


def count_flops(config: ml_collections.ConfigDict, prior, text: dict, batch: int, *, num_devices: int = 1,
                phases: Sequence[str] = PHASES, compile: bool = False, compiler_options: dict | None = None,
                log: Callable[[str], None] = lambda s: None) -> dict:
  """FLOPs of the step and each phase from XLA's cost analysis of the *lowered* (unoptimised) HLO, with abstract
  inputs: nothing is allocated or run, so it works for SD-size priors on any host (use
  `random_stable_diffusion(..., abstract=True)`). compile=True also compiles each function for this host's backend
  and adds 'xla_bytes' (static memory estimate), 'compiled_flops' and 'compile_s'.
  Returns {'batch_per_device', 'phases': {name: {'flops', ...}}}."""
  config = _batch_config(config, batch)
  mesh = step_lib.make_mesh(num_devices)
  tx = ts_lib.make_optimizer(config)
  state = jax.eval_shape(lambda: ts_lib.create(config, tx))

  def measure(name, lowered):
    out = {"flops": _flops(lowered)}
    if compile:
      t0 = time.perf_counter()
      compiled = lowered.compile(compiler_options)
      out.update(compile_s=time.perf_counter() - t0, xla_bytes=_xla_bytes(compiled), compiled_flops=_flops(compiled))
      log(f"  batch {batch}: {name} compiled in {out['compile_s']:.1f} s, XLA estimate {_gib(out['xla_bytes'])}")
    return out

  out = {"batch_per_device": batch, "devices": mesh.devices.size, "global_batch": batch * mesh.devices.size,
         "phases": {}}
  if "step" in phases or not compile:
    out["phases"]["step"] = measure("step", step_lib.make_train_step(config, prior, tx, mesh).lower(
        state, prior.params, text))
  fns = phase_functions(config, prior, tx)
  for name in phases:
    if name == "step":
      continue
    args = _phase_args(name, config, prior, text, state, prior.params, batch)
    out["phases"][name] = measure(name, jax.jit(fns[name]).lower(*args))
  return out


def _versions() -> dict:
  import importlib.metadata as md
  out = {"python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "flax", "optax", "diffusers", "transformers", "numpy"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = None
  return out


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def run_benchmark(config: ml_collections.ConfigDict, *, arch: str = "config", steps: int = 20, warmup: int = 3,
                  batches: Sequence[int] = (1,), dtype: str = "auto", num_devices: int = 1,
                  phases: Sequence[str] = PHASES, use_memory_efficient_attention: bool = False,
                  compiler_options: dict | None = None, flops_only: bool = False, compile_only: bool = False,
                  log: Callable[[str], None] = print) -> dict:
  """Runs the benchmark; returns the report {'meta': ..., 'results': [one dict per batch]} (`format_report` prints
  it). flops_only: no timing, only `count_flops` (abstract SD weights: nothing allocated); compile_only: the same
  plus compilation (XLA memory estimates; phase 'step' in `phases` selects the whole step, else phases only)."""
  if steps < 1 or warmup < 0:
    raise ValueError(f"--steps must be >= 1 and --warmup >= 0 (got {steps}, {warmup})")
  if not batches or min(batches) < 1:
    raise ValueError(f"--batch must list per-device batch sizes >= 1 (got {list(batches)})")
  t0 = time.perf_counter()
  flops_only = flops_only or compile_only
  prior, text = build(config, arch, dtype, config.seed, use_memory_efficient_attention, abstract=flops_only)
  build_s = time.perf_counter() - t0
  dev = jax.local_devices()[0]
  prior_dtype = str(jnp.dtype(getattr(prior, "dtype", jnp.float32)))
  report = {
      "meta": {
          "arch": arch, "prior": getattr(prior, "source", type(prior).__name__), "prior_dtype": prior_dtype,
          "prior_params": param_count(prior.params), "prior_image_size": getattr(prior, "image_size", None),
          "text_shape": list(text["views"].shape), "cfg_batch": _cfg_batch(config),
          "render": [config.render.height, config.render.width], "num_coarse": config.render.num_coarse,
          "num_fine": config.render.num_fine, "nerf": f"{config.nerf.width} x {config.nerf.num_blocks} blocks",
          "optimizer": config.optim.name, "distill": config.distill.name, "steps": steps, "warmup": warmup,
          "flops_only": flops_only, "compile_only": compile_only, "compiler_options": compiler_options or {},
          "platform": dev.platform, "device_kind": dev.device_kind, "num_devices": num_devices,
          "host_cpu": _cpu_model(), "host_cores": os.cpu_count(), "versions": _versions(),
          "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
          "build_s": build_s, "memory_efficient_attention": use_memory_efficient_attention,
          "attention": getattr(prior, "attention", None), "remat_encoder": getattr(prior, "remat_encoder", None),
          "ray_chunks": scene.render_settings(config).ray_chunks,
          "command": "",
      },
      "results": [],
  }
  log(f"bench: {arch} prior ({report['meta']['prior']}, {prior_dtype}, "
      f"{report['meta']['prior_params'] / 1e6:.1f}M params, attention {report['meta']['attention']}, "
      f"remat_encoder {report['meta']['remat_encoder']}) built in {build_s:.1f} s on {dev.device_kind}")
  for b in sorted(set(batches)):
    if flops_only:
      report["results"].append(count_flops(config, prior, text, b, num_devices=num_devices, phases=phases,
                                           compile=compile_only, compiler_options=compiler_options, log=log))
      if "step" in report["results"][-1]["phases"]:
        log(f"  batch {b}: step {report['results'][-1]['phases']['step']['flops'] / 1e12:.3f} TFLOP")
    else:
      report["results"].append(benchmark_batch(config, prior, text, b, steps=steps, warmup=warmup,
                                               num_devices=num_devices, phases=phases,
                                               compiler_options=compiler_options, log=log))
  return report


def _fmt(x, spec: str, none: str = "n/a") -> str:
  return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _gib(b) -> str:
  return "n/a" if b is None else f"{b / 2 ** 30:.2f} GiB"


def format_report(report: dict) -> str:
  """The report as text: a header, a summary row per batch, and a phase table per batch."""
  m = report["meta"]
  load = m.get("load_average")
  lines = [
      f"dreamjax.bench  arch={m['arch']} ({m['prior']}, {m['prior_params'] / 1e6:.1f}M params, {m['prior_dtype']})",
      f"device: {m['num_devices']} x {m['device_kind']} ({m['platform']}); host: {m['host_cpu']}, "
      f"{m['host_cores']} cores, load average {_fmt(load[0] if load else None, '.2f')} at start",
      "versions: " + ", ".join(f"{k} {val}" for k, val in m["versions"].items()),
      f"config: render {m['render'][0]}x{m['render'][1]}, coarse {m['num_coarse']} / fine {m['num_fine']}, "
      f"NeRF {m['nerf']}, optimizer {m['optimizer']}, distill {m['distill']} (CFG batch {m['cfg_batch']} per "
      f"camera), prior input {_fmt(m['prior_image_size'], 'd')}², text {tuple(m['text_shape'])}",
      f"attention kernel: {m.get('attention')}; encoder remat: {m.get('remat_encoder')}; render ray chunks: "
      f"{m.get('ray_chunks', 1)}",
  ]
  if m.get("ray_chunks", 1) > 1:
    lines.append("note: XLA's cost analysis counts the body of the ray-chunk loop once, so the render and step FLOPs "
                 "(and TFLOP/s) below leave out the other chunks")
  if m.get("compiler_options"):
    lines.append("compiler options: " + ", ".join(f"{k}={v}" for k, v in m["compiler_options"].items()))
  if m.get("flops_only"):
    lines += ["FLOPs only (XLA cost analysis of the lowered, unoptimised HLO; nothing run), GFLOP per device per "
              "call" + ("; XLA static memory estimates of the compiled functions (this host's backend)" if
                        m.get("compile_only") else "") + ":", ""]
    names = list(report["results"][0]["phases"]) if report["results"] else []
    lines.append(f"  {'phase':<32}" + "".join(f" {'batch ' + str(r['batch_per_device']):>10}"
                                             for r in report["results"]))
    for name in names:
      lines.append(f"  {PHASE_LABELS.get(name, name):<32}" + "".join(
          f" {_fmt(None if r['phases'][name]['flops'] is None else r['phases'][name]['flops'] / 1e9, '.1f'):>10}"
          for r in report["results"]))
    if m.get("compile_only"):
      lines += ["", f"  {'XLA estimate (GiB)':<32}"]
      gib = lambda b: None if b is None else b / 2 ** 30
      for name in names:
        lines.append(f"  {PHASE_LABELS.get(name, name):<32}" + "".join(
            f" {_fmt(gib(r['phases'][name].get('xla_bytes')), '.2f'):>10}" for r in report["results"]))
    return "\n".join(lines)
  lines += [
      f"timing: median / min over {m['steps']} steps after {m['warmup']} warmup; FLOPs from XLA cost analysis "
      "(per device)",
      "",
      f"{'batch/dev':>9} {'devices':>7} {'it/s':>9} {'images/s':>9} {'step ms':>9} {'TFLOP/s':>8} "
      f"{'peak mem':>10} {'XLA est.':>10} {'compile s':>9}",
  ]
  for r in report["results"]:
    s = r["phases"]["step"]
    lines.append(f"{r['batch_per_device']:>9} {r['devices']:>7} {r['it_per_s']:>9.3f} {r['images_per_s']:>9.3f} "
                 f"{s['median_ms']:>9.2f} {_fmt(s['tflops_per_s'], '.3f'):>8} {_gib(r['peak_bytes']):>10} "
                 f"{_gib(s['xla_bytes']):>10} {r['compile_s']:>9.1f}")
  for r in report["results"]:
    lines += ["", f"per-device batch {r['batch_per_device']}:",
              f"  {'phase':<32} {'median ms':>10} {'min ms':>10} {'GFLOP':>10} {'TFLOP/s':>8}"]
    for name, p in r["phases"].items():
      gflop = None if p["flops"] is None else p["flops"] / 1e9
      lines.append(f"  {PHASE_LABELS.get(name, name):<32} {p['median_ms']:>10.2f} {p['min_ms']:>10.2f} "
                   f"{_fmt(gflop, '.4g'):>10} {_fmt(p['tflops_per_s'], '.4g'):>8}")
    parts = [r["phases"][k]["median_ms"] for k in ("render", "guidance", "optimizer") if k in r["phases"]]
    if len(parts) == 3:
      lines.append(f"  {'step - (render+guidance+optim.)':<32} "
                   f"{r['phases']['step']['median_ms'] - sum(parts):>10.2f}")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


def _parse_batches(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--batch must be comma-separated integers such as 1,2,4,8 (got {text!r})") from None


def _parse_options(items: Sequence[str]) -> dict | None:
  """['key=value', ...] -> {key: value} with true/false/ints/floats converted."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--xla_option must be KEY=VALUE (got {item!r})")
    low = value.lower()
    if low in ("true", "false"):
      out[key] = low == "true"
    else:
      try:
        out[key] = int(value)
      except ValueError:
        try:
          out[key] = float(value)
        except ValueError:
          out[key] = value
  return out or None


def main(argv: Sequence[str]) -> dict:
  """Parses `argv` (argv[0] is the program name), runs, prints the table, writes --json. Returns the report."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", "configs/dreamfusion.py", "Config file; fields can be overridden "
                                  "(--config.render.num_fine=64).", flag_values=fv, sys_argv=list(argv))
  flags.DEFINE_enum("arch", "sd15", list(ARCHS), "sd15 / sd21: random-weight Stable Diffusion 1.5 / 2.1-base "
                    "architecture; config: the prior the config names.", flag_values=fv)
  flags.DEFINE_integer("steps", 20, "Timed steps (after warmup) per measurement.", flag_values=fv)
  flags.DEFINE_integer("warmup", 3, "Untimed calls before timing (after compilation).", flag_values=fv)
  flags.DEFINE_string("batch", "1", "Per-device batch sizes to sweep, e.g. 1,2,4,8.", flag_values=fv)
  flags.DEFINE_string("dtype", "auto", "Frozen-network dtype: auto (bf16 on GPU/TPU, f32 on CPU), bfloat16, "
                      "float32, float16.", flag_values=fv)
  flags.DEFINE_integer("devices", 1, "Devices in the data-parallel mesh.", flag_values=fv)
  flags.DEFINE_string("phases", ",".join(PHASES), "Phases to time besides the whole step ('' = none).",
                      flag_values=fv)
  flags.DEFINE_bool("memory_efficient_attention", False, "sd15/sd21: the Flax UNet's memory-efficient attention.",
                    flag_values=fv)
  flags.DEFINE_bool("flops_only", False, "Only count FLOPs (lowered HLO, abstract SD weights): no compile, no run; "
                    "works for sd15/sd21 on any host.", flag_values=fv)
  flags.DEFINE_bool("compile_only", False, "Like --flops_only, and also compile each function (abstract weights, "
                    "nothing run): adds XLA's static memory estimate. Add 'step' to --phases for the whole step.",
                    flag_values=fv)
  flags.DEFINE_multi_string("xla_option", [], "KEY=VALUE compiler option for every compiled function (repeatable), "
                            "e.g. xla_gpu_enable_latency_hiding_scheduler=true.", flag_values=fv)
  flags.DEFINE_string("json", None, "Write the report (all numbers, every step time) to this JSON file.",
                      flag_values=fv)
  if "--help" in argv or "-h" in argv:
    print(__doc__ + "\nFlags:\n" + fv.get_help())
    return {}
  fv(list(argv))
  phases = [p for p in fv.phases.split(",") if p.strip()]
  unknown = sorted(set(phases) - set(PHASES) - {"step"})
  if unknown:
    raise ValueError(f"--phases {','.join(unknown)} unknown; use a subset of {','.join(PHASES)}")
  report = run_benchmark(fv.config, arch=fv.arch, steps=fv.steps, warmup=fv.warmup,
                         batches=_parse_batches(fv.batch), dtype=fv.dtype, num_devices=fv.devices, phases=phases,
                         use_memory_efficient_attention=fv.memory_efficient_attention,
                         compiler_options=_parse_options(fv.xla_option), flops_only=fv.flops_only,
                         compile_only=fv.compile_only,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
  report["meta"]["command"] = "python -m dreamjax.bench " + shlex.join(list(argv[1:]))
  print(format_report(report), flush=True)
  if fv.json:
    with open(fv.json, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  from absl import flags as _flags
  from dreamjax.priors.weights import WeightsError
  try:
    main(sys.argv)
  except (_flags.Error, ValueError, WeightsError) as e:
    print(f"bench: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
