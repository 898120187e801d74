"""The paper's optimiser (a Distributed-Shampoo-style optax transformation) and learning-rate schedules.

DreamFusion (DF A.2) trains the NeRF with Distributed Shampoo (Anil et al. 2020, arXiv 2002.09018): beta1 = 0.9,
beta2 = 0.9, exponent_override = 2, block_size = 128, graft_type = SQRT_N, epsilon = 1e-6, and a learning rate that
warms up linearly from 1e-9 to 1e-4 over 3000 steps, then decays with a cosine to 1e-6 at step 15000. No Shampoo
package runs on current JAX (shared/docs/design.md), so the algorithm is written here from the papers' description.

What `shampoo` computes for one parameter tensor, step t (t = 0, 1, ... counts earlier updates):

1. Shape. Dimensions of size 1 are dropped and neighbouring small dimensions are merged greedily while their product
   stays <= `merge_small_dims_block_size` (a [3, 3, 64, 128] conv kernel becomes [576, 128] with the default 4096).
   Every merged dimension longer than `block_size` is cut into chunks of `block_size`; the tensor is thus tiled by
   blocks of rank k = len(merged shape). The last chunk is zero-padded to `block_size` so that all blocks of a tensor
   are stacked and processed as one batch ([N, b_1, ..., b_k]); zero rows/columns leave the valid part of every
   statistic and of the preconditioned block exactly unchanged (proof in BlockLayout).
   Note the default merge size (4096, as in the reference) turns small matrices into vectors: [16, 12] -> [192].
   - Matrices and conv kernels: one statistic per block and per block dimension (two for a matrix block).
   - Vectors (k = 1): one full [d, d] statistic per chunk of <= block_size entries, i.e. full-matrix
     Adagrad/RMSprop inside each chunk. This is what treating the vector as a 1 x n matrix gives: the 1 x 1 left
     factor only rescales the block, and grafting removes the scale.
   - Scalars (and all-ones shapes), and tensors with an original dimension > `skip_preconditioning_dim_size_gt` (huge
     embedding tables): no statistics; the update is the graft direction alone.
2. Statistics, for each block G_b and each of its dims i: S_i <- beta2 S_i + (1 - beta2) G_(i) G_(i)^T, where G_(i) is
   the block unfolded along dim i ([d_i, prod(other dims)]). For a matrix block that is L <- beta2 L + (1-beta2) G G^T
   and R <- beta2 R + (1-beta2) G^T G. With beta2 = 1 the new term is added with weight 1 (Adagrad-style sum).
   Statistics start at 0.
3. Preconditioners P_i = (S_i + eps_i I)^(-1/p) with eps_i = matrix_epsilon * max(lambda_max(S_i), 1e-16), computed by
   a float32 `eigh` (negative round-off eigenvalues clipped to 0), every `preconditioning_compute_steps` steps
   (`lax.cond`) and cached in the state. A result with a non-finite entry is discarded (the old one is kept).
   Precision: float32 eigh has absolute eigenvalue errors ~1e-7 lambda_max, comparable to the 1e-6 lambda_max ridge,
   so directions outside the range of a rank-deficient statistic (early steps, or a stale preconditioner) are scaled
   a few % differently than in float64; measured update errors vs float64 are <= ~1e-2 relative in the first steps.
   Exponent convention: `p = exponent_override` if it is > 0, else p = 2k. The original Shampoo (Gupta et al. 2018)
   uses p = 2k, i.e. L^(-1/4) G R^(-1/4) for a matrix. Distributed Shampoo's `exponent_override` replaces p for every
   factor, so DreamFusion's exponent_override = 2 gives L^(-1/2) G R^(-1/2) for matrices, S^(-1/2) g for vector
   chunks and P_1 ... P_k with (.)^(-1/2) each for rank-k blocks. This module implements exactly that.
   Why -1/2 works: up to a scalar, L kron R is a Kronecker approximation of full-matrix Adagrad's statistic
   H = sum vec(G) vec(G)^T (Morwani et al. 2024, "A New Perspective on Shampoo's Preconditioner"), so
   L^(-1/2) kron R^(-1/2) approximates H^(-1/2); the scalar does not matter after grafting.
4. Preconditioned direction: each block is multiplied by its P_i along dim i (batched over blocks), blocks are put
   back together (padding dropped) and reshaped to the parameter's shape.
5. Grafting: the Shampoo direction keeps its direction but takes its norm from a first-order "graft" direction D:
   S_hat = S * ||D|| / ||S||, either per block (`graft_per_block=True`, the default asked for in this project) or
   per whole tensor (`graft_per_block=False`, what the google-research code does: "layerwise grafting").
   Graft directions D (diagonal statistics v start at 0, eps_d = diagonal_epsilon):
     "sgd":                D = g
     "adagrad":            v <- v + g^2;                         D = g / (sqrt(v) + eps_d)
     "rmsprop":            v <- beta2 v + (1 - beta2) g^2;       D = g / (sqrt(v) + eps_d)
     "*_normalized":       as above with g replaced by g / ||g|| (norm over the tensor)
     "sqrt_n":             D = sign(g), so ||D|| = sqrt(n) for n non-zero entries.
   SQRT_N, as found in google-research `scalable_shampoo/optax/distributed_shampoo.py` (GraftingType.SQRT_N = 5):
   it keeps no diagonal statistics, its graft update is `ones_like(g) * sign(g)`, and the Shampoo direction is
   rescaled to that update's norm. So every tensor's update has norm sqrt(#non-zero entries), i.e. an RMS of 1 per
   entry (signSGD's size, Adam's steady-state size) before momentum and learning rate. (Read from the code; the
   paper does not describe it.)
6. Weight decay (coupled, as in the reference's default): S_hat += wd * param and D += wd * param.
7. Momentum, as in the reference (heavy ball, not an average): m <- beta1 m + S_hat and, for the graft path,
   m_D <- beta1 m_D + D. For t < `start_preconditioning_step` the graft path is used (statistics still accumulate).
   Nesterov: u = S_hat + beta1 m (resp. D + beta1 m_D), else u = m. Update = -lr(t) * u (lr after momentum, the
   reference's "decoupled learning rate"). With beta1 = 0.9 the steady-state step is ~10 lr per unit of graft norm.

Differences from the google-research code, on purpose: statistics start at 0 rather than at matrix_epsilon * I, the
inverse root uses eigh instead of coupled Newton iterations, and the floor under lambda_max in the relative epsilon is
1e-16 instead of 1e-6 (the latter makes the preconditioner the identity whenever the statistics are smaller than 1e-6,
as they can be with small score-distillation gradients). There is no multi-device sharding of the statistics: the
train step averages gradients across devices before the optimiser, and every device computes the same update.

The state is a pytree of arrays only (plus empty tuples), with static shapes, so it can be checkpointed with orbax.
Statistics and preconditioners of a tensor are stored stacked per merged dim: [N, b_i, b_i].
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import ml_collections
import numpy as np
import optax

PyTree = Any
ScalarOrSchedule = Union[float, Callable[[jax.Array], jax.Array]]

GRAFT_TYPES = ("sgd", "adagrad", "rmsprop", "sqrt_n", "adagrad_normalized", "rmsprop_normalized")
_HIGHEST = lax.Precision.HIGHEST
_LAMBDA_MAX_FLOOR = 1e-16


# ----------------------------------------------------------------------------------------------------------------
# Learning-rate schedule.


def warmup_cosine_schedule(init_value: float = 1e-9,
                           peak_value: float = 1e-4,
                           warmup_steps: int = 3000,
                           decay_steps: int = 15000,
                           end_value: float = 1e-6) -> Callable[[jax.Array], jax.Array]:
  """Linear warmup, then cosine decay, then constant (the DreamFusion schedule).

  lr(t) = init + (peak - init) t / warmup                                   for t < warmup
        = end + (peak - end) (1 + cos(pi (t - warmup) / (decay - warmup))) / 2  for warmup <= t < decay
        = end                                                               for t >= decay
  `decay_steps` is the step at which the cosine reaches `end_value` (counted from 0, warmup included).

  Returns:
    schedule(step) -> float32 learning rate; `step` an int or int array (optax's update count).
  """
  if decay_steps < warmup_steps:
    raise ValueError(f"decay_steps ({decay_steps}) must be >= warmup_steps ({warmup_steps}).")

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
    frac = jnp.clip((t - warmup_steps) / max(decay_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = end_value + (peak_value - end_value) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(t < warmup_steps, warm, cosine).astype(jnp.float32)

  return schedule


# ----------------------------------------------------------------------------------------------------------------
# Shapes and blocks.


def merge_small_dims(shape: Sequence[int], max_dim: int) -> tuple[int, ...]:
  """Drops size-1 dims and greedily merges neighbouring dims while their product is <= max_dim.

  E.g. (3, 3, 64, 128), 4096 -> (576, 128); (1, 5) -> (5,); () or (1, 1) -> () (scalar-like).
  """
  merged = []
  running = 1
  for d in shape:
    if d == 1:
      continue
    if running * d <= max_dim:
      running *= d
    else:
      if running > 1:
        merged.append(running)
      running = d
  if running > 1:
    merged.append(running)
  return tuple(merged)


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Static description of how one parameter is reshaped and tiled into blocks.

  A merged dim d > block_size is cut into n = ceil(d / block_size) chunks of b = block_size, the last one zero-padded.
  Why that is exact: zero gradient rows add nothing to the other dims' statistics; the padded dim's statistic is
  [[S, 0], [0, 0]], whose damped inverse root is blockdiag(f(S), c I) with the same lambda_max (hence the same
  ridge), so the valid rows of P G are f(S) G_valid and the padding rows are c * 0 = 0 (masked anyway).
  A dim d <= block_size is one chunk of b = d. Blocks are stacked on a leading axis of size N = prod(n_i).

  Attributes:
    shape: the parameter's shape.
    merged: shape after `merge_small_dims`; () means "not preconditioned".
    counts: n_i, chunks per merged dim.
    sizes: b_i, chunk size per merged dim (statistic i of every block is [b_i, b_i]).
  """
  shape: tuple[int, ...]
  merged: tuple[int, ...]
  counts: tuple[int, ...]
  sizes: tuple[int, ...]

  @classmethod
  def create(cls, shape: Sequence[int], block_size: int, merge_dims: int, skip_dim_gt: int) -> "BlockLayout":
    shape = tuple(int(d) for d in shape)
    merged = merge_small_dims(shape, merge_dims)
    if any(d > skip_dim_gt for d in shape):
      merged = ()
    split = [0 < block_size < d for d in merged]
    counts = tuple(-(-d // block_size) if s else 1 for d, s in zip(merged, split))
    sizes = tuple(block_size if s else d for d, s in zip(merged, split))
    return cls(shape, merged, counts, sizes)

  @property
  def preconditioned(self) -> bool:
    return len(self.merged) > 0

  @property
  def rank(self) -> int:
    return len(self.merged)

  @property
  def num_blocks(self) -> int:
    return math.prod(self.counts)

  @property
  def stat_shapes(self) -> list[tuple[int, int, int]]:
    """Shapes [N, b_i, b_i] of the stacked statistics, one per merged dim."""
    return [(self.num_blocks, b, b) for b in self.sizes]

  def to_blocks(self, x: jax.Array) -> jax.Array:
    """[*shape] -> [N, b_1, ..., b_k] (zero-padded, row-major block order)."""
    k = self.rank
    x = x.reshape(self.merged)
    x = jnp.pad(x, [(0, n * b - d) for n, b, d in zip(self.counts, self.sizes, self.merged)])
    x = x.reshape([v for n, b in zip(self.counts, self.sizes) for v in (n, b)])
    x = x.transpose(list(range(0, 2 * k, 2)) + list(range(1, 2 * k, 2)))
    return x.reshape((self.num_blocks,) + self.sizes)

  def from_blocks(self, y: jax.Array) -> jax.Array:
    """Inverse of `to_blocks`: [N, b_1, ..., b_k] -> [*shape] (padding dropped)."""
    k = self.rank
    y = y.reshape(self.counts + self.sizes)
    y = y.transpose([v for i in range(k) for v in (i, k + i)])
    y = y.reshape([n * b for n, b in zip(self.counts, self.sizes)])
    y = y[tuple(slice(0, d) for d in self.merged)]
    return y.reshape(self.shape)


# ----------------------------------------------------------------------------------------------------------------
# Pure maths.


def block_gram(blocks: jax.Array, axis: int) -> jax.Array:
  """G_(i) G_(i)^T of every block: [N, b_1..b_k] -> [N, b_i, b_i], i = `axis` (0-based over block dims)."""
  moved = jnp.moveaxis(blocks, axis + 1, 1)
  moved = moved.reshape(moved.shape[0], moved.shape[1], -1)
  return jnp.einsum("nij,nkj->nik", moved, moved, precision=_HIGHEST)


def matrix_inverse_pth_root(mats: jax.Array, p: float, epsilon: float) -> jax.Array:
  """(S + eps * lambda_max(S) I)^(-1/p) for symmetric PSD S, via eigh in the dtype of `mats` (float32 in training).

  Args:
    mats: [..., d, d] symmetric PSD matrices (batched).
    p: root; the result is S^(-1/p).
    epsilon: relative damping; the ridge is epsilon * max(lambda_max, 1e-16).
  Returns:
    [..., d, d], same dtype as `mats`.
  """
  mats = 0.5 * (mats + jnp.swapaxes(mats, -1, -2))
  eigvals, eigvecs = jnp.linalg.eigh(mats)
  eigvals = jnp.maximum(eigvals, 0.0)
  ridge = epsilon * jnp.maximum(jnp.max(eigvals, axis=-1, keepdims=True), _LAMBDA_MAX_FLOOR)
  scale = (eigvals + ridge)**(-1.0 / p)
  return jnp.matmul(eigvecs * scale[..., None, :], jnp.swapaxes(eigvecs, -1, -2), precision=_HIGHEST)


def precondition_blocks(blocks: jax.Array, preconditioners: Sequence[jax.Array]) -> jax.Array:
  """Applies P_i (symmetric, [N, b_i, b_i]) along block dim i of every block: [N, b_1..b_k] -> same shape."""
  out = blocks
  for i, p_mat in enumerate(preconditioners):
    moved = jnp.moveaxis(out, i + 1, -1)  # [N, ..., b_i]
    out = jnp.moveaxis(jnp.einsum("n...i,nij->n...j", moved, p_mat, precision=_HIGHEST), -1, i + 1)
  return out


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, and 0 where den == 0 (zero gradients give zero updates, not NaN)."""
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------------------------
# The optax transformation.


class ShampooParamState(NamedTuple):
  """Per-parameter state. statistics/preconditioners: one [N, b_i, b_i] per merged dim (BlockLayout.stat_shapes)."""
  statistics: tuple[jax.Array, ...]
  preconditioners: tuple[jax.Array, ...]
  graft_stats: Union[jax.Array, tuple]  # [*param.shape] for adagrad/rmsprop grafting, else ()
  momentum: jax.Array  # [*param.shape], Shampoo path
  graft_momentum: jax.Array  # [*param.shape], graft path (used before start_preconditioning_step)


class ShampooState(NamedTuple):
  count: jax.Array  # [] int32, number of updates done
  param_states: PyTree  # the params' tree with a ShampooParamState at each leaf


def shampoo(learning_rate: ScalarOrSchedule,
            block_size: int = 128,
            beta1: float = 0.9,
            beta2: float = 0.9,
            diagonal_epsilon: float = 1e-10,
            matrix_epsilon: float = 1e-6,
            exponent_override: int = 2,
            graft_type: str = "sqrt_n",
            start_preconditioning_step: int = 5,
            preconditioning_compute_steps: int = 1,
            nesterov: bool = True,
            weight_decay: float = 0.0,
            graft_per_block: bool = True,
            merge_small_dims_block_size: int = 4096,
            skip_preconditioning_dim_size_gt: int = 4096,
            compute_dtype: Any = jnp.float32) -> optax.GradientTransformation:
  """Blocked Shampoo with grafting and momentum; see the module docstring for the exact algorithm.

  Args:
    learning_rate: float or schedule(count) -> lr; the update is -lr * (grafted, momentum'd direction).
    block_size: maximum side of a statistics matrix; longer dims are split into chunks of this size.
    beta1: heavy-ball momentum (m <- beta1 m + u).
    beta2: statistics decay (S <- beta2 S + (1 - beta2) G G^T; beta2 = 1 means S <- S + G G^T). Also used by
      rmsprop grafting.
    diagonal_epsilon: epsilon of adagrad/rmsprop grafting.
    matrix_epsilon: relative ridge added before the inverse root (times lambda_max).
    exponent_override: p in S^(-1/p) for every factor; 0 means p = 2 * rank (original Shampoo).
    graft_type: one of GRAFT_TYPES (case-insensitive; "SQRT_N" works).
    start_preconditioning_step: steps t < this use the graft direction only.
    preconditioning_compute_steps: recompute inverse roots when t % this == 0.
    nesterov: Nesterov momentum.
    weight_decay: coupled L2 weight decay (needs `params` in update).
    graft_per_block: norm grafting per block (True) or per whole tensor (False, as google-research does).
    merge_small_dims_block_size: merge neighbouring dims while the product stays <= this.
    skip_preconditioning_dim_size_gt: tensors with any dim larger than this get the graft direction only.
    compute_dtype: dtype of statistics, inverse roots and momenta (float32; float64 only for tests under
      `jax.enable_x64`). Updates are cast back to each gradient's dtype.
  Returns:
    optax.GradientTransformation whose state is a ShampooState.
  """
  graft_type = graft_type.lower()
  if graft_type not in GRAFT_TYPES:
    raise ValueError(f"graft_type must be one of {GRAFT_TYPES}, got {graft_type!r}.")
  if preconditioning_compute_steps < 1:
    raise ValueError("preconditioning_compute_steps must be >= 1.")
  uses_graft_stats = graft_type.startswith(("adagrad", "rmsprop"))
  stat_new_weight = 1.0 if beta2 == 1.0 else 1.0 - beta2

  layout_of = functools.lru_cache(maxsize=None)(lambda shape: BlockLayout.create(
      shape, block_size, merge_small_dims_block_size, skip_preconditioning_dim_size_gt))

  def exponent(layout: BlockLayout) -> float:
    return float(exponent_override) if exponent_override > 0 else 2.0 * layout.rank

  def init_fn(params):

    def init_one(p):
      layout = layout_of(tuple(p.shape))
      shapes = layout.stat_shapes if layout.preconditioned else []
      return ShampooParamState(
          statistics=tuple(jnp.zeros(s, compute_dtype) for s in shapes),
          preconditioners=tuple(jnp.broadcast_to(jnp.eye(s[1], dtype=compute_dtype), s) for s in shapes),
          graft_stats=jnp.zeros(p.shape, compute_dtype) if uses_graft_stats else (),
          momentum=jnp.zeros(p.shape, compute_dtype),
          graft_momentum=jnp.zeros(p.shape, compute_dtype))

    return ShampooState(count=jnp.zeros([], jnp.int32), param_states=jax.tree.map(init_one, params))

  def compute_preconditioners(all_stats, all_old, all_p):
    """Inverse roots of every [N, b, b] statistic; one batched eigh per (bucket(b), p).

    Statistics with b <= 32 are zero-padded to the next power of two (>= 8) to share an eigh call; as for remainder
    blocks (BlockLayout), the top-left b x b block of the result is the inverse root of the unpadded statistic.
    """
    groups = {}
    for i, (s, p) in enumerate(zip(all_stats, all_p)):
      b = s.shape[-1]
      bucket = max(8, 1 << (b - 1).bit_length()) if b <= 32 else b
      groups.setdefault((bucket, p), []).append(i)
    out = list(all_old)
    for (bucket, p), idx in groups.items():
      widths = [bucket - all_stats[i].shape[-1] for i in idx]
      padded = [jnp.pad(all_stats[i], ((0, 0), (0, w), (0, w))) for i, w in zip(idx, widths)]
      counts = [x.shape[0] for x in padded]
      new = matrix_inverse_pth_root(jnp.concatenate(padded), p, matrix_epsilon)
      for i, part in zip(idx, jnp.split(new, np.cumsum(counts)[:-1])):
        b = all_stats[i].shape[-1]
        part = part[:, :b, :b]
        finite = jnp.all(jnp.isfinite(part), axis=(-2, -1), keepdims=True)
        out[i] = jnp.where(finite, part, all_old[i])
    return tuple(out)

  def graft_direction(g, graft_stats):
    """Returns (D, new graft_stats); g [*shape] in compute_dtype."""
    if graft_type == "sgd":
      return g, graft_stats
    if graft_type == "sqrt_n":
      return jnp.sign(g), graft_stats
    if graft_type.endswith("_normalized"):
      g = g * _safe_ratio(jnp.ones([], g.dtype), jnp.linalg.norm(g))
    if graft_type.startswith("adagrad"):
      new_stats = graft_stats + jnp.square(g)
    else:
      new_stats = beta2 * graft_stats + stat_new_weight * jnp.square(g)
    return g / (jnp.sqrt(new_stats) + diagonal_epsilon), new_stats

  def shampoo_direction(layout, g_blocks, graft, preconditioners):
    """Grafted Shampoo direction [*shape] from the gradient blocks [N, b_1..b_k]."""
    # Padding entries of a preconditioned block are 0 in exact arithmetic; the mask removes round-off there.
    mask = layout.to_blocks(jnp.ones(layout.shape, g_blocks.dtype))
    precond = precondition_blocks(g_blocks, preconditioners) * mask
    if graft_per_block:
      axes = tuple(range(1, layout.rank + 1))
      graft_norms = jnp.sqrt(jnp.sum(jnp.square(layout.to_blocks(graft)), axis=axes, keepdims=True))
      precond_norms = jnp.sqrt(jnp.sum(jnp.square(precond), axis=axes, keepdims=True))
      return layout.from_blocks(precond * _safe_ratio(graft_norms, precond_norms))
    direction = layout.from_blocks(precond)
    return direction * _safe_ratio(jnp.linalg.norm(graft), jnp.linalg.norm(direction))

  def update_fn(updates, state, params=None):
    count = state.count
    grads_flat, treedef = jax.tree.flatten(updates)
    states_flat = treedef.flatten_up_to(state.param_states)
    if weight_decay != 0.0:
      if params is None:
        raise ValueError("shampoo(weight_decay != 0) needs `params` in update().")
      params_flat = treedef.flatten_up_to(params)
    else:
      params_flat = [None] * len(grads_flat)
    layouts = [layout_of(tuple(g.shape)) for g in grads_flat]
    grads_c = [g.astype(compute_dtype) for g in grads_flat]
    blocks = [lay.to_blocks(g) if lay.preconditioned else None for lay, g in zip(layouts, grads_c)]

    # 1. Statistics.
    new_stats = []
    for lay, gb, st in zip(layouts, blocks, states_flat):
      new_stats.append(() if gb is None else tuple(
          beta2 * s + stat_new_weight * block_gram(gb, i) for i, s in enumerate(st.statistics)))

    # 2. Inverse roots, every `preconditioning_compute_steps` steps, for all parameters at once.
    all_stats = [s for stats in new_stats for s in stats]
    all_old = [p for st in states_flat for p in st.preconditioners]
    all_p = [exponent(lay) for lay, stats in zip(layouts, new_stats) for _ in stats]
    if all_stats:
      compute = functools.partial(compute_preconditioners, all_stats, all_old, all_p)
      if preconditioning_compute_steps == 1:
        all_new = compute()
      else:
        all_new = lax.cond(count % preconditioning_compute_steps == 0, compute, lambda: tuple(all_old))
    else:
      all_new = ()
    new_precs = []
    offset = 0
    for stats in new_stats:
      new_precs.append(tuple(all_new[offset:offset + len(stats)]))
      offset += len(stats)

    # 3. Graft, Shampoo direction, weight decay, momentum.
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    run_shampoo = count >= start_preconditioning_step
    out_updates = []
    out_states = []
    for lay, g, g_in, gb, st, stats, precs, param in zip(layouts, grads_c, grads_flat, blocks, states_flat, new_stats,
                                                         new_precs, params_flat):
      graft, graft_stats = graft_direction(g, st.graft_stats)
      direction = shampoo_direction(lay, gb, graft, precs) if lay.preconditioned else graft
      if weight_decay != 0.0:
        decay = weight_decay * param.astype(compute_dtype)
        direction = direction + decay
        graft = graft + decay
      momentum = beta1 * st.momentum + direction
      graft_momentum = beta1 * st.graft_momentum + graft
      current = jnp.where(run_shampoo, direction, graft)
      velocity = jnp.where(run_shampoo, momentum, graft_momentum)
      step = current + beta1 * velocity if nesterov else velocity
      out_updates.append((-lr * step).astype(g_in.dtype))
      out_states.append(ShampooParamState(stats, precs, graft_stats, momentum, graft_momentum))

    new_state = ShampooState(count=count + 1, param_states=jax.tree.unflatten(treedef, out_states))
    return jax.tree.unflatten(treedef, out_updates), new_state

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------------------------
# Config-driven construction.


OPTIMIZERS = ("shampoo", "adam", "kron")


def check_optimizer_name(name: str) -> str:
  """`name` if it names an optimiser `make_optimizer` builds, else a ValueError naming the choices."""
  if name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name {name!r}: Unknown optimizer; use one of {', '.join(OPTIMIZERS)}")
  return name


def default_optimizer_config() -> ml_collections.ConfigDict:
  """The paper's optimiser (DF A.2): Distributed Shampoo with a 3000-step warmup and cosine decay."""
  c = ml_collections.ConfigDict()
  c.name = "shampoo"  # 'shampoo' | 'adam' | 'kron' (PSGD-Kron from psgdax)
  c.lr_init = 1e-9  # learning rate at step 0 (start of linear warmup)
  c.lr_peak = 1e-4  # learning rate at the end of warmup
  c.lr_end = 1e-6  # learning rate reached by the cosine at total_steps (kept after)
  c.warmup_steps = 3000  # linear warmup length; DF: "helpful for improving the coherence of generated geometry"
  c.total_steps = 15000  # training length; the cosine ends here
  c.beta1 = 0.9  # momentum (Shampoo, Adam b1, Kron b1)
  c.beta2 = 0.9  # Shampoo statistics decay / Adam b2
  c.eps = 1e-6  # Shampoo matrix_epsilon (relative ridge) / Adam eps. DF's "eps = 1e-6" is read as matrix_epsilon
  c.block_size = 128  # Shampoo: max statistics side
  c.exponent_override = 2  # Shampoo: every factor is raised to -1/2 (L^-1/2 G R^-1/2); 0 = -1/(2 rank)
  c.graft_type = "sqrt_n"  # Shampoo: sgd | adagrad | rmsprop | sqrt_n | *_normalized
  c.graft_per_block = True  # Shampoo: graft the norm per block (False: per tensor, as google-research)
  c.nesterov = True  # Shampoo: Nesterov momentum (the reference's default; DF does not say)
  c.weight_decay = 0.0  # coupled L2 for Shampoo, decoupled for Kron; unused by Adam
  c.preconditioning_compute_steps = 1  # Shampoo: recompute inverse roots every N steps (reference default; DF silent)
  c.start_preconditioning_step = 5  # Shampoo: graft-only steps before this (reference default; DF silent)
  c.grad_clip_norm = 0.0  # global-norm clipping before the optimiser; 0 = off
  return c


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Builds the optimiser named by `config.name` with the warmup-cosine schedule (fields: default_optimizer_config).

  Raises:
    ValueError: unknown name, or 'kron' when psgdax is not importable.
  """
  schedule = warmup_cosine_schedule(config.lr_init, config.lr_peak, config.warmup_steps, config.total_steps,
                                    config.lr_end)
  name = check_optimizer_name(config.name)
  weight_decay = config.weight_decay
  if name == "shampoo":
    opt = shampoo(schedule,
                  block_size=config.block_size,
                  beta1=config.beta1,
                  beta2=config.beta2,
                  matrix_epsilon=config.eps,
                  exponent_override=config.exponent_override,
                  graft_type=config.graft_type,
                  start_preconditioning_step=config.start_preconditioning_step,
                  preconditioning_compute_steps=config.preconditioning_compute_steps,
                  nesterov=config.nesterov,
                  weight_decay=weight_decay,
                  graft_per_block=config.graft_per_block)
  elif name == "adam":
    opt = optax.adam(schedule, b1=config.beta1, b2=config.beta2, eps=config.eps)
  else:  # "kron" (check_optimizer_name rejected anything else)
    try:
      import psgdax  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ValueError("optimizer 'kron' is unavailable: the psgdax package (PSGD-Kron) is not installed "
                       "(pip install psgdax==0.1.1).") from e
    opt = psgdax.kron(learning_rate=schedule, b1=config.beta1, weight_decay=weight_decay)
  if config.grad_clip_norm and config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return opt
