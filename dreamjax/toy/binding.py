"""Does the toy prior bind each colour of a two-part prompt to its part? The measurements behind README
"Composition" (issue: two-part objects lose a colour in distillation).

The analytic object of a two-part prompt is rendered (albedo over random solid backgrounds, at the prior's 16²) from
the views `VIEWS`, in five paints: `true`, `swapped` (the two colours exchanged), `bottom colour` and `top colour`
(both parts in one part's colour) and `uncoloured` (grey 0.6). Two tables:

1. Preference. The prior's ε-MSE with the view caption (MSE_c) and with the empty caption (MSE_u), averaged over
   views, the timesteps `T_GRID` and `draws` noise draws shared by all paints (common random numbers). Per paint:
   the implicit classifier score Δ = MSE_u − MSE_c (how much the caption helps to denoise the render: the larger,
   the better the render fits the caption), and the guided energy E(ω) = MSE_c − ω Δ whose gradient CFG in the
   paper's form ((1+ω) ε_c − ω ε_u) follows: SDS at scale ω prefers the paint with the lower E. `crossover` is the
   ω above which the true paint has a lower E than a one-colour paint (ΔMSE_c / ΔΔ; "never" when the true paint
   has the smaller Δ).
2. Pull. The colour SDS pushes each part toward, from a given render: SDS's gradient is
   w(t) √ā / √(1−ā) (x − x̂₀) with x̂₀ = (z_t − √(1−ā) ε̂) / √ā the guided one-step estimate, so the render moves
   toward x̂₀. Per paint, t band and part: the mean of x̂₀ over the part's visible pixels, views and draws, named by
   its nearest world colour (lower case when its distance to that colour is over 0.25: a muddy mixture).

  python -m dreamjax.toy.binding [--prompts "a red cube with a blue sphere on top;..."] [--guidance 30]
      [--draws 8] [--out docs/composition_prior.md]
"""

from __future__ import annotations

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax.nerf import render
from dreamjax.toy import dataset
from dreamjax.toy import shapes

T_GRID = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)  # timesteps of the preference table
T_BANDS = ((20, 250), (250, 500), (500, 750), (750, 980))  # t ranges of the pull table (low, high: exclusive)
VIEWS = ((15.0, 0.0), (15.0, 90.0), (15.0, 180.0), (15.0, 270.0), (40.0, 45.0), (40.0, 135.0), (40.0, 225.0),
         (40.0, 315.0), (75.0, 0.0), (75.0, 120.0))  # (elevation, azimuth) degrees: every view label, both parts
DISTANCE = 1.3  # camera distance (world units), focal = the image width: the object fills about half the frame
GREY = 0.6
PAINTS = ("true", "swapped", "bottom colour", "top colour", "uncoloured")
MUDDY = 0.25  # RGB distance above which a mean colour is printed in lower case


def paint(obj: shapes.ToyObject, name: str) -> dict:
  """The array form of a two-part object with its parts' colours replaced as `name` (one of PAINTS) says."""
  arrs = obj.arrays()
  bottom, top = arrs["colour"][0], arrs["colour"][1]
  colours = {"true": (bottom, top), "swapped": (top, bottom), "bottom colour": (bottom, bottom),
             "top colour": (top, top), "uncoloured": (np.full(3, GREY), np.full(3, GREY))}[name]
  return dict(arrs, colour=np.stack(colours).astype(np.float32))


def views(resolution: int):
  """The cameras [V] of VIEWS at `resolution` pixels and their view labels [V] (cameras.view_labels)."""
  el, az = (np.array(v, np.float64) for v in zip(*VIEWS))
  cams = cam_lib.orbit_cameras(el, az, DISTANCE, float(resolution))
  return cams, np.asarray(cam_lib.view_labels(jnp.asarray(el), jnp.asarray(az)))


def renders(obj: shapes.ToyObject, resolution: int, seed: int = 0) -> tuple[dict, np.ndarray]:
  """{paint: images [V, R, R, 3] in [0, 1]} (albedo over one random solid background per view, the same for every
  paint) and the visible part [V, R, R] (shapes.visible_part)."""
  cams, _ = views(resolution)
  n = len(VIEWS)
  bg = np.random.default_rng(seed).uniform(size=(n, 1, 1, 3))
  out = {}
  for name in PAINTS:
    r = render.render_views(shapes.field(paint(obj, name)), jnp.zeros_like, cams, resolution, resolution,
                            jax.random.PRNGKey(0), var=0.0, light_pos=jnp.zeros((n, 3)),
                            mode=jnp.full(n, cam_lib.ALBEDO, jnp.int32),
                            settings=dataset.SETTINGS, randomized=False,
                            keep=("rgb", "opacity"))
    out[name] = np.clip(np.asarray(r["rgb"]) + (1.0 - np.asarray(r["opacity"]))[..., None] * bg, 0.0, 1.0)
  return out, np.asarray(shapes.visible_part(obj.arrays(), cams, resolution, resolution))


