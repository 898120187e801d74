"""The toy latent-diffusion model in Stable Diffusion's folder layout (dreamjax/toy/sd_folder.py, train_sd.py).

References: a folder written by PyTorch diffusers and transformers (tests/fixtures/tiny_sd, made by
tests/fixtures/make_tiny_sd.py) for the tensor names and layouts; the Flax modules applied directly to the
parameters that were written, for the lossless write/read round trip; CLIP's BPE rules for the tokenizer.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax.priors import stable_diffusion as sd
from dreamjax.priors import weights
from dreamjax.toy import sd_folder
from dreamjax.toy import shapes
from dreamjax.toy import train_sd

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_sd"


def _fixture_targets():
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  unet, vae = sd.build_modules(weights.read_json(FIXTURE / "unet" / "config.json"),
                               weights.read_json(FIXTURE / "vae" / "config.json"), jnp.float32, "fixture")
  text = FlaxCLIPTextModel(CLIPTextConfig.from_pretrained(FIXTURE / "text_encoder"), _do_init=False)
  return {"unet": weights.param_shapes(unet.init_weights), "vae": weights.param_shapes(vae.init_weights),
          "text_encoder": weights.param_shapes(text.init_weights, (1, 1))}


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_torch_names_match_a_folder_written_by_pytorch_diffusers(component):
  """Flax -> PyTorch: reading a PyTorch-diffusers folder and writing it back with `to_torch_state_dict` gives the
  same tensor names, shapes and values (UNet: cross-attention and plain blocks, VAE: mid-block attention, CLIP)."""
  _, state = weights.read_state_dict(FIXTURE, component)
  tree = weights.convert_torch_state_dict(state, _fixture_targets()[component])
  back = sd_folder.to_torch_state_dict(tree)
  want = {k: np.asarray(v, np.float32) for k, v in state.items() if not k.endswith("position_ids")}
  assert sorted(back) == sorted(want)
  for k, v in want.items():
    assert back[k].shape == v.shape, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_toy_model_uses_only_block_types_the_fixture_proves():
  """The toy UNet/VAE are built from the block types whose names the PyTorch fixture checks above."""
  fixture_unet = weights.read_json(FIXTURE / "unet" / "config.json")
  blocks = set(fixture_unet["down_block_types"]) | set(fixture_unet["up_block_types"])
  assert set(sd_folder.UNET_CONFIG["down_block_types"]) | set(sd_folder.UNET_CONFIG["up_block_types"]) <= blocks
  assert set(sd_folder.VAE_CONFIG["down_block_types"]) == {"DownEncoderBlock2D"}


def test_tokenizer_makes_every_toy_word_one_token(tmp_path):
  """CLIP BPE: each toy caption word is one '</w>' token between <|startoftext|> and <|endoftext|>; other text
  still tokenizes (byte tokens); padding is <|endoftext|> as in SD 1.x; 77 tokens."""
  sd_folder.write_tokenizer(tmp_path)
  tok = sd_folder.load_tokenizer(tmp_path)
  caption = "a red cube with a blue sphere on top, overhead view"
  pieces = tok.convert_ids_to_tokens(tok(caption).input_ids)
  words = caption.replace(",", " ,").split()
  assert pieces == ["<|startoftext|>"] + [w + "</w>" for w in words] + ["<|endoftext|>"]
  for w in set(sd_folder.toy_words()):
    assert tok.convert_ids_to_tokens(tok(w).input_ids)[1:-1] == [w + "</w>"], w
  assert tok.unk_token_id not in tok("A Purple Dog!").input_ids[1:-1]
  assert tok.pad_token == "<|endoftext|>" and tok.model_max_length == 77


def _random_params(seed: int, unet, vae, text) -> dict:
  """Random weights in the toy model's shapes, drawn in NumPy: kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.05²),
  biases N(0, 0.05²), embeddings N(0, 0.02²). Every leaf is nonzero, so a dropped or swapped one would show; the
  shapes come from `weights.param_shapes`, as Flax's own init runs the models op by op (about 30 s here)."""
  shapes = {"unet": weights.param_shapes(unet.init_weights), "vae": weights.param_shapes(vae.init_weights),
            "text_encoder": weights.param_shapes(text.init_weights, (1, 77))}
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    n = rng.standard_normal(leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == "scale":
      return jnp.asarray(1.0 + 0.05 * n)
    if name == "bias":
      return jnp.asarray(0.05 * n)
    if name == "embedding":
      return jnp.asarray(0.02 * n)
    return jnp.asarray(n / np.sqrt(np.prod(leaf.shape[:-1])))
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def random_toy_folder(tmp_path_factory):
  """A toy model with random weights, written by `write_folder`; (folder, params)."""
  unet, vae, text = train_sd.build_modules()
  params = _random_params(3, unet, vae, text)
  folder = sd_folder.write_folder(tmp_path_factory.mktemp("toy_sd") / "model", params, scaling_factor=0.37)
  return folder, params, (unet, vae, text)


def test_written_folder_loads_through_the_sd_loader_unchanged(random_toy_folder):
  """StableDiffusion.from_pretrained(folder) reproduces the Flax modules applied to the written weights: text
  embeddings, latents (mean * scaling_factor), eps and decoded images."""
  folder, params, (unet, vae, text) = random_toy_folder
  prior = sd.StableDiffusion.from_pretrained(str(folder))
  assert prior.scaling_factor == pytest.approx(0.37) and prior.image_size == sd_folder.RESOLUTION
  assert prior.latent_shape == (8, 8, 4) and prior.text_window == 77
  prompts = ["a red cube, front view", ""]
  ids = jnp.asarray(prior.tokenize(prompts))
  want_emb = text(ids, params=params["text_encoder"]).last_hidden_state
  np.testing.assert_allclose(prior.encode_text(prompts), want_emb, rtol=1e-5, atol=1e-5)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
  mean, _ = train_sd.encode_moments(vae, params["vae"], 2 * x - 1)
  np.testing.assert_allclose(prior.latent_moments(prior.params, x)[0], mean, rtol=1e-4, atol=1e-5)
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 4))
  t = jnp.array([10, 900])
  want = unet.apply({"params": params["unet"]}, jnp.transpose(z, (0, 3, 1, 2)), t, want_emb).sample
  np.testing.assert_allclose(prior.predict_eps(prior.params, z, t, want_emb), jnp.transpose(want, (0, 2, 3, 1)),
                             rtol=1e-4, atol=1e-4)
  want_img = jnp.clip(0.5 * train_sd.decode(vae, params["vae"], z / 0.37) + 0.5, 0, 1)
  np.testing.assert_allclose(prior.decode(prior.params, z), want_img, rtol=1e-4, atol=1e-4)
  cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
  assert (cfg["beta_schedule"], cfg["prediction_type"]) == ("scaled_linear", "epsilon")


