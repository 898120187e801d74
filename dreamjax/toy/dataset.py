"""Renders of the toy world with the project's renderer, drawn like DreamFusion's training views, with captions.

Each example: one object of `shapes.OBJECTS` (uniform), one view from `cameras.sample_view` with the paper's
`cameras.ViewSampling()` (the elevation, azimuth, distance, jitter, focal length, point light and shading-mode
distributions of a training run with configs/dreamfusion.py; the shading mode is drawn as after the albedo-only
warm-up: albedo 0.25, shaded 0.375, textureless 0.375), rendered with
`nerf.render.render_views` over a black background, then composited over a random image-space background (half
solid colours, half linear gradients between two random colours in a random direction). The caption is the train
step's: f"{prompt}, {view} view" with the camera's `cameras.view_labels` label (textureless renders keep the same
caption: the shape is what matters).

Arrays (one .npz): images uint8 [N, R, R, 3] (0..255, over the random background), fg uint8 [N, R, R, 3] (the
object alone over black, i.e. alpha-premultiplied colour) and alpha uint8 [N, R, R] (opacity), so that training can
re-composite over fresh backgrounds; obj int32 [N] (index into OBJECTS), label int32 [N] (view label), mode int32 [N]
(shading mode), elevation/azimuth float32 [N] (degrees).

  python -m dreamjax.toy.dataset --out /tmp/toy_train.npz --num 20000 --seed 0
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import files
from dreamjax.nerf import render
from dreamjax.toy import shapes

RESOLUTION = 32
SETTINGS = render.RenderSettings(num_coarse=48, num_fine=48)
VIEWS = cam_lib.ViewSampling()  # the paper's training-view distribution (DF A.2)


def caption(obj_index: int, label: int) -> str:
  """The train step's caption of object `obj_index` seen with view label `label`."""
  return cam_lib.view_prompt(shapes.PROMPTS[obj_index], label)


def captions(obj: np.ndarray, label: np.ndarray) -> list[str]:
  return [caption(int(o), int(v)) for o, v in zip(obj, label)]


def backgrounds(rng, n: int, resolution: int) -> jnp.ndarray:
  """Random backgrounds [n, R, R, 3] in [0, 1]: solid colours or linear gradients (prob 1/2 each)."""
  k_kind, k_c0, k_c1, k_dir = jax.random.split(rng, 4)
  c0 = jax.random.uniform(k_c0, (n, 1, 1, 3))
  c1 = jax.random.uniform(k_c1, (n, 1, 1, 3))
  theta = jax.random.uniform(k_dir, (n, 1, 1), maxval=2 * jnp.pi)
  g = (jnp.arange(resolution) + 0.5) / resolution - 0.5
  yy, xx = jnp.meshgrid(g, g, indexing="ij")
  u = jnp.clip((xx * jnp.cos(theta) + yy * jnp.sin(theta)) / np.sqrt(0.5) + 0.5, 0.0, 1.0)[..., None]
  gradient = jax.random.uniform(k_kind, (n, 1, 1, 1)) < 0.5
  return jnp.where(gradient, c0 + (c1 - c0) * u, jnp.broadcast_to(c0, (n, resolution, resolution, 3)))


def make_render_fn(views: cam_lib.ViewSampling = VIEWS, resolution: int = RESOLUTION):
  """Jitted (keys [n, 2], obj [n] int) -> dict(images [n, R, R, 3] f32, label, mode, elevation, azimuth)."""
  table = shapes.stack_arrays(shapes.OBJECTS)
  step = views.shading.albedo_only_steps  # first step with all three shading modes

  def one(key, obj):
    k_view, k_render = jax.random.split(key)
    view = cam_lib.sample_view(views, k_view, step, resolution)
    arrs = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[obj], table)
    out = render.render_views(shapes.field(arrs), jnp.zeros_like, view.cams, resolution, resolution, k_render,
                              var=0.0, light_pos=view.light, mode=view.mode, settings=SETTINGS,
                              randomized=False, keep=("rgb", "opacity"))
    return out, view

  @jax.jit
  def fn(keys, obj):
    out, view = jax.vmap(one)(keys, obj)
    rgb, opacity = out["rgb"][:, 0], out["opacity"][:, 0, ..., None]
    bg = backgrounds(jax.random.fold_in(keys[0], 7), keys.shape[0], resolution)
    images = jnp.clip(rgb + (1.0 - opacity) * bg, 0.0, 1.0)
    return {"images": images, "fg": jnp.clip(rgb, 0.0, 1.0), "alpha": jnp.clip(opacity[..., 0], 0.0, 1.0),
            "label": view.label[:, 0], "mode": view.mode[:, 0],
            "elevation": view.cams.elevation[:, 0], "azimuth": view.cams.azimuth[:, 0]}
  return fn


