"""The benchmark: it runs end to end on the tiny config and reports every figure; the random-weight SD 1.5 / 2.1
architectures have the published parameter counts and the paper-resolution shapes; random weights have the stated
scale."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax import bench
from dreamjax import bench_report
from dreamjax.priors import sd_architectures
from dreamjax.priors.stable_diffusion import StableDiffusion

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _positive_finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_config_reports_every_field(tmp_path, capsys):
  """`main` on configs/tiny.py (arch config, 2 timed steps): the JSON has it/s, images/s and, for the step and every
  phase, median/min ms and XLA FLOPs, all positive and finite; it/s equals 1000 / the NumPy median of the recorded
  step times and images/s = global batch × it/s; the printed table names every phase. No timing assertion."""
  out = tmp_path / "bench.json"
  argv = ["bench", "--config", str(ROOT / "configs" / "tiny.py"), "--arch", "config", "--steps", "2",
          "--warmup", "1", "--json", str(out),
          # smaller than tiny.py: the test measures plumbing, not speed
          "--config.render.height=8", "--config.render.width=8", "--config.render.num_coarse=8",
          "--config.render.num_fine=8", "--config.nerf.width=16", "--config.nerf.num_blocks=1",
          # compile faster (about half the CPU time); changes speed, not what is computed
          "--xla_option", "xla_backend_optimization_level=0", "--xla_option", "xla_llvm_disable_expensive_passes=true"]
  report = bench.main(argv)
  table = capsys.readouterr().out
  saved = json.loads(out.read_text())
  assert saved["meta"]["arch"] == "config"
  assert saved["meta"]["render"] == [8, 8]
  assert saved["meta"]["cfg_batch"] == 2
  assert saved["meta"]["compiler_options"] == {"xla_backend_optimization_level": 0,
                                               "xla_llvm_disable_expensive_passes": True}
  assert len(saved["results"]) == 1
  r = saved["results"][0]
  assert r["batch_per_device"] == 1 and r["global_batch"] == r["devices"] == 1
  assert set(r["phases"]) == {"step", *bench.PHASES}
  for name, p in r["phases"].items():
    for key in ("median_ms", "min_ms", "flops", "tflops_per_s"):
      assert _positive_finite(p[key]), (name, key, p[key])
    assert len(p["times_ms"]) == 2
    assert p["min_ms"] == pytest.approx(min(p["times_ms"]))
    assert p["median_ms"] == pytest.approx(float(np.median(p["times_ms"])))
    assert p["tflops_per_s"] == pytest.approx(p["flops"] / (p["median_ms"] * 1e-3) / 1e12)
  step_ms = float(np.median(r["phases"]["step"]["times_ms"]))
  assert r["it_per_s"] == pytest.approx(1e3 / step_ms)
  assert r["images_per_s"] == pytest.approx(r["global_batch"] * 1e3 / step_ms)
  assert _positive_finite(r["compile_s"])
  assert r["peak_bytes"] is None or _positive_finite(r["peak_bytes"])  # None on CPU
  assert _positive_finite(r["phases"]["step"]["xla_bytes"])
  assert r["loss_finite"]
  assert report["results"][0]["it_per_s"] == pytest.approx(r["it_per_s"])
  for label in bench_report.PHASE_LABELS.values():
    assert label in table, label
  assert f"{r['it_per_s']:.3f}" in table
  shares = r["gradient_shares"]  # each loss term's share of the scene gradient, after the timed steps
  assert shares["step"] == 3 and abs(sum(v for k, v in shares.items() if k != "step") - 1.0) < 1e-5
  assert "gradient shares at step 3, batch 1" in table


def test_flops_only_scale_with_batch(capsys):
  """--flops_only on the tiny config (nothing compiled): counts are positive; cameras are independent, so the whole
  step costs twice as much at per-device batch 2 as at 1, within 1% (the unconditional text's projections are shared
  by the cameras and computed once); the optimiser's cost does not depend on the batch."""
  report = bench.main(["bench", "--config", str(ROOT / "configs" / "tiny.py"), "--arch", "config", "--flops_only",
                       "--batch", "2,1", "--phases", "optimizer"])
  assert "FLOPs only" in capsys.readouterr().out
  r1, r2 = report["results"]
  assert (r1["batch_per_device"], r2["batch_per_device"]) == (1, 2)
  assert set(r1["phases"]) == {"step", "optimizer"}
  for name in r1["phases"]:
    assert _positive_finite(r1["phases"][name]["flops"]), name
  assert r2["phases"]["step"]["flops"] == pytest.approx(2 * r1["phases"]["step"]["flops"], rel=1e-2)
  assert r2["phases"]["step"]["flops"] < 2 * r1["phases"]["step"]["flops"]
  assert r2["phases"]["optimizer"]["flops"] == pytest.approx(r1["phases"]["optimizer"]["flops"], rel=1e-6)


