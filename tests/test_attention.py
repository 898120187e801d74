"""Tests of the attention-kernel swap (`dreamjax.priors.attention`) on the tiny Stable Diffusion fixture.

References: the PyTorch UNet/VAE outputs stored with the fixture (`tests/fixtures/tiny_sd/reference.npz`), diffusers'
own Flax attention ('stock'), and a float64 NumPy attention. The cuDNN kernel itself needs an NVIDIA GPU and is not
run here; its shape rules and the fallback are.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax.priors import attention
from dreamjax.priors.stable_diffusion import StableDiffusion
# The tiny fixture, its PyTorch references, the error measure and the compile-speed fixture are shared with the
# prior's own tests.
from tests.test_stable_diffusion import FIXTURE, _fast_compiles, max_err, ref  # noqa: F401 (fixture)


@functools.lru_cache(maxsize=None)
def model(mode: str, remat_encoder: bool = False) -> StableDiffusion:
  return StableDiffusion.from_pretrained(str(FIXTURE), attention=mode, remat_encoder=remat_encoder)


def test_dot_product_attention_matches_float64():
  """The kernel the swap calls (`_dpa`, XLA path) equals softmax(q k^T * scale) v computed in float64 NumPy."""
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  q, kk, v = (jax.random.normal(k[i], s) for i, s in enumerate([(2, 5, 3, 8), (2, 7, 3, 8), (2, 7, 3, 8)]))
  out = attention._dpa(q, kk, v, 0.3, "xla")
  q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, kk, v))
  s = np.einsum("btnh,bsnh->bnts", q64, k64) * 0.3
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out), np.einsum("bnts,bsnh->btnh", p, v64), atol=1e-5)


@pytest.mark.parametrize("mode", ["xla", "cudnn"])  # on a CPU 'cudnn' leaves every layer to diffusers' code
def test_swapped_attention_matches_pytorch(mode):
  """With the swap, UNet eps, VAE posterior and VAE decode still match the PyTorch reference (same bars as stock)."""
  sd, r = model(mode), ref()
  assert sd.attention == mode
  eps = sd.predict_eps(sd.params, jnp.asarray(r["unet_zt"]), jnp.asarray(r["unet_t"]), jnp.asarray(r["unet_emb"]))
  assert max_err(eps, r["unet_out"]) < 2e-4
  mean, logvar = sd.latent_moments(sd.params, jnp.asarray(r["image"]))
  assert max_err(mean, r["vae_mean"]) < 1e-4 and max_err(logvar, r["vae_logvar"]) < 1e-4
  assert max_err(sd.decode(sd.params, jnp.asarray(r["decode_z"])), r["decode_image"]) < 1e-4


def test_swap_reaches_every_attention_layer(monkeypatch):
  """Tracing the UNet and the encoder with mode 'xla' routes every attention layer through `_dpa` (counted against
  the modules' own layer counts); 'stock', and 'cudnn' where cuDNN cannot run (this CPU), route none."""
  calls = []
  real = attention._dpa
  monkeypatch.setattr(attention, "_dpa", lambda *a: calls.append(a[0].shape) or real(*a))
  r = ref()
  zt, t, emb = jnp.asarray(r["unet_zt"]), jnp.asarray(r["unet_t"]), jnp.asarray(r["unet_emb"])
  for mode in ("stock", "cudnn", "xla"):
    sd = model(mode)
    jax.clear_caches()  # the network kernels are jitted; make them trace again
    calls.clear()
    jax.eval_shape(lambda z: sd.predict_eps(sd.params, z, t, emb), zt)
    unet_calls = len(calls)
    calls.clear()
    jax.eval_shape(lambda x: sd.latent_moments(sd.params, x), jnp.asarray(r["image"]))
    encoder_calls = len(calls)
    if mode != "xla":
      assert unet_calls == encoder_calls == 0
    else:
      u = sd.unet
      blocks = sum(b == "CrossAttnDownBlock2D" for b in u.down_block_types) * u.layers_per_block
      blocks += sum(b == "CrossAttnUpBlock2D" for b in u.up_block_types) * (u.layers_per_block + 1) + 1  # + mid
      assert unet_calls == 2 * blocks  # self- and cross-attention per transformer block (transformer depth 1)
      assert encoder_calls == 1  # the encoder's mid-block attention


def test_gradients_through_swapped_and_rematerialised_encoder_match_stock():
  """d/dimage of a fixed projection of the latents is the same with stock attention, XLA attention and a
  `jax.checkpoint`-ed encoder (remat changes memory, not values)."""
  img = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3))
  w = jax.random.normal(jax.random.PRNGKey(2), (2,) + model("stock").latent_shape)

  def grad(sd):
    f = lambda x: jnp.sum(w * sd.to_latents(sd.params, x, jax.random.PRNGKey(0)))
    return jax.jit(jax.grad(f))(img)

  g_stock = grad(model("stock"))
  assert float(jnp.abs(g_stock).max()) > 1e-3
  for sd in (model("xla"), model("xla", remat_encoder=True), model("stock", remat_encoder=True)):
    assert max_err(grad(sd), g_stock) < 1e-5 * float(jnp.abs(g_stock).max()) + 1e-6