def generate(num: int, seed: int, resolution: int = RESOLUTION, chunk: int = 64, objects=None,
             verbose: bool = False) -> dict:
  """`num` examples (see the module docstring) from `seed`; `objects` restricts the object indices drawn."""
  fn = make_render_fn(VIEWS, resolution)
  rng = np.random.default_rng(seed)
  pool = np.arange(len(shapes.OBJECTS)) if objects is None else np.asarray(objects)
  obj_all = rng.choice(pool, size=num).astype(np.int32)
  base = jax.random.PRNGKey(seed)
  parts, t0 = [], time.time()
  for start in range(0, num, chunk):
    idx = np.arange(start, start + chunk)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.asarray(idx))
    obj = np.resize(obj_all[start:start + chunk], chunk)  # fixed chunk shape: one compilation
    out = jax.device_get(fn(keys, jnp.asarray(obj)))
    n = min(chunk, num - start)
    parts.append({k: np.asarray(v)[:n] for k, v in out.items()})
    if verbose and (start // chunk) % 10 == 0:
      print(f"rendered {start + n}/{num} in {time.time() - t0:.1f}s", flush=True)
  data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  for k in ("images", "fg", "alpha"):
    data[k] = np.round(data[k] * 255.0).astype(np.uint8)
  data["obj"] = obj_all
  data["label"] = data["label"].astype(np.int32)
  data["mode"] = data["mode"].astype(np.int32)
  return data


def composite(fg: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Re-composites stored renders over fresh random backgrounds (as `backgrounds`, in NumPy).

  fg uint8 [n, R, R, 3] (premultiplied), alpha uint8 [n, R, R] -> images float32 [n, R, R, 3] in [0, 1].
  """
  n, r = fg.shape[:2]
  c0, c1 = rng.uniform(size=(n, 1, 1, 3)), rng.uniform(size=(n, 1, 1, 3))
  theta = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1))
  g = (np.arange(r) + 0.5) / r - 0.5
  yy, xx = np.meshgrid(g, g, indexing="ij")
  u = np.clip((xx * np.cos(theta) + yy * np.sin(theta)) / np.sqrt(0.5) + 0.5, 0.0, 1.0)[..., None]
  gradient = rng.uniform(size=(n, 1, 1, 1)) < 0.5
  bg = np.where(gradient, c0 + (c1 - c0) * u, c0)
  a = alpha[..., None].astype(np.float32) / 255.0
  return np.clip(fg.astype(np.float32) / 255.0 + (1.0 - a) * bg, 0.0, 1.0).astype(np.float32)


def load_or_generate(path: str | None, num: int, seed: int, verbose: bool = True, **kw) -> dict:
  """Reads the cache `path` if it holds >= num examples with this seed, else generates and writes it."""
  if path and pathlib.Path(path).exists():
    with np.load(path) as f:
      data = {k: f[k] for k in f.files}
    if len(data["obj"]) >= num and int(data.get("seed", -1)) == seed:
      return {k: (v[:num] if v.ndim else v) for k, v in data.items()}
  data = generate(num, seed, verbose=verbose, **kw)
  data["seed"] = np.array(seed)
  if path:
    np.savez(path, **data)
  return data


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  if f.num < 1:
    raise ValueError(f"--num must be >= 1 (got {f.num})")
  out = pathlib.Path(f.out)
  if out.suffix != ".npz":
    raise ValueError(f"--out {f.out!r} must name a .npz file")
  if out.exists() and not f.overwrite:
    raise ValueError(f"--out {f.out!r} exists; pass another path, or --overwrite to replace it")
  if not out.parent.is_dir():
    raise ValueError(f"--out {f.out!r}: folder {str(out.parent)!r} does not exist")
  t0 = time.time()
  data = generate(f.num, f.seed, verbose=True)
  data["seed"] = np.array(f.seed)
  with files.atomic_path(out) as tmp:
    with open(tmp, "wb") as fh:
      np.savez(fh, **data)
  print(f"wrote {out}: {f.num} renders in {time.time() - t0:.1f}s")


if __name__ == "__main__":
  from absl import flags
  from dreamjax import cli
  flags.DEFINE_string("out", None, ".npz to write (keep it out of the repository, e.g. /tmp).", required=True)
  flags.DEFINE_integer("num", 20000, "Renders to make.")
  flags.DEFINE_integer("seed", 0, "Seed of the objects, views and backgrounds.")
  flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
  cli.run(main, "toy.dataset")