def test_load_folder_gives_back_the_written_weights(random_toy_folder):
  """`--init` / `--vae_from` read a finished folder through the SD loader: the UNet, VAE and text encoder come back
  equal to the Flax weights that were written, in the trees the trainer builds."""
  folder, params, _ = random_toy_folder
  loaded = train_sd.load_folder(str(folder))
  for k in ("unet", "vae", "text_encoder"):
    assert jax.tree_util.tree_structure(loaded[k]) == jax.tree_util.tree_structure(params[k]), k
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), loaded[k],
                           params[k])


def test_train_state_round_trip(random_toy_folder, tmp_path):
  """A saved training state resumes with the same step, weights, EMA, optimiser state and loss curves."""
  _, params, (unet, vae, text) = random_toy_folder
  flags = type("A", (), {"vae_lr": 1e-3, "unet_lr": 1e-3, "text": "trained"})()
  tx = train_sd.optimiser(1e-3, 10, 100)
  tr = {"unet": params["unet"], "text_encoder": params["text_encoder"]}
  opt = tx.init(tr)
  _, opt = tx.update(jax.tree_util.tree_map(jnp.ones_like, tr), opt, tr)
  state = {"stage": "unet", "step": 17, "params": params, "ema": params, "opt": opt, "scaling_factor": 0.5,
           "curves": {"vae": [0.1, 0.05], "unet": [0.3]}, "extra": {"vae": {"latent_std": 2.0}}}
  train_sd.save_state(tmp_path, state)
  fresh = jax.tree_util.tree_map(jnp.zeros_like, params)  # the restore template: structure only
  template = {"stage": "vae", "step": 0, "params": fresh, "ema": fresh, "opt": None, "scaling_factor": 1.0,
              "curves": {}, "extra": {}}
  back = train_sd._resume(tmp_path, template, unet, vae, text, flags)
  assert (back["stage"], int(back["step"]), float(back["scaling_factor"])) == ("unet", 17, 0.5)
  assert back["curves"] == {"vae": [0.1, 0.05], "unet": [0.3]}
  chex_equal = lambda a, b: jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b))
  assert chex_equal(back["params"], params) and chex_equal(back["opt"], opt)


