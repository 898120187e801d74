"""An independent (shape, colour) classifier of single-object toy renders, for evaluating text-to-3D results only.

It never sees the prior: it is trained on its own renders (seeds 1 and 4) of the 20 single objects (two-part
objects are not among its classes) and tested on further renders (seed 3). Input: images [N, H, W, 3] in [0, 1], any
size (resized to 16×16, bilinear with antialiasing: the toy prior's resolution). Output: logits over `shapes.SHAPES`
(5) and `shapes.COLOUR_NAMES` (4). Textureless renders carry no colour, so the colour loss and colour accuracy skip
them.

Model: 3 conv stages at 16, 8, 4 pixels (32, 64, 64 channels; two 3×3 conv + GroupNorm + SiLU each; 2×2 average
pooling between stages), a 128-unit hidden layer on the flattened 4×4 map and two linear heads. Trained with Adam on
renders re-composited over fresh random backgrounds and randomly mirrored.

  python -m dreamjax.toy.classifier --out /tmp/my_classifier [--steps 3000 --data_seeds 1,4 --num_data 2000,4000]
(--out dreamjax/toy/weights --overwrite replaces the shipped weights)
  clf = load(); shape_logits, colour_logits = clf(images)
"""

from __future__ import annotations

import functools
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamjax import cameras as cam_lib
from dreamjax.priors.weights import check_flax_tree
from dreamjax.toy import dataset as ds
from dreamjax.toy import shapes
from dreamjax.toy import weights_io

NAME = "toy_classifier"  # toy_classifier.msgpack + toy_classifier.json (`weights_io`)
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
  tree, meta = weights_io.read(path, NAME, what="toy classifier weights", retrain="python -m dreamjax.toy.classifier")
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


def _seeds_and_counts(seeds: str, counts: str) -> list[tuple[int, int]]:
  """--data_seeds / --num_data ("1,4" / "2000,4000") as [(seed, count)]; ValueError naming the flags if malformed."""
  try:
    pairs = list(zip([int(s) for s in seeds.split(",")], [int(n) for n in counts.split(",")], strict=True))
  except ValueError:
    raise ValueError(f"--data_seeds {seeds!r} and --num_data {counts!r} must be comma-separated integers of equal "
                     "length") from None
  if not pairs or min(n for _, n in pairs) < 1:
    raise ValueError(f"--num_data {counts!r} must list counts >= 1")
  return pairs


def main(argv) -> None:
  from absl import flags
  a = flags.FLAGS
  for name in ("steps", "batch", "num_test"):
    if a[name].value < 1:
      raise ValueError(f"--{name} must be >= 1 (got {a[name].value})")
  if not a.lr > 0:
    raise ValueError(f"--lr must be > 0 (got {a.lr})")
  pairs = _seeds_and_counts(a.data_seeds, a.num_data)
  out = weights_io.check_writable(a.out, NAME, overwrite=a.overwrite)
  t0 = time.time()
  parts = [ds.load_or_generate(a.data.format(seed=s), n, s, objects=SINGLE_OBJECTS) for s, n in pairs]
  keys = ("images", "fg", "alpha", "obj", "label", "mode")
  data = {k: np.concatenate([d[k] for d in parts]) for k in keys}
  test = ds.load_or_generate(a.test, a.num_test, a.test_seed, objects=SINGLE_OBJECTS)
  t1 = time.time()
  params, final_loss = train(data, a.steps, a.batch, a.lr, a.seed)
  clf = Classifier(params)
  acc = accuracy(clf, test)
  meta = {"shapes": list(shapes.SHAPES), "colours": list(shapes.COLOUR_NAMES), "resolution": RESOLUTION,
          "train": {"num": int(len(data["obj"])), "data_seeds": a.data_seeds, "seed": a.seed, "steps": a.steps,
                    "batch": a.batch, "lr": a.lr, "final_loss": final_loss, "wall_s": round(time.time() - t1, 1)},
          "test": {"seed": a.test_seed, **acc}}
  weights_io.write(out, NAME, params, meta)
  print(f"held-out accuracy: shape {acc['shape']:.3f}, colour {acc['colour']:.3f}, both {acc['both']:.3f} "
        f"({acc['num']} renders); data {t1 - t0:.0f}s, training {time.time() - t1:.0f}s", flush=True)


if __name__ == "__main__":
  from absl import flags
  from dreamjax import cli
  weights_io.define_out_flags(NAME)
  flags.DEFINE_integer("steps", 3000, "Training steps.")
  flags.DEFINE_integer("batch", 64, "Batch size.")
  flags.DEFINE_float("lr", 2e-3, "Adam learning rate.")
  flags.DEFINE_integer("seed", 1, "Training seed.")
  flags.DEFINE_string("data", "/tmp/toy_classifier_train_s{seed}.npz", "Dataset cache per data seed.")
  flags.DEFINE_string("data_seeds", "1,4", "Render seeds of the training data (comma-separated).")
  flags.DEFINE_string("num_data", "2000,4000", "Renders per data seed (comma-separated).")
  flags.DEFINE_string("test", "/tmp/toy_classifier_test.npz", "Held-out dataset cache.")
  flags.DEFINE_integer("num_test", 400, "Held-out renders.")
  flags.DEFINE_integer("test_seed", 3, "Seed of the held-out renders.")
  cli.run(main, "toy.classifier")