def test_remat_encoder_puts_a_checkpoint_in_the_graph():
  """remat_encoder=True shows up as a remat (checkpoint) in the traced encoder; False has none."""
  img = jnp.zeros((1, 16, 16, 3))
  for remat in (False, True):
    sd = model("xla", remat_encoder=remat)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: sd.latent_moments(sd.params, x)[0].sum()))(img))
    assert ("remat" in jaxpr or "checkpoint" in jaxpr) == remat


def test_cudnn_shape_rules(monkeypatch):
  """cudnn_fits follows cuDNN's flash-attention rules: NVIDIA GPU of compute capability >= 8.0, bf16/f16, head dim a
  multiple of 8 and <= 128 (<= 256 from Hopper, cc 9.0)."""
  cases = {  # (cc, dtype, head dim) -> fits
      ((9, 0), jnp.bfloat16, 40): True, ((9, 0), jnp.float16, 64): True, ((9, 0), jnp.bfloat16, 160): True,
      ((8, 0), jnp.bfloat16, 160): False, ((8, 6), jnp.bfloat16, 128): True, ((9, 0), jnp.bfloat16, 512): False,
      ((9, 0), jnp.float32, 64): False, ((9, 0), jnp.bfloat16, 36): False, ((7, 5), jnp.float16, 64): False,
      (None, jnp.bfloat16, 64): False,
  }
  for (cc, dtype, d), fits in cases.items():
    monkeypatch.setattr(attention, "_compute_capability", lambda cc=cc: cc)
    assert attention.cudnn_fits(dtype, d) == fits, (cc, dtype, d)


def test_auto_mode_and_bad_names():
  """On a CPU 'auto' resolves to 'stock'; head dims come from the UNet config; an unknown mode is one clear error."""
  assert jax.default_backend() == "cpu"
  sd = model("auto")
  assert sd.attention == "stock"
  # Head dims by hand: tiny fixture 32 channels / 4 heads; SD 1.5 8 heads over 320/640/1280 channels; SD 2.1 heads
  # (5, 10, 20, 20) over (320, 640, 1280, 1280) channels.
  assert attention.unet_head_dims(sd.unet) == (8,)
  assert attention.unet_head_dims(StableDiffusion.from_architecture("sd15", abstract=True).unet) == (40, 80, 160)
  assert attention.unet_head_dims(StableDiffusion.from_architecture("sd21", abstract=True).unet) == (64,)
  with pytest.raises(ValueError, match="prior.attention 'flash' is unknown"):
    attention.resolve("flash", jnp.bfloat16)
  with pytest.raises(ValueError, match="must be resolved"):
    with attention.attention_kernels("auto"):
      pass


def test_cudnn_mode_routes_fitting_layers_to_cudnn(monkeypatch):
  """In mode 'cudnn' exactly the layers whose head dim cuDNN takes call the kernel with implementation='cudnn' (here
  cuDNN's rule is replaced by 'head dim == 8', the tiny UNet's, and the kernel by XLA's, since this is a CPU): all 8
  UNet attention layers, not the VAE's 1-head mid-block; eps then equals the stock model's."""
  calls = []
  monkeypatch.setattr(attention, "cudnn_fits", lambda dtype, head_dim: head_dim == 8)
  def fake_kernel(q, k, v, scale, implementation):
    calls.append(implementation)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="xla")

  monkeypatch.setattr(attention, "_dpa", fake_kernel)
  r = ref()
  sd = model("cudnn")
  jax.clear_caches()
  eps = sd.predict_eps(sd.params, jnp.asarray(r["unet_zt"]), jnp.asarray(r["unet_t"]), jnp.asarray(r["unet_emb"]))
  assert calls == ["cudnn"] * 8
  calls.clear()
  jax.eval_shape(lambda x: sd.latent_moments(sd.params, x), jnp.asarray(r["image"]))
  assert calls == []
  stock = model("stock")
  ref_eps = stock.predict_eps(stock.params, jnp.asarray(r["unet_zt"]), jnp.asarray(r["unet_t"]),
                              jnp.asarray(r["unet_emb"]))
  assert max_err(eps, ref_eps) < 1e-5


def test_auto_falls_back_to_stock_when_the_cudnn_probe_fails(monkeypatch, caplog):
  """'auto' where cuDNN's shape rules pass but the probe call fails (here: a CPU, where cuDNN is absent) resolves to
  'stock' with one warning; the probe's own wrapping (jit of shard_map of vmap, gradient, 77-token cross-attention)
  runs with the XLA kernel, so a failure there would be cuDNN's."""
  attention.probe_kernel("float32", (8, 16), "xla")
  monkeypatch.setattr(attention, "cudnn_fits", lambda dtype, head_dim: True)
  attention._probe_cudnn.cache_clear()
  with caplog.at_level("WARNING", logger=attention.__name__):
    assert attention.resolve("auto", jnp.bfloat16, (40, 80)) == "stock"
  assert any("cuDNN attention failed a probe call" in r.message for r in caplog.records)