def test_batches_depend_only_on_seed_stage_and_step():
  """Resumed training sees the batches an uninterrupted run would: they are drawn from (seed, stage, step)."""
  data = {"fg": np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3), dtype=np.uint8),
          "alpha": np.random.default_rng(1).integers(0, 255, (10, 32, 32), dtype=np.uint8),
          "obj": np.arange(10) % len(shapes.OBJECTS)}
  a = train_sd.make_batch(data, train_sd.step_rng(0, "unet", 5), 4)
  b = train_sd.make_batch(data, train_sd.step_rng(0, "unet", 5), 4)
  c = train_sd.make_batch(data, train_sd.step_rng(0, "unet", 6), 4)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])


def test_standardised_latent_channels_are_an_exact_reparametrisation(random_toy_folder):
  """Folding per-channel centring and unit std into the VAE's 1x1 convs: (1) the new encoder mean is the float64
  affine map (old - mu) / sigma of the old one, (2) decoding corresponding latents gives the same image, (3) the new
  latents' per-channel moments, measured the same way, are (0, 1)."""
  _, params, (_, vae, _) = random_toy_folder
  vp = jax.tree_util.tree_map(jnp.asarray, params["vae"])  # offsets and unequal scales, as a trained VAE has them
  vp["quant_conv"]["bias"] = vp["quant_conv"]["bias"].at[:4].add(jnp.array([3.0, -1.0, 0.5, 0.0]))
  vp["quant_conv"]["kernel"] = vp["quant_conv"]["kernel"].at[..., 0].multiply(5.0)
  rng = np.random.default_rng(0)
  data = {"fg": rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8),
          "alpha": rng.integers(0, 255, (16, 32, 32), dtype=np.uint8), "obj": np.arange(16) % len(shapes.OBJECTS)}
  new, stats = train_sd.standardise_latent_channels(vae, vp, data, num=256)
  mu, sigma = np.asarray(stats["channel_mean"], np.float64), np.asarray(stats["channel_std"], np.float64)
  assert np.ptp(mu) > 0.5 and sigma.max() / sigma.min() > 2.0  # far from standard before the fold
  x = jnp.asarray(train_sd.make_batch(data, np.random.default_rng(7), 8)[0])
  old_mean, old_logvar = (np.asarray(m, np.float64) for m in train_sd.encode_moments(vae, vp, x))
  new_mean, new_logvar = (np.asarray(m, np.float64) for m in train_sd.encode_moments(vae, new, x))
  np.testing.assert_allclose(new_mean, (old_mean - mu) / sigma, atol=1e-4)
  np.testing.assert_allclose(new_logvar, old_logvar - 2 * np.log(sigma), atol=1e-4)
  np.testing.assert_allclose(train_sd.decode(vae, new, jnp.asarray(new_mean, jnp.float32)),
                             train_sd.decode(vae, vp, jnp.asarray(old_mean, jnp.float32)), atol=1e-4)
  _, again = train_sd.standardise_latent_channels(vae, new, data, num=256)
  np.testing.assert_allclose(again["channel_mean"], 0.0, atol=1e-4)
  np.testing.assert_allclose(again["channel_std"], 1.0, atol=1e-4)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "dreamjax.toy.train_sd", *args], cwd=ROOT, capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_refuses_to_overwrite_the_shipped_model_and_bad_flags(tmp_path):
  """The default --out is the shipped model: refused without --overwrite, nothing touched; bad flags are one line."""
  shipped = train_sd.SHIPPED
  before = {p: p.stat().st_mtime_ns for p in shipped.rglob("*") if p.is_file()}
  r = _cli()
  assert r.returncode == 2 and "shipped in the package" in r.stderr and len(r.stderr.strip().splitlines()) == 1
  assert {p: p.stat().st_mtime_ns for p in shipped.rglob("*") if p.is_file()} == before
  r = _cli("--out", str(tmp_path / "m"), "--resume")
  assert r.returncode == 2 and "--resume" in r.stderr and not (tmp_path / "m").exists()
  r = _cli("--out", str(tmp_path / "m"), "--unet_lr", "nan")
  assert r.returncode == 2 and "--unet_lr" in r.stderr
  for flag in ("--vae_from", "--init"):
    r = _cli("--out", str(tmp_path / "m"), flag, str(tmp_path))
    assert r.returncode == 2 and flag in r.stderr and len(r.stderr.strip().splitlines()) == 1
  r = _cli("--out", str(tmp_path / "m"), "--init", str(shipped), "--standardise_latents")
  assert r.returncode == 2 and "--standardise_latents" in r.stderr
  assert not (tmp_path / "m").exists()


