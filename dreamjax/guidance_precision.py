"""`python -m dreamjax.guidance_precision`: how much of the guided noise prediction survives the frozen UNet's dtype.

Classifier-free guidance at ω = 100 (paper form, eps_hat = (1 + ω) eps_c − ω eps_u) multiplies the rounding error of
eps_c − eps_u by about 141 (sqrt(101² + 100²)). This measures it on random-weight Stable Diffusion UNets (nothing
downloaded): for each dtype variant and timestep t,

  rel_guided = RMS(eps_hat_variant − eps_hat_f32) / RMS(eps_hat_f32 − eps)

i.e. the error as a fraction of the SDS signal w(t)(eps_hat − eps) itself, plus the relative error of eps_c alone
and of the guidance difference eps_c − eps_u. The same weights (drawn in float32, then cast), latents, noise and
text embeddings for every variant.

  python -m dreamjax.guidance_precision --arch sd15,sd21 --size 64 --json guidance.json

Random weights and N(0, 1) text embeddings are not a trained model: they give the arithmetic's error for activations
of a sensible size, not the error of a trained UNet, whose eps_c − eps_u is smaller relative to eps_c (so its
relative guidance error is likely larger). CPU-sized: about two UNet calls per variant and timestep.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.priors import sd_architectures
from dreamjax.priors.stable_diffusion import StableDiffusion
from dreamjax.priors.weights import cast_floating

VARIANTS = {  # name: (UNet dtype, attention implementation)
    "float32": ("float32", "stock"),
    "bfloat16": ("bfloat16", "stock"),
    "bfloat16 + f32 attention scores": ("bfloat16", "xla"),
    "float16": ("float16", "stock"),
}
TIMESTEPS = (50, 200, 500, 800, 950)
OMEGA = 100.0


def _rms(x) -> float:
  return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def measure(arch: str, size: int = 64, timesteps=TIMESTEPS, variants=tuple(VARIANTS), seed: int = 0,
            uncond_mix: float = 1.0, log=print) -> list[dict]:
  """One row per (variant, t): rel_guided, rel_eps_cond, rel_difference (see the module docstring). The
  unconditional embedding is sqrt(1 - m²) cond + m n (m = uncond_mix, n an independent N(0, 1) embedding): m = 1 is
  an unrelated text, a small m a text close to the prompt, so that eps_c - eps_u is small as in a trained model."""
  ref = StableDiffusion.from_architecture(arch, jnp.float32, seed=seed, attention="stock")
  unet_f32 = jax.device_get(ref.params["unet"])
  text = sd_architectures.random_text_embeddings(arch, seed=seed)
  uncond = np.sqrt(1.0 - uncond_mix ** 2) * text.views[:1] + uncond_mix * text.uncond
  emb = jnp.concatenate([text.views[:1], uncond], axis=0)  # [2, L, D]: cond, uncond
  k_z, k_eps = jax.random.split(jax.random.PRNGKey(seed + 1))
  channels = ref.latent_shape[-1]
  z0 = jax.random.normal(k_z, (1, size, size, channels))
  eps = jax.random.normal(k_eps, (1, size, size, channels))
  abar = np.asarray(ref.alphas_cumprod, np.float64)
  outputs = {}
  for name in ("float32",) + tuple(v for v in variants if v != "float32"):
    dtype, attention = VARIANTS[name]
    model = StableDiffusion.from_architecture(arch, jnp.dtype(dtype), seed=seed, abstract=True, attention=attention)
    params = {"unet": jax.device_put(cast_floating(unet_f32, dtype))}
    fn = jax.jit(lambda p, z, t, e, model=model: model.predict_eps(p, z, t, e).astype(jnp.float32))
    for t in timesteps:
      z_t = np.sqrt(abar[t]) * z0 + np.sqrt(1.0 - abar[t]) * eps
      t0 = time.time()
      out = np.asarray(fn(params, jnp.concatenate([z_t, z_t]).astype(dtype), jnp.array([t, t]), emb.astype(dtype)),
                       np.float64)
      outputs[name, t] = out
      log(f"{arch} {name} t={t}: {time.time() - t0:.1f} s")
  rows = []
  for name in variants:
    for t in timesteps:
      rows.append({"arch": arch, "variant": name, "t": int(t), "uncond_mix": uncond_mix,
                   **errors(*outputs[name, t], *outputs["float32", t], np.asarray(eps[0]))})
  return rows


def errors(eps_cond, eps_uncond, eps_cond_ref, eps_uncond_ref, eps, omega: float = OMEGA) -> dict:
  """Relative errors of one variant's predictions against the float32 reference (arrays of one shape):
  rel_guided = RMS(eps_hat - eps_hat_ref) / RMS(eps_hat_ref - eps) with eps_hat = (1 + omega) eps_c - omega eps_u,
  rel_eps_cond, rel_difference (of eps_c - eps_u), and difference_over_eps = RMS(eps_c - eps_u) / RMS(eps_c) of
  the reference."""
  c, u, c32, u32 = (np.asarray(x, np.float64) for x in (eps_cond, eps_uncond, eps_cond_ref, eps_uncond_ref))
  guided32 = (1 + omega) * c32 - omega * u32
  guided = (1 + omega) * c - omega * u
  return {"rel_guided": _rms(guided - guided32) / _rms(guided32 - eps),
          "rel_eps_cond": _rms(c - c32) / _rms(c32),
          "rel_difference": _rms((c - u) - (c32 - u32)) / _rms(c32 - u32),
          "difference_over_eps": _rms(c32 - u32) / _rms(c32)}


def format_table(rows: list[dict]) -> str:
  """Markdown: rel_guided per variant (rows) and t (columns), one block per architecture."""
  lines = []
  for arch, mix in dict.fromkeys((r["arch"], r["uncond_mix"]) for r in rows):
    block = [r for r in rows if r["arch"] == arch and r["uncond_mix"] == mix]
    ts = sorted({r["t"] for r in block})
    lines += [f"{arch}, uncond_mix {mix:g}: RMS(eps_hat - eps_hat_f32) / RMS(eps_hat_f32 - eps) at omega = "
              f"{OMEGA:g}", "",
              "| variant | " + " | ".join(f"t={t}" for t in ts) + " |", "| --- |" + " --- |" * len(ts)]
    for name in dict.fromkeys(r["variant"] for r in block):
      cells = {r["t"]: r["rel_guided"] for r in block if r["variant"] == name}
      lines.append(f"| {name} | " + " | ".join(f"{cells[t]:.3g}" for t in ts) + " |")
    ratio = [r["difference_over_eps"] for r in block if r["variant"] == "float32"]
    lines += ["", f"(RMS(eps_c - eps_u) / RMS(eps_c) in float32: {min(ratio):.3g} .. {max(ratio):.3g})", ""]
  return "\n".join(lines)


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  if any(not 0.0 <= float(m) <= 1.0 for m in f.uncond_mix):
    raise ValueError(f"--uncond_mix values must lie in [0, 1] (got {','.join(f.uncond_mix)})")
  archs = [a for a in f.arch.split(",") if a]
  unknown = [a for a in archs if a not in sd_architectures.ARCHITECTURES]
  if unknown or not archs:
    raise ValueError(f"--arch {f.arch!r}: use a comma-separated subset of {', '.join(sd_architectures.ARCHITECTURES)}")
  if f.size < 8 or f.size % 8:
    raise ValueError(f"--size must be a multiple of 8, >= 8 (got {f.size})")
  rows = []
  for arch in archs:
    for mix in f.uncond_mix:
      rows += measure(arch, f.size, uncond_mix=float(mix), log=lambda s: print(s, file=sys.stderr, flush=True))
  print(format_table(rows))
  if f.json:
    from dreamjax import files
    files.write_text(f.json, json.dumps({"command": " ".join(sys.argv), "jax": jax.__version__,
                                         "device": str(jax.devices()[0]), "rows": rows}, indent=1))


if __name__ == "__main__":
  from absl import flags
  from dreamjax import cli
  flags.DEFINE_string("arch", "sd15,sd21", "Random-weight architectures: sd15, sd21.")
  flags.DEFINE_integer("size", 64, "Latent height and width (64: the 512² images SD sees in DreamFusion).")
  flags.DEFINE_list("uncond_mix", ["1.0"], "How far the unconditional text is from the prompt's (1: unrelated; "
                    "0.1: close, a small guidance difference as in a trained model).")
  flags.DEFINE_string("json", "", "Also write every number to this JSON file.")
  cli.run(main, "guidance_precision")