@functools.partial(jax.jit, static_argnames=("prior",))
def _eps_pair(prior, z_t, t, emb_c, emb_u):
  eps = prior.predict_eps(prior.params, jnp.concatenate([z_t, z_t]), jnp.concatenate([t, t]),
                          jnp.concatenate([emb_c, emb_u]))
  return jnp.split(eps, 2)


def _noised(prior, z, t, key):
  a = jnp.asarray(prior.alphas_cumprod)[t][:, None, None, None]
  noise = jax.random.normal(key, z.shape)
  return jnp.sqrt(a) * z + jnp.sqrt(1.0 - a) * noise, noise, a


def preference(prior, prompt: str, images: dict, draws: int = 8, seed: int = 0) -> dict:
  """{paint: {'mse_c', 'mse_u', 'delta': mean Δ, 'delta_sem': SEM of Δ − Δ(true) over the (t, draw) pairs}} for
  `images` {paint: [V, R, R, 3]} (the prior's resolution) under the view captions of `prompt`."""
  names = list(images)
  first = images[names[0]]
  _, labels = views(first.shape[1])
  reps = (len(names), 1, 1)
  emb_c = jnp.tile(prior.encode_text([cam_lib.view_prompt(prompt, int(v)) for v in labels]), reps)
  emb_u = jnp.tile(prior.encode_text([""] * len(labels)), reps)
  z = jnp.asarray(np.concatenate([2.0 * images[n] - 1.0 for n in names]), jnp.float32)  # every paint in one batch
  abar = jnp.asarray(prior.alphas_cumprod)
  per = {name: ([], []) for name in names}
  for i, t in enumerate(T_GRID):
    for k in range(draws):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), i * 10_000 + k)
      noise = jnp.tile(jax.random.normal(key, first.shape, jnp.float32), reps + (1,))  # the same for every paint
      z_t = jnp.sqrt(abar[t]) * z + jnp.sqrt(1.0 - abar[t]) * noise
      ec, eu = _eps_pair(prior, z_t, jnp.full(z.shape[0], t, jnp.int32), emb_c, emb_u)
      mse_c, mse_u = (np.asarray(jnp.mean((e - noise) ** 2, axis=(1, 2, 3))).reshape(len(names), -1).mean(axis=1)
                      for e in (ec, eu))
      for j, name in enumerate(names):
        per[name][0].append(float(mse_c[j]))
        per[name][1].append(float(mse_u[j]))
  true_delta = np.array(per["true"][1]) - np.array(per["true"][0]) if "true" in per else None
  out = {}
  for name, (c, u) in per.items():
    c, u = np.array(c), np.array(u)
    d = u - c
    diff = d - true_delta if true_delta is not None else d
    out[name] = {"mse_c": float(c.mean()), "mse_u": float(u.mean()), "delta": float(d.mean()),
                 "delta_sem": float(np.std(diff, ddof=1) / np.sqrt(diff.size))}
  return out


def crossover(pref: dict, name: str) -> float | None:
  """ω above which the true paint's guided energy E(ω) = MSE_c − ω Δ is below paint `name`'s; None if never."""
  t, o = pref["true"], pref[name]
  dd = t["delta"] - o["delta"]
  if dd <= 0:
    return None
  return max((t["mse_c"] - o["mse_c"]) / dd, 0.0)


def pull(prior, prompt: str, images: dict, visible: np.ndarray, guidance: float, draws: int = 8,
         seed: int = 0) -> dict:
  """{paint: [band][part] mean x̂₀ colour (RGB in [0, 1])} under CFG (paper form) at `guidance`."""
  from dreamjax import distill
  _, labels = views(visible.shape[1])
  n = len(labels)
  emb_c = jnp.repeat(prior.encode_text([cam_lib.view_prompt(prompt, int(v)) for v in labels]), draws, axis=0)
  emb_u = jnp.repeat(prior.encode_text([""]), n * draws, axis=0)
  out = {}
  for name, img in images.items():
    z = jnp.repeat(jnp.asarray(2.0 * img - 1.0, jnp.float32), draws, axis=0)
    vis = np.repeat(visible, draws, axis=0)
    rows = []
    for b, (lo, hi) in enumerate(T_BANDS):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), b)
      t = jax.random.randint(jax.random.fold_in(key, 1), (n * draws,), lo, hi)
      z_t, _, a = _noised(prior, z, t, key)
      ec, eu = _eps_pair(prior, z_t, t, emb_c, emb_u)
      x0 = (z_t - jnp.sqrt(1.0 - a) * distill.guided_eps(ec, eu, guidance, "paper")) / jnp.sqrt(a)
      x0 = (np.clip(np.asarray(x0), -1.0, 1.0) + 1.0) / 2.0
      rows.append([x0[vis == p].mean(axis=0) if np.any(vis == p) else np.full(3, np.nan) for p in range(2)])
    out[name] = rows
  return out