def test_shipped_model_loads_like_a_hub_snapshot(monkeypatch, tmp_path):
  """configs/toy_sd.py's folder, placed in a Hugging Face cache as a Hub snapshot and loaded offline by id through
  `load_prior` (the entry point of every run), gives the same prior as the local folder."""
  import shutil
  import huggingface_hub
  from configs import toy_sd
  from dreamjax.priors import load
  config = toy_sd.get_config()
  local = load.load_prior(config)
  commit = "89abcdef0123456789abcdef0123456789abcdef"
  repo = tmp_path / "hub" / "models--dreamjax--toy-sd"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  shutil.copytree(config.prior.model, repo / "snapshots" / commit)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  config.prior.model = "dreamjax/toy-sd"
  hub = load.load_prior(config)
  assert isinstance(hub, sd.StableDiffusion) and hub.source == "dreamjax/toy-sd"
  z = jax.random.normal(jax.random.PRNGKey(0), (2,) + local.latent_shape)
  emb = local.encode_text(["a red cube, front view", ""])
  np.testing.assert_array_equal(np.asarray(hub.encode_text(["a red cube, front view", ""])), np.asarray(emb))
  t = jnp.array([300, 700])
  np.testing.assert_array_equal(np.asarray(hub.predict_eps(hub.params, z, t, emb)),
                                np.asarray(local.predict_eps(local.params, z, t, emb)))


def test_shipped_model_follows_its_caption():
  """On fresh toy renders (not training data: seed 11), the shipped latent model predicts the noise better with the
  true caption than with another object's caption, at t = 500 and 750 (latents from its own VAE)."""
  from configs import toy_sd
  from dreamjax.priors import load
  from dreamjax.toy import dataset as ds
  prior = load.load_prior(toy_sd.get_config())
  data = ds.generate(48, seed=11, verbose=False)
  x = jnp.asarray(data["images"], jnp.float32) / 255.0
  wrong = (data["obj"] + 1 + np.arange(48) % (len(shapes.OBJECTS) - 1)) % len(shapes.OBJECTS)
  z0 = prior.to_latents(prior.params, x, jax.random.PRNGKey(1))
  eps = jax.random.normal(jax.random.PRNGKey(2), z0.shape)
  e_true = prior.encode_text(ds.captions(data["obj"], data["label"]))
  e_wrong = prior.encode_text(ds.captions(wrong, data["label"]))
  for t in (500, 750):
    a = float(prior.alphas_cumprod[t])
    z_t = np.sqrt(a) * z0 + np.sqrt(1 - a) * eps
    tt = jnp.full((48,), t)
    err = lambda e: np.mean(np.asarray(prior.predict_eps(prior.params, z_t, tt, e) - eps) ** 2, axis=(1, 2, 3))
    gap = err(e_wrong) - err(e_true)
    print(f"t={t}: wrong - true eps-MSE {gap.mean():.5f} ± {gap.std() / np.sqrt(48):.5f}")
    assert gap.mean() > 3 * gap.std() / np.sqrt(48), (t, gap.mean(), gap.std())
