"""The toy prior: a small text-conditioned pixel-space DDPM (16×16 RGB) trained on renders of the toy world.

Renders of any size are resized to 16×16 by `PixelPrior.to_latents` (bilinear with antialiasing), exactly as the
training data (32×32 renders) were. 16×16 rather than 32×32 because the shipped weights had to be trained in a few
CPU hours on a shared 2-core CPU: 16×16 costs a quarter of the UNet compute and still tells the five shapes, four
colours and the two-part objects apart.

Model: diffusers' `FlaxUNet2DConditionModel` (NCHW input, eps-prediction) with the small config `UNET_CONFIG`
(block_out_channels (32, 64, 64): diffusers' GroupNorm has 32 groups, so every width is a multiple of 32), cross-
attending to `text.TextEncoder` embeddings [N, 16, 64]. The text also reaches every ResNet block through the timestep
embedding, as in SDXL: diffusers' `addition_embed_type="text_time"` path, fed the mean of the 16 text embeddings (and
one constant micro-condition, which that path requires). Cross-attention alone learned the caption too slowly for a
CPU budget (the ε-MSE with and without the caption stayed equal for the first ~900 steps); the pooled path is a
global, class-embedding-like conditioning that a small model picks up quickly. Its output layer starts at zero, so
it adds nothing until training gives it a use. Schedule: the cosine schedule of Nichol & Dhariwal (2021),
T = 1000 (`cosine_alphas_cumprod`). Trained by `dreamjax.toy.train_prior` with Adam and 10% empty prompts (for
classifier-free guidance).

Files (in `WEIGHTS_DIR` by default): `toy_prior.msgpack` (flax.serialization of {'unet': ..., 'text': ...}) and
`toy_prior.json` (architecture, schedule, resolution, training summary).

  prior = load()                        # the shipped weights, a dreamjax.priors.pixel.PixelPrior
  emb = prior.encode_text(["a red cube, side view"])   # [1, 16, 64]
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.priors.pixel import PixelPrior
from dreamjax.priors.weights import WeightsError, cast_floating, check_flax_tree
from dreamjax.toy import text as text_lib
from dreamjax.toy import weights_io

PyTree = Any

WEIGHTS_DIR = weights_io.WEIGHTS_DIR
RESOLUTION = 16
NUM_TRAIN_TIMESTEPS = 1000
POOL_TIME_DIM = 8  # width of the one constant "time id" that diffusers' text_time path concatenates to the pooled text

UNET_CONFIG = dict(
    sample_size=RESOLUTION, in_channels=3, out_channels=3,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64), layers_per_block=1,
    attention_head_dim=4,  # diffusers' Flax UNet reads this as the number of heads (64 channels -> 4 × 16)
    cross_attention_dim=text_lib.WIDTH,
    addition_embed_type="text_time", addition_time_embed_dim=POOL_TIME_DIM,
    projection_class_embeddings_input_dim=text_lib.WIDTH + POOL_TIME_DIM)
TEXT_CONFIG = dict(num_layers=2, num_heads=4)


def cosine_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, s: float = 0.008,
                          max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule: abar(u) = cos²((u + s)/(1 + s) · π/2), beta_t = 1 - abar((t+1)/T) /
  abar(t/T) clipped at max_beta, abar_t = prod_{i <= t}(1 - beta_i). Returns abar [T] float32."""
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  t = np.arange(num_train_timesteps, dtype=np.float64)
  betas = np.minimum(1.0 - f((t + 1) / num_train_timesteps) / f(t / num_train_timesteps), max_beta)
  return np.cumprod(1.0 - betas).astype(np.float32)


def to_latents(images: jnp.ndarray) -> jnp.ndarray:
  """images [B, H, W, 3] in [0, 1] -> [B, RESOLUTION, RESOLUTION, 3] in [-1, 1], as PixelPrior.to_latents does."""
  b, h, w, c = images.shape
  if (h, w) != (RESOLUTION, RESOLUTION):
    images = jax.image.resize(images, (b, RESOLUTION, RESOLUTION, c), method="bilinear", antialias=True)
  return 2.0 * images - 1.0