def colour_letter(rgb: np.ndarray) -> str:
  """The nearest world colour's initial (R, G, B, Y), lower case when further than MUDDY from it."""
  palette = np.array([shapes.COLOURS[c] for c in shapes.COLOUR_NAMES])
  dist = np.sqrt(np.sum((palette - rgb) ** 2, axis=-1))
  letter = shapes.COLOUR_NAMES[int(np.argmin(dist))][0].upper()
  return letter if dist.min() <= MUDDY else letter.lower()


def report(prompt: str, pref: dict, pulls: dict, guidance: float, draws: int) -> str:
  """Markdown: the preference table and the pull table of one prompt."""
  lines = [f"### {prompt}", "",
           f"Preference ({len(VIEWS)} views, t in {list(T_GRID)}, {draws} shared noise draws; Δ = MSE_u − MSE_c, "
           "± the SEM of its difference to the true paint; E(ω) = MSE_c − ω Δ):", "",
           f"| paint | MSE_c | MSE_u | Δ (×1e-3) | E(10) | E(30) | E(100) | true preferred above ω |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, p in pref.items():
    e = lambda w: p["mse_c"] - w * p["delta"]
    cross = "–" if name == "true" else (lambda c: "never" if c is None else f"{c:.0f}")(crossover(pref, name))
    sem = "" if name == "true" else f" ± {1e3 * p['delta_sem']:.2f}"
    lines.append(f"| {name} | {p['mse_c']:.4f} | {p['mse_u']:.4f} | {1e3 * p['delta']:.2f}{sem} | {e(10):.4f} | "
                 f"{e(30):.4f} | {e(100):.4f} | {cross} |")
  lines += ["", f"Pull: nearest colour of the guided x̂₀ (ω = {guidance:g}) over each part, bottom/top "
                "(lower case: muddy, over 0.25 from any world colour):", "",
            "| paint | " + " | ".join(f"t {lo}–{hi}" for lo, hi in T_BANDS) + " |",
            "|" + " --- |" * (len(T_BANDS) + 1)]
  for name, rows in pulls.items():
    lines.append(f"| {name} | " + " | ".join("/".join(colour_letter(c) for c in r) for r in rows) + " |")
  return "\n".join(lines)


def main(argv) -> None:
  from absl import flags
  from dreamjax import workdir as workdir_lib
  from dreamjax.toy import prior as prior_lib
  f = flags.FLAGS
  if f.draws < 2:
    raise ValueError(f"--draws must be >= 2 (got {f.draws})")
  if not np.isfinite(f.guidance):
    raise ValueError(f"--guidance must be a finite number (got {f.guidance})")
  prompts = [p.strip() for p in f.prompts.split(";") if p.strip()]
  objs = []
  for p in prompts:
    try:
      obj = shapes.object_for_prompt(p)
    except KeyError as e:
      raise ValueError(e.args[0]) from None
    if obj.is_single:
      raise ValueError(f"--prompts: {p!r} is a single object; this measures two-part objects")
    objs.append(obj)
  if f.out:
    workdir_lib.check_output_file(f.out)
  prior = prior_lib.load(f.prior or None)
  res = prior.resolution[0]
  parts = []
  for p, obj in zip(prompts, objs):
    images, visible = renders(obj, res)
    text = report(p, preference(prior, p, images, f.draws), pull(prior, p, images, visible, f.guidance, f.draws),
                  f.guidance, f.draws)
    print(text + "\n", flush=True)
    parts.append(text)
  if f.out:
    from dreamjax import files
    files.write_text(f.out, f"# How the toy prior binds colours to parts\n\nCommand: `python -m dreamjax.toy.binding "
                            f"{' '.join(sys.argv[1:])}`\n\n" + "\n\n".join(parts) + "\n")
    print(f"wrote {pathlib.Path(f.out)}")


if __name__ == "__main__":
  from absl import flags
  from dreamjax import cli
  flags.DEFINE_string("prompts", ";".join(o.prompt for o in shapes.OBJECTS if not o.is_single),
                      "';'-separated two-part toy prompts.")
  flags.DEFINE_float("guidance", 30.0, "CFG scale ω (paper form) of the pull table (configs/toy.py: 30).")
  flags.DEFINE_integer("draws", 8, "Noise draws per (view, t).")
  flags.DEFINE_string("prior", "", "Toy prior folder ('' = the shipped weights).")
  flags.DEFINE_string("out", "", "Write the markdown here too.")
  cli.run(main, "toy.binding")
