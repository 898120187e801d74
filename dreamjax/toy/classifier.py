"""An independent (shape, colour) classifier of single-object toy renders, for evaluating text-to-3D results only.

It never sees the prior: it is trained on its own renders (seeds 1 and 4) of the 20 single objects (two-part
objects are not among its classes) and tested on further renders (seed 3). Input: images [N, H, W, 3] in [0, 1], any
size (resized to 16×16, bilinear with antialiasing: the toy prior's resolution). Output: logits over `shapes.SHAPES`
(5) and `shapes.COLOUR_NAMES` (4). Textureless renders carry no colour, so the colour loss and colour accuracy skip
them.

Model: 3 conv stages at 16, 8, 4 pixels (32, 64, 64 channels; two 3×3 conv + GroupNorm + SiLU each; 2×2 average
pooling between stages), a 128-unit hidden layer on the flattened 4×4 map and two linear heads. Trained with Adam on
renders re-composited over fresh random backgrounds and randomly mirrored.

  python -m dreamjax.toy.classifier --out dreamjax/toy/weights [--steps 3000 --data_seeds 1,4 \
      --num_data 2000,4000]
  clf = load(); shape_logits, colour_logits = clf(images)
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from dreamjax import cameras as cam_lib
from dreamjax.priors.weights import WeightsError, brief_error, check_flax_tree
from dreamjax.toy import dataset as ds
from dreamjax.toy import shapes

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"
PARAMS_FILE = "toy_classifier.msgpack"
CONFIG_FILE = "toy_classifier.json"
RESOLUTION = 16
SINGLE_OBJECTS = tuple(i for i, o in enumerate(shapes.OBJECTS) if o.is_single)
# Per object index: its shape and colour class (-1 for two-part objects).
SHAPE_OF = np.array([shapes.SHAPES.index(o.shape) if o.is_single else -1 for o in shapes.OBJECTS], np.int32)
COLOUR_OF = np.array([shapes.COLOUR_NAMES.index(o.colour) if o.is_single else -1 for o in shapes.OBJECTS], np.int32)


class ShapeColourNet(nn.Module):
  """images [N, 16, 16, 3] in [0, 1] -> (shape logits [N, 5], colour logits [N, 4])."""

  @nn.compact
  def __call__(self, x):
    x = 2.0 * x - 1.0
    for i, ch in enumerate((32, 64, 64)):
      for _ in range(2):
        x = nn.silu(nn.GroupNorm(num_groups=8)(nn.Conv(ch, (3, 3))(x)))
      if i < 2:
        x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.silu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(len(shapes.SHAPES))(x), nn.Dense(len(shapes.COLOUR_NAMES))(x)


def _resize(images: jnp.ndarray) -> jnp.ndarray:
  b, h, w, c = images.shape
  if (h, w) == (RESOLUTION, RESOLUTION):
    return images
  return jax.image.resize(images, (b, RESOLUTION, RESOLUTION, c), method="bilinear", antialias=True)


class Classifier:
  """The trained classifier: `clf(images [N, H, W, 3] in [0, 1]) -> (shape logits [N, 5], colour logits [N, 4])`."""

  def __init__(self, params, meta: dict | None = None):
    self.params = params
    self.meta = meta or {}
    net = ShapeColourNet()
    self._apply = jax.jit(lambda p, x: net.apply({"params": p}, _resize(x)))

  def __call__(self, images) -> tuple[jnp.ndarray, jnp.ndarray]:
    return self._apply(self.params, jnp.asarray(images, jnp.float32))

  def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (shape [N] into SHAPES, colour [N] into COLOUR_NAMES)."""
    s, c = self(images)
    return np.asarray(jnp.argmax(s, -1)), np.asarray(jnp.argmax(c, -1))


def load(path: str | pathlib.Path | None = None) -> Classifier:
  """The classifier from a folder or .msgpack (None = the shipped weights). Raises WeightsError if missing/broken."""
  p = WEIGHTS_DIR if path is None else pathlib.Path(path).expanduser()
  f = p / PARAMS_FILE if p.is_dir() or p.suffix != ".msgpack" else p
  if not f.exists():
    raise WeightsError(f"toy classifier weights {str(f)!r} are missing; train them with `python -m "
                       f"dreamjax.toy.classifier --out {f.parent}`")
  try:
    tree = serialization.msgpack_restore(f.read_bytes())
    meta_file = f.with_name(CONFIG_FILE)
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
  except Exception as e:
    raise WeightsError(f"cannot read toy classifier weights {str(f)!r} ({brief_error(e)}); retrain them") from e
  target = jax.eval_shape(lambda k: ShapeColourNet().init(k, jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))["params"],
                          jax.random.PRNGKey(0))
  return Classifier(jax.device_put(check_flax_tree(tree, target, "toy classifier weights")), meta)