_UNET_CLASS = None


def _unet_class():
  """`ToyUNet`: FlaxUNet2DConditionModel that derives its pooled-text inputs from the cross-attention embeddings.

  Called as unet.apply(params, x [N, 3, R, R], t [N], emb [N, L, W]) like Stable Diffusion's UNet; when the config
  uses the text_time path and no `added_cond_kwargs` are given, text_embeds = mean_L(emb) [N, W] and time_ids =
  zeros [N, 1]. Built on first use so that importing this module does not import diffusers.
  """
  global _UNET_CLASS
  if _UNET_CLASS is None:
    from diffusers import FlaxUNet2DConditionModel  # heavy import, only when a model is built
    from diffusers.configuration_utils import flax_register_to_config

    @flax_register_to_config  # diffusers' models read their fields back from `self.config`
    class ToyUNet(FlaxUNet2DConditionModel):

      def __call__(self, sample, timesteps, encoder_hidden_states, added_cond_kwargs=None, *args, **kwargs):
        if self.addition_embed_type == "text_time" and added_cond_kwargs is None:
          added_cond_kwargs = {"text_embeds": jnp.mean(encoder_hidden_states, axis=1),
                               "time_ids": jnp.zeros((encoder_hidden_states.shape[0], 1), jnp.float32)}
        return super().__call__(sample, timesteps, encoder_hidden_states, added_cond_kwargs, *args, **kwargs)

    _UNET_CLASS = ToyUNet
  return _UNET_CLASS


def build_unet(config: dict = UNET_CONFIG, dtype=jnp.float32):
  return _unet_class()(**config, dtype=dtype)


def zero_pooled_output(unet_params: dict) -> dict:
  """unet_params with the pooled-text path's last layer (add_embedding.linear_2) set to zero: the path then adds
  nothing to the timestep embedding until trained."""
  if "add_embedding" not in unet_params:
    return unet_params
  add = dict(unet_params["add_embedding"])
  add["linear_2"] = jax.tree_util.tree_map(jnp.zeros_like, add["linear_2"])
  return {**unet_params, "add_embedding": add}


def build_text_encoder(config: dict = TEXT_CONFIG, dtype=jnp.float32) -> text_lib.TextEncoder:
  del dtype  # the text encoder runs once per prompt, eagerly, in float32
  return text_lib.TextEncoder(**config)


def init_params(rng, unet, text_encoder) -> dict:
  """Random {'unet': ..., 'text': ...} for the given modules."""
  k_u, k_t = jax.random.split(rng)
  ids = jnp.zeros((1, text_lib.MAX_LEN), jnp.int32)
  text_params = text_encoder.init(k_t, ids)["params"]
  x = jnp.zeros((1, unet.in_channels, unet.sample_size, unet.sample_size), jnp.float32)
  emb = jnp.zeros((1, text_lib.MAX_LEN, unet.cross_attention_dim), jnp.float32)
  unet_params = unet.init(k_u, x, jnp.zeros((1,), jnp.int32), emb)["params"]
  return {"unet": zero_pooled_output(unet_params), "text": text_params}


def make_encode_text(text_encoder, text_params):
  """prompts [N] -> embeddings [N, MAX_LEN, WIDTH] (jitted encoder over the word-level tokens)."""
  apply = jax.jit(lambda p, ids: text_encoder.apply({"params": p}, ids))

  def encode(prompts):
    return apply(text_params, jnp.asarray(text_lib.tokenize(list(prompts))))
  return encode


NAME = "toy_prior"  # toy_prior.msgpack + toy_prior.json (`weights_io`)
RETRAIN = "python -m dreamjax.toy.train_prior"