@pytest.mark.parametrize("arch, unet, vae, text_dim", [
    ("sd15", 859_520_964, 83_653_863, 768),  # published counts of the SD 1.5 UNet / VAE (PyTorch checkpoints)
    ("sd21", 865_910_724, 83_653_863, 1024),  # SD 2.1-base UNet; same VAE
])
def test_sd_architectures_match_published_sizes(arch, unet, vae, text_dim):
  """Random-weight SD architectures, abstractly (nothing allocated): parameter counts equal the published counts of
  the real checkpoints, a 64² render maps to 64×64×4 latents through a 512² VAE, and the UNet maps a CFG batch of 2
  with [2, 77, D] text to eps of the latents' shape."""
  prior = StableDiffusion.from_architecture(arch, jnp.bfloat16, abstract=True)
  assert sd_architectures.param_count(prior.params["unet"]) == unet
  assert sd_architectures.param_count(prior.params["vae"]) == vae
  assert sd_architectures.ARCHITECTURES[arch].text_dim == text_dim
  assert prior.image_size == 512
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(prior.params))
  z = jax.eval_shape(prior.to_latents, prior.params, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
                     jax.random.PRNGKey(0))
  assert z.shape == (1, 64, 64, 4)
  eps = jax.eval_shape(prior.predict_eps, prior.params, jax.ShapeDtypeStruct((2, 64, 64, 4), jnp.float32),
                       jnp.zeros(2, jnp.int32), jax.ShapeDtypeStruct((2, 77, text_dim), jnp.float32))
  assert eps.shape == (2, 64, 64, 4) and eps.dtype == jnp.float32


def test_random_weights_have_lecun_scale():
  """random_like: 'kernel' entries ~ N(0, 1/fan_in) (sample std within 3% of 1/sqrt(fan_in) over 65k draws), 'bias'
  all 0, 'scale' all 1, other leaves std 0.02; the requested dtype and shapes."""
  shapes = {"conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.float32),
                     "bias": jax.ShapeDtypeStruct((128,), jnp.float32)},
            "norm": {"scale": jax.ShapeDtypeStruct((128,), jnp.float32),
                     "bias": jax.ShapeDtypeStruct((128,), jnp.float32)},
            "pos": jax.ShapeDtypeStruct((256, 256), jnp.float32)}
  p = sd_architectures.random_like(shapes, jax.random.PRNGKey(0), jnp.bfloat16)
  assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), p) == jax.tree_util.tree_map(
      lambda s: (s.shape, jnp.dtype(jnp.bfloat16)), shapes)
  k = np.asarray(p["conv"]["kernel"], np.float64)
  assert abs(k.std() / (1 / math.sqrt(3 * 3 * 64)) - 1) < 0.03
  assert abs(k.mean()) < 3 * k.std() / math.sqrt(k.size)
  np.testing.assert_array_equal(np.asarray(p["conv"]["bias"], np.float32), 0)
  np.testing.assert_array_equal(np.asarray(p["norm"]["bias"], np.float32), 0)
  np.testing.assert_array_equal(np.asarray(p["norm"]["scale"], np.float32), 1)
  assert abs(np.asarray(p["pos"], np.float64).std() / 0.02 - 1) < 0.03


def test_compile_only_reports_memory_and_remat_recomputes(capsys):
  """--compile_only (tiny config, encode phase, nothing run) reports XLA's memory estimate; with
  prior.remat_encoder the compiled encoder fwd+bwd does more than 1.2x the FLOPs (its forward, about a third of
  fwd+bwd, is recomputed in the backward pass)."""
  reports = {}
  for remat in (False, True):
    reports[remat] = bench.main(["bench", "--config", str(ROOT / "configs" / "tiny.py"), "--arch", "config",
                                 "--compile_only", "--batch", "1", "--phases", "encode",
                                 f"--config.prior.remat_encoder={remat}"])
    assert "XLA estimate" in capsys.readouterr().out
  off, on = (reports[r]["results"][0]["phases"]["encode"] for r in (False, True))
  assert reports[True]["meta"]["remat_encoder"] is True and reports[False]["meta"]["remat_encoder"] is False
  assert _positive_finite(off["xla_bytes"]) and _positive_finite(on["xla_bytes"])
  assert on["compiled_flops"] > 1.2 * off["compiled_flops"]


def test_guidance_error_arithmetic_against_closed_form():
  """dreamjax.guidance_precision.errors: an error d on eps_c alone moves eps_hat by (1 + omega) d, so rel_guided =
  (1 + omega) RMS(d) / RMS(eps_hat - eps); an error common to eps_c and eps_u moves eps_hat by d only (guidance
  cancels it) and leaves the difference exact."""
  from dreamjax import guidance_precision as gp
  rng = np.random.default_rng(0)
  c, u, eps = (rng.standard_normal((8, 8, 4)) for _ in range(3))
  d = 1e-3 * rng.standard_normal((8, 8, 4))
  guided = 101.0 * c - 100.0 * u
  rms = lambda x: float(np.sqrt(np.mean(x ** 2)))
  e = gp.errors(c + d, u, c, u, eps, omega=100.0)
  assert abs(e["rel_guided"] - 101.0 * rms(d) / rms(guided - eps)) < 1e-12
  assert abs(e["rel_difference"] - rms(d) / rms(c - u)) < 1e-12 and abs(e["rel_eps_cond"] - rms(d) / rms(c)) < 1e-12
  e = gp.errors(c + d, u + d, c, u, eps, omega=100.0)
  assert abs(e["rel_guided"] - rms(d) / rms(guided - eps)) < 1e-12 and e["rel_difference"] < 1e-12
