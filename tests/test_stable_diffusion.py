"""Tests of the Flax Stable Diffusion prior and the torch-free weight loader on the tiny fixture.

References come from the original PyTorch diffusers/transformers classes (`tests/fixtures/make_tiny_sd.py` wrote
them into `tests/fixtures/tiny_sd/reference.npz`), from float64 NumPy, or from finite differences. No torch here.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import pathlib
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
import safetensors.numpy

from dreamjax.priors import base
from dreamjax.priors import weights
from dreamjax.priors.stable_diffusion import StableDiffusion, alphas_cumprod_from_config
from dreamjax.priors.weights import WeightsError

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "tiny_sd"


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
  """XLA's expensive CPU passes dominate this file's run time (compiles of tiny convnets); skip them here only."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@functools.lru_cache(maxsize=None)
def ref() -> dict[str, np.ndarray]:
  with np.load(FIXTURE / "reference.npz") as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def model(dtype: str = "float32", variant: str | None = None, source: str = str(FIXTURE)) -> StableDiffusion:
  return StableDiffusion.from_pretrained(source, dtype=jnp.dtype(dtype), variant=variant)


def read_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Independent reader: safetensors' own numpy reader."""
  with safe_open(str(path), framework="numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}


def max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ------------------------------------------------------------------------------------------ PyTorch references


def test_is_a_prior():
  """StableDiffusion satisfies the Prior protocol; params hold exactly the UNet and VAE trees."""
  sd = model()
  assert isinstance(sd, base.Prior)
  assert set(sd.params) == {"unet", "vae"}
  assert sd.alphas_cumprod.dtype == np.float32 and sd.alphas_cumprod.shape == (1000,)


def test_text_embeddings_match_pytorch():
  """CLIPTokenizer ids equal the PyTorch run's; Flax CLIP last hidden states match PyTorch's to 1e-4 (abs)."""
  sd, r = model(), ref()
  prompts = [str(p) for p in r["prompts"]]
  np.testing.assert_array_equal(sd.tokenize(prompts), r["input_ids"])
  emb = sd.encode_text(prompts)
  chex.assert_shape(emb, (len(prompts), 77, 16))
  assert emb.dtype == jnp.float32
  assert max_err(emb, r["text_emb"]) < 1e-4  # measured 1.5e-6


def test_vae_encoder_matches_pytorch():
  """Flax VAE posterior mean and log-variance of 2x-1 images match AutoencoderKL.encode (PyTorch) to 1e-4."""
  sd, r = model(), ref()
  mean, logvar = sd.latent_moments(sd.params, jnp.asarray(r["image"]))
  chex.assert_shape(mean, r["vae_mean"].shape)
  assert max_err(mean, r["vae_mean"]) < 1e-4  # measured 1e-6
  assert max_err(logvar, r["vae_logvar"]) < 1e-4


def test_unet_matches_pytorch():
  """predict_eps (epsilon model, so the raw UNet output) matches UNet2DConditionModel (PyTorch) to 2e-4."""
  sd, r = model(), ref()
  eps = sd.predict_eps(sd.params, jnp.asarray(r["unet_zt"]), jnp.asarray(r["unet_t"]), jnp.asarray(r["unet_emb"]))
  chex.assert_shape(eps, r["unet_out"].shape)
  assert eps.dtype == jnp.float32
  assert max_err(eps, r["unet_out"]) < 2e-4  # measured 5.7e-5 (outputs up to 1.35)


def test_decode_matches_pytorch():
  """decode(z) equals (vae.decode(z / scaling) + 1) / 2 clipped to [0, 1] (PyTorch) to 1e-4."""
  sd, r = model(), ref()
  img = sd.decode(sd.params, jnp.asarray(r["decode_z"]))
  chex.assert_shape(img, r["decode_image"].shape)
  assert max_err(img, r["decode_image"]) < 1e-4


def test_to_latents_is_scaled_posterior_sample():
  """to_latents = (mean + exp(logvar / 2) * N(rng)) * scaling_factor with PyTorch's mean/logvar and JAX's normals."""
  sd, r = model(), ref()
  rng = jax.random.PRNGKey(3)
  z = sd.to_latents(sd.params, jnp.asarray(r["image"]), rng)
  noise = np.asarray(jax.random.normal(rng, r["vae_mean"].shape), np.float64)
  expected = (r["vae_mean"] + np.exp(0.5 * r["vae_logvar"].astype(np.float64)) * noise) * 0.18215
  assert max_err(z, expected) < 1e-4


def test_to_latents_gradient_matches_finite_difference():
  """Gradients flow through resize + VAE encoder: finite, non-zero, and d/dpixel equals a central difference."""
  sd = model()
  rng = jax.random.PRNGKey(0)
  images = jax.random.uniform(jax.random.PRNGKey(1), (16, 16, 3))  # one image, resized to 32x32 inside
  w = jax.random.normal(jax.random.PRNGKey(2), (1,) + sd.latent_shape)
  f = lambda x: jnp.sum(w * sd.to_latents(sd.params, x[None], rng))  # same noise for every x
  idx, h = (7, 9, 1), 1e-2
  bump = jnp.zeros_like(images).at[idx].set(h)
  # One compiled call for the value and gradient at x, x + h e_idx and x - h e_idx.
  values, grads = jax.jit(jax.vmap(jax.value_and_grad(f)))(jnp.stack([images, images + bump, images - bump]))
  g = grads[0]
  chex.assert_tree_all_finite(g)
  assert float(jnp.mean(jnp.abs(g) > 0)) > 0.9
  fd = (float(values[1]) - float(values[2])) / (2 * h)
  np.testing.assert_allclose(float(g[idx]), fd, rtol=2e-2)
  assert abs(fd) > 1e-3


# ------------------------------------------------------------------------------------------ dtypes and files


def test_fp16_file_is_read_exactly_in_flax_layout():
  """The UNet file holds float16; its conv and linear tensors land in the Flax tree transposed, bit-exact."""
  sd = model()
  raw = read_file(FIXTURE / "unet" / "diffusion_pytorch_model.safetensors")
  assert raw["conv_in.weight"].dtype == np.float16
  p = jax.tree_util.tree_map(np.asarray, sd.params["unet"])
  np.testing.assert_array_equal(p["conv_in"]["kernel"], raw["conv_in.weight"].astype(np.float32).transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["time_embedding"]["linear_1"]["kernel"],
                                raw["time_embedding.linear_1.weight"].astype(np.float32).T)
  np.testing.assert_array_equal(p["conv_norm_out"]["scale"], raw["conv_norm_out.weight"].astype(np.float32))


@pytest.mark.parametrize("variant,np_dtype", [("fp16", np.float16), ("bf16", jnp.bfloat16)])
def test_variant_files_are_read(variant, np_dtype):
  """model.{fp16,bf16}.safetensors are chosen for `variant`, read in their dtype, equal the float32 file rounded."""
  fp32 = read_file(FIXTURE / "text_encoder" / "model.safetensors")
  kind, state = weights.read_state_dict(FIXTURE, "text_encoder", variant)
  assert kind == "safetensors"
  name = "text_model.embeddings.token_embedding.weight"
  assert state[name].dtype == np.dtype(np_dtype)
  np.testing.assert_array_equal(np.asarray(state[name], np.float32),
                                fp32[name].astype(np_dtype).astype(np.float32))
  # The text encoder with those weights (float32 compute): embeddings within the rounding of the weights.
  sd, r = model(), ref()
  sd_variant = copy.copy(sd)
  sd_variant.text_params = weights.load_params(FIXTURE, "text_encoder", weights.param_shapes(
      sd.text_encoder.init_weights, (1, 1)), variant=variant)
  emb = sd_variant.encode_text([str(p) for p in r["prompts"]])
  tol = {"fp16": 1e-2, "bf16": 5e-2}[variant]
  assert max_err(emb, r["text_emb"]) < tol * np.abs(r["text_emb"]).max()


def test_bfloat16_model():
  """dtype=bfloat16 casts every parameter leaf; predict_eps still returns float32 close to the PyTorch reference."""
  sd, r = model("bfloat16"), ref()
  leaves = jax.tree_util.tree_leaves(sd.params) + jax.tree_util.tree_leaves(sd.text_params)
  assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
  eps = sd.predict_eps(sd.params, jnp.asarray(r["unet_zt"]), jnp.asarray(r["unet_t"]),
                                jnp.asarray(r["unet_emb"]))
  assert eps.dtype == jnp.float32
  err = max_err(eps, r["unet_out"])
  assert err < 0.05 * np.abs(r["unet_out"]).max()  # bf16 has 8 mantissa bits
  z = sd.to_latents(sd.params, jnp.asarray(r["image"]), jax.random.PRNGKey(0))
  assert z.dtype == jnp.float32
  chex.assert_tree_all_finite(z)


def test_cast_floating_keeps_integers():
  """cast_floating changes floating leaves only."""
  out = weights.cast_floating({"a": np.ones(3, np.float32), "b": np.arange(3)}, jnp.bfloat16)
  assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == np.arange(3).dtype


# ------------------------------------------------------------------------------------------ schedules, v-prediction


def test_alphas_cumprod_match_float64():
  """scaled_linear (main fixture) and linear (scheduler_v) schedules equal float64 NumPy cumulative products."""
  t = np.arange(1000, dtype=np.float64)
  betas = (np.sqrt(0.00085) + t / 999 * (np.sqrt(0.012) - np.sqrt(0.00085))) ** 2
  np.testing.assert_allclose(model().alphas_cumprod, np.cumprod(1 - betas), rtol=1e-6)
  cfg = json.loads((FIXTURE / "scheduler_v" / "scheduler_config.json").read_text())
  betas = 1e-4 + t / 999 * (0.02 - 1e-4)
  np.testing.assert_allclose(alphas_cumprod_from_config(cfg), np.cumprod(1 - betas), rtol=1e-6)
  with pytest.raises(WeightsError):
    alphas_cumprod_from_config({"beta_schedule": "squaredcos_cap_v3"})


def v_prediction_folder(tmp: pathlib.Path) -> pathlib.Path:
  """The fixture with scheduler_v as its scheduler (symlinked components)."""
  root = tmp / "tiny_sd_v"
  root.mkdir()
  for c in ("unet", "vae", "text_encoder", "tokenizer"):
    os.symlink(FIXTURE / c, root / c)
  os.symlink(FIXTURE / "scheduler_v", root / "scheduler")
  shutil.copy(FIXTURE / "model_index.json", root)
  return root


def test_v_prediction_converted_to_epsilon(tmp_path):
  """With prediction_type v_prediction, predict_eps = sqrt(abar_t) v + sqrt(1 - abar_t) z_t (float64 NumPy, v from
  the PyTorch UNet output, abar from the linear schedule in float64)."""
  sd = StableDiffusion.from_pretrained(v_prediction_folder(tmp_path))
  assert sd.prediction_type == "v_prediction"
  r = ref()
  eps = sd.predict_eps(sd.params, jnp.asarray(r["unet_zt"]), jnp.asarray(r["unet_t"]),
                                jnp.asarray(r["unet_emb"]))
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  abar = np.cumprod(1 - betas)[r["unet_t"]][:, None, None, None]
  v = r["unet_out"].astype(np.float64)
  expected = np.sqrt(abar) * v + np.sqrt(1 - abar) * r["unet_zt"].astype(np.float64)
  assert max_err(eps, expected) < 2e-4
  # And the conversion itself recovers the noise of a synthetic z_t = a z + s eps, v = a eps - s z.
  rng = np.random.default_rng(0)
  z0, e = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 4))
  ab = np.array([0.9, 0.1])[:, None, None, None]
  zt, vv = np.sqrt(ab) * z0 + np.sqrt(1 - ab) * e, np.sqrt(ab) * e - np.sqrt(1 - ab) * z0
  out = base.v_to_eps(jnp.asarray(vv, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.asarray([0.9, 0.1]))
  assert max_err(out, e) < 1e-5


# ------------------------------------------------------------------------------------------ loader behaviour


def test_msgpack_is_preferred(tmp_path):
  """A folder with a Flax diffusion_flax_model.msgpack beside the safetensors loads the msgpack."""
  from flax import serialization
  shutil.copytree(FIXTURE / "vae", tmp_path / "vae")
  shapes = weights.param_shapes(model().vae.init_weights)
  tree = jax.tree_util.tree_map(lambda s: np.full(s.shape, 0.25, np.float32), shapes)
  (tmp_path / "vae" / "diffusion_flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
  loaded = weights.load_params(tmp_path, "vae", shapes)
  assert all(np.all(np.asarray(x) == 0.25) for x in jax.tree_util.tree_leaves(loaded))


def test_sharded_safetensors(tmp_path):
  """A VAE split into two shards + index json loads, and encodes like PyTorch (1e-4)."""
  (tmp_path / "vae").mkdir()
  shutil.copy(FIXTURE / "vae" / "config.json", tmp_path / "vae")
  state = read_file(FIXTURE / "vae" / "diffusion_pytorch_model.safetensors")
  names = sorted(state)
  shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2],
            "diffusion_pytorch_model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for fname, keys in shards.items():
    safetensors.numpy.save_file({k: state[k] for k in keys}, str(tmp_path / "vae" / fname))
    weight_map.update({k: fname for k in keys})
  (tmp_path / "vae" / "diffusion_pytorch_model.safetensors.index.json").write_text(
      json.dumps({"metadata": {}, "weight_map": weight_map}))
  sd, r = model(), ref()
  params = dict(sd.params, vae=weights.load_params(tmp_path, "vae", weights.param_shapes(sd.vae.init_weights)))
  mean, _ = sd.latent_moments(params, jnp.asarray(r["image"]))
  assert max_err(mean, r["vae_mean"]) < 1e-4


def test_missing_and_unexpected_keys_are_reported():
  """A state dict lacking a tensor, with an extra one and a mis-shaped one, raises a one-line WeightsError naming
  all three."""
  state = read_file(FIXTURE / "vae" / "diffusion_pytorch_model.safetensors")
  shapes = weights.param_shapes(model().vae.init_weights)
  del state["encoder.conv_in.bias"]
  state["encoder.mystery.weight"] = np.zeros((3, 3), np.float32)
  state["decoder.conv_out.weight"] = np.zeros((3, 8, 3, 5), np.float32)
  with pytest.raises(WeightsError) as e:
    weights.convert_torch_state_dict(state, shapes, "vae weights")
  msg = str(e.value)
  assert "\n" not in msg
  assert "encoder/conv_in/bias" in msg and "encoder.mystery.weight" in msg and "decoder.conv_out.weight" in msg


def test_choose_weight_files():
  """Variant, then msgpack over safetensors over a sharded index; fallback to no variant; nothing for .bin only."""
  names = ["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
           "unet/diffusion_pytorch_model.non_ema.safetensors", "v1-5-pruned.safetensors",
           "text_encoder/model.safetensors.index.json", "text_encoder/model-00001-of-00002.safetensors",
           "vae/diffusion_flax_model.msgpack", "vae/diffusion_pytorch_model.safetensors", "x/model.bin"]
  assert weights.choose_weight_files(names, "unet") == ["unet/diffusion_pytorch_model.safetensors"]
  assert weights.choose_weight_files(names, "unet", "fp16") == ["unet/diffusion_pytorch_model.fp16.safetensors"]
  assert weights.choose_weight_files(names, "unet", "bf16") == ["unet/diffusion_pytorch_model.safetensors"]
  assert weights.choose_weight_files(names, "vae") == ["vae/diffusion_flax_model.msgpack"]
  assert weights.choose_weight_files(names, "text_encoder") == ["text_encoder/model.safetensors.index.json"]
  assert weights.choose_weight_files(["unet/diffusion_pytorch_model.bin"], "unet") == []


# ------------------------------------------------------------------------------------------ errors


def test_missing_folder_error_is_one_line(tmp_path):
  """A folder that does not exist gives a one-line WeightsError naming it."""
  missing = str(tmp_path / "no_such_model")
  with pytest.raises(WeightsError) as e:
    StableDiffusion.from_pretrained(missing)
  assert "\n" not in str(e.value) and missing in str(e.value)


def test_incomplete_folder_error_is_one_line(tmp_path):
  """A folder without UNet weights gives a one-line WeightsError naming the component."""
  shutil.copytree(FIXTURE, tmp_path / "m")
  os.remove(tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors")
  with pytest.raises(WeightsError) as e:
    StableDiffusion.from_pretrained(tmp_path / "m")
  assert "\n" not in str(e.value) and "unet" in str(e.value)


def test_offline_unknown_hub_id_error_is_one_line(monkeypatch, tmp_path):
  """With HF_HUB_OFFLINE=1 an id absent from the cache gives a one-line WeightsError with the id and the fixes."""
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.chdir(tmp_path)  # so that no local folder of that name can exist
  repo = "dreamjax-tests/no-such-model"
  with pytest.raises(WeightsError) as e:
    StableDiffusion.from_pretrained(repo)
  msg = str(e.value)
  assert "\n" not in msg and repo in msg and "HF_HUB_OFFLINE" in msg and "local" in msg


def test_hub_download_fetches_only_needed_files(monkeypatch):
  """For a Hub id, only configs, tokenizer files and one weight file per component (the variant's) are requested;
  a gated repository gives a one-line error mentioning the login."""
  import huggingface_hub
  from huggingface_hub.errors import GatedRepoError
  listing = [
      "model_index.json", "v1-5-pruned.safetensors", "v1-5-pruned.ckpt", "scheduler/scheduler_config.json",
      "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
      "tokenizer/special_tokens_map.json", "text_encoder/config.json", "text_encoder/model.safetensors",
      "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin", "unet/config.json",
      "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
      "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin", "vae/config.json",
      "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
  requested = []
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: listing)

  def fake_snapshot(repo_id, **kw):
    requested.extend(kw["allow_patterns"])
    return str(FIXTURE)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
  root = weights.resolve_source("some-org/some-model", variant="fp16")
  assert root == FIXTURE
  assert set(requested) == {
      "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
      "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "text_encoder/config.json",
      "unet/config.json", "vae/config.json", "text_encoder/model.fp16.safetensors",
      "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"}

  def gated(self, repo_id, **kw):
    raise GatedRepoError("401 Client Error.\nCannot access gated repo")
  monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", gated)
  with pytest.raises(WeightsError) as e:
    weights.resolve_source("some-org/gated-model")
  assert "\n" not in str(e.value) and "some-org/gated-model" in str(e.value) and "login" in str(e.value)


def test_offline_hub_id_found_in_cache(monkeypatch, tmp_path):
  """With HF_HUB_OFFLINE=1 an id present in the Hugging Face cache resolves to its snapshot without the network."""
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = tmp_path / "cache" / "models--some-org--tiny-sd"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  shutil.copytree(FIXTURE, repo / "snapshots" / commit)
  root = weights.resolve_source("some-org/tiny-sd", cache_dir=str(tmp_path / "cache"))
  assert root == repo / "snapshots" / commit