def save(out_dir: str | pathlib.Path, params: dict, summary: dict | None = None) -> pathlib.Path:
  """Writes toy_prior.msgpack (float32 params) and toy_prior.json (configs + `summary`) into out_dir (atomically;
  callers check `weights_io.check_writable` first)."""
  meta = {"unet": UNET_CONFIG, "text": TEXT_CONFIG, "schedule": "cosine", "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
          "prediction_type": "epsilon", "resolution": RESOLUTION, "vocab": list(text_lib.VOCAB),
          "max_len": text_lib.MAX_LEN, "summary": summary or {}}
  return weights_io.write(out_dir, NAME, params, meta)


def read_params(path: str | pathlib.Path | None = None) -> tuple[dict, dict]:
  """(params, meta) from a weights folder or .msgpack file (None = the shipped weights). Raises WeightsError."""
  tree, meta = weights_io.read(path, NAME, what="toy prior weights", retrain=RETRAIN)
  if meta.get("vocab", list(text_lib.VOCAB)) != list(text_lib.VOCAB):
    raise WeightsError(f"toy prior weights {str(weights_io.weights_file(path, NAME))!r} were trained with another "
                       "vocabulary; retrain them")
  return tree, meta


def load(path: str | pathlib.Path | None = None, dtype=jnp.float32) -> PixelPrior:
  """The toy prior as a `PixelPrior` (channels_first, eps-prediction, 16×16, cosine schedule T = 1000).

  path: a folder holding toy_prior.msgpack (+ toy_prior.json) or the .msgpack itself; None = the shipped weights.
  dtype: dtype of the UNet's computation and weights (the text encoder stays float32).
  Raises WeightsError (one line) if the weights are missing, unreadable or do not fit the model.
  """
  tree, meta = read_params(path)
  unet = build_unet(UNET_CONFIG, dtype=dtype)
  text_encoder = build_text_encoder(TEXT_CONFIG)
  shapes = jax.eval_shape(lambda k: init_params(k, unet, text_encoder), jax.random.PRNGKey(0))
  tree = check_flax_tree(tree, shapes, what="toy prior weights")
  unet_params = jax.device_put(cast_floating(tree["unet"], dtype))
  text_params = jax.device_put(cast_floating(tree["text"], np.float32))
  prior = PixelPrior(unet, unet_params, cosine_alphas_cumprod(meta.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)),
                     RESOLUTION, prediction_type="epsilon", encode_text=make_encode_text(text_encoder, text_params),
                     channels_first=True)
  prior.text_params = text_params
  prior.meta = meta
  return prior


def sample(prior: PixelPrior, prompts, rng, num_steps: int = 25, guidance: float = 3.0) -> np.ndarray:
  """Deterministic DDIM samples (eta = 0) with classifier-free guidance, one per prompt.

  eps = eps(x, "") + guidance · (eps(x, prompt) - eps(x, "")); x0 is clipped to [-1, 1] at every step.
  Returns images [N, R, R, 3] in [0, 1].
  """
  prompts = list(prompts)
  n, r = len(prompts), prior.resolution[0]
  emb = jnp.concatenate([prior.encode_text(prompts), prior.encode_text([""] * n)])
  abar = jnp.asarray(prior.alphas_cumprod)
  steps = np.linspace(len(prior.alphas_cumprod) - 1, 0, num_steps).round().astype(np.int32)

  @jax.jit
  def update(x, t, t_prev):
    eps_c, eps_u = jnp.split(prior.predict_eps(prior.params, jnp.concatenate([x, x]), jnp.full((2 * n,), t), emb),
                             2)
    eps = eps_u + guidance * (eps_c - eps_u)
    a = abar[t]
    x0 = jnp.clip((x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a), -1.0, 1.0)
    eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
    a_prev = jnp.where(t_prev >= 0, abar[jnp.maximum(t_prev, 0)], 1.0)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev) * eps

  x = jax.random.normal(rng, (n, r, r, 3))
  for i, t in enumerate(steps):
    x = update(x, jnp.int32(t), jnp.int32(steps[i + 1] if i + 1 < len(steps) else -1))
  return np.asarray((x + 1.0) / 2.0).clip(0.0, 1.0)