def accuracy(clf: Classifier, data: dict, batch: int = 256) -> dict:
  """Held-out accuracies on `data` (a dataset dict of single objects): shape over all renders, colour over the
  albedo and shaded ones (textureless renders have no colour)."""
  s_pred, c_pred = [], []
  for i in range(0, len(data["obj"]), batch):
    s, c = clf.predict(data["images"][i:i + batch].astype(np.float32) / 255.0)
    s_pred.append(s)
    c_pred.append(c)
  s_pred, c_pred = np.concatenate(s_pred), np.concatenate(c_pred)
  coloured = data["mode"] != cam_lib.TEXTURELESS
  return {"shape": float(np.mean(s_pred == SHAPE_OF[data["obj"]])),
          "colour": float(np.mean((c_pred == COLOUR_OF[data["obj"]])[coloured])),
          "both": float(np.mean(((s_pred == SHAPE_OF[data["obj"]]) & (c_pred == COLOUR_OF[data["obj"]]))[coloured])),
          "num": int(len(data["obj"])), "num_coloured": int(coloured.sum())}


def train(data: dict, steps: int, batch: int, lr: float, seed: int, log_every: int = 50):
  """Trains ShapeColourNet on `data` (single objects). Returns params."""
  net = ShapeColourNet()
  params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05))
  opt_state = tx.init(params)

  def loss_fn(p, x, y_shape, y_colour, coloured):
    s, c = net.apply({"params": p}, x)
    ls = optax.softmax_cross_entropy_with_integer_labels(s, y_shape)
    lc = optax.softmax_cross_entropy_with_integer_labels(c, y_colour)
    return jnp.mean(ls) + jnp.sum(lc * coloured) / jnp.maximum(jnp.sum(coloured), 1.0)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step_fn(p, o, x, y_shape, y_colour, coloured):
    x = _resize(x)
    loss, g = jax.value_and_grad(loss_fn)(p, x, y_shape, y_colour, coloured)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  rng = np.random.default_rng(seed)
  losses, t0 = [], time.time()
  for step in range(steps):
    idx = rng.integers(0, len(data["obj"]), size=batch)
    x = ds.composite(data["fg"][idx], data["alpha"][idx], rng)
    flip = rng.uniform(size=batch) < 0.5
    x[flip] = x[flip, :, ::-1]
    obj = data["obj"][idx]
    coloured = (data["mode"][idx] != cam_lib.TEXTURELESS).astype(np.float32)
    params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(x), jnp.asarray(SHAPE_OF[obj]),
                                      jnp.asarray(COLOUR_OF[obj]), jnp.asarray(coloured))
    losses.append(float(loss))
    if (step + 1) % log_every == 0:
      print(f"step {step + 1:5d}  loss {np.mean(losses[-log_every:]):.4f}  {time.time() - t0:6.1f}s", flush=True)
  return params, float(np.mean(losses[-50:]))


def main(argv=None):
  p = argparse.ArgumentParser(description="Train the toy (shape, colour) classifier.")
  p.add_argument("--out", default=str(WEIGHTS_DIR))
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--seed", type=int, default=1, help="training seed")
  p.add_argument("--data", default="/tmp/toy_classifier_train_s{seed}.npz", help="cache path per data seed")
  p.add_argument("--data_seeds", default="1,4", help="render seeds of the training data (comma-separated)")
  p.add_argument("--num_data", default="2000,4000", help="renders per data seed (comma-separated)")
  p.add_argument("--test", default="/tmp/toy_classifier_test.npz")
  p.add_argument("--num_test", type=int, default=400)
  p.add_argument("--test_seed", type=int, default=3)
  a = p.parse_args(argv)
  t0 = time.time()
  parts = [ds.load_or_generate(a.data.format(seed=int(s)), int(n), int(s), objects=SINGLE_OBJECTS)
           for s, n in zip(a.data_seeds.split(","), a.num_data.split(","))]
  keys = ("images", "fg", "alpha", "obj", "label", "mode")
  data = {k: np.concatenate([d[k] for d in parts]) for k in keys}
  test = ds.load_or_generate(a.test, a.num_test, a.test_seed, objects=SINGLE_OBJECTS)
  t1 = time.time()
  params, final_loss = train(data, a.steps, a.batch, a.lr, a.seed)
  clf = Classifier(params)
  acc = accuracy(clf, test)
  out = pathlib.Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(jax.device_get(params)))
  meta = {"shapes": list(shapes.SHAPES), "colours": list(shapes.COLOUR_NAMES), "resolution": RESOLUTION,
          "train": {"num": int(len(data["obj"])), "data_seeds": a.data_seeds, "seed": a.seed, "steps": a.steps,
                    "batch": a.batch, "lr": a.lr, "final_loss": final_loss, "wall_s": round(time.time() - t1, 1)},
          "test": {"seed": a.test_seed, **acc}}
  (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
  print(f"held-out accuracy: shape {acc['shape']:.3f}, colour {acc['colour']:.3f}, both {acc['both']:.3f} "
        f"({acc['num']} renders); data {t1 - t0:.0f}s, training {time.time() - t1:.0f}s", flush=True)


if __name__ == "__main__":
  main()
