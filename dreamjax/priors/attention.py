"""Attention kernels for diffusers' Flax UNet and VAE: swap their einsum + softmax for `jax.nn.dot_product_attention`.

diffusers' `FlaxAttention` (UNet transformer blocks) and `FlaxAttentionBlock` (VAE mid-block) write attention as two
einsums around a softmax, which materialises the [B, heads, T, S] score matrix: at SD's 64x64 latents T = S = 4096,
so 8 heads x 2 (CFG) x 4096^2 scores per self-attention layer. `jax.nn.dot_product_attention` computes the same
function with either XLA's reference lowering (scores in float32) or cuDNN's fused flash-attention kernel, which never
stores the score matrix.

Modes (`prior.attention`):
  stock   diffusers' own code, untouched;
  xla     `jax.nn.dot_product_attention(implementation="xla")` everywhere: the same maths with scores and softmax in
          float32 (more accurate in bf16, and more memory: +1.85 GiB of XLA's estimate for SD 1.5's CFG UNet call,
          measured on a CPU with `python -m dreamjax.bench --compile_only`);
  cudnn   cuDNN flash attention in the layers whose shapes cuDNN takes (NVIDIA GPU of compute capability >= 8.0,
          bf16/f16, head dim a multiple of 8 and <= 128, or <= 256 from Hopper on); diffusers' own code in the others
          (e.g. the VAE's single 512-wide head);
  auto    'cudnn' where some UNet layer fits and a probe call compiles and runs there, else 'stock'.

The swap works by Flax method interception (`flax.linen.intercept_methods`) around the apply call, so the modules,
their parameter trees and the weight loading stay diffusers' own. Use as

  with attention_kernels("cudnn"):
    out = unet.apply(...)

inside the traced function (the mode must be part of the jit cache key: pass it as a static argument).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ("stock", "xla", "cudnn", "auto")

log = logging.getLogger(__name__)


def _dpa(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, scale: float, implementation: str) -> jnp.ndarray:
  """Attention of q [B, T, N, H] over k, v [B, S, N, H] -> [B, T, N, H] ('xla' or 'cudnn')."""
  return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=implementation)


def cudnn_fits(dtype, head_dim: int) -> bool:
  """Whether cuDNN's flash attention takes this dtype and head dim on the default GPU (False off NVIDIA GPUs)."""
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) or head_dim % 8:
    return False
  cc = _compute_capability()
  if cc is None or cc < (8, 0):
    return False
  return head_dim <= (256 if cc >= (9, 0) else 128)


@functools.lru_cache(maxsize=None)
def _compute_capability() -> tuple[int, int] | None:
  if jax.default_backend() != "gpu":
    return None
  cc = getattr(jax.devices()[0], "compute_capability", None)
  try:
    return tuple(int(x) for x in str(cc).split(".")[:2])  # type: ignore[return-value]
  except ValueError:
    return None


def _unet_attention(module, hidden_states, context=None, deterministic=True, *, mode: str):
  """`FlaxAttention.__call__` with the kernel swapped: hidden [B, T, C], context [B, S, Cc] -> [B, T, C]."""
  context = hidden_states if context is None else context
  b = hidden_states.shape[0]
  q = module.query(hidden_states).reshape(b, -1, module.heads, module.dim_head)
  k = module.key(context).reshape(b, -1, module.heads, module.dim_head)
  v = module.value(context).reshape(b, -1, module.heads, module.dim_head)
  out = _dpa(q, k, v, module.dim_head ** -0.5, mode).astype(q.dtype)
  out = module.proj_attn(out.reshape(b, -1, module.heads * module.dim_head))
  return module.dropout_layer(out, deterministic=deterministic)


def _vae_attention(module, hidden_states, *, mode: str):
  """`FlaxAttentionBlock.__call__` (GroupNorm, self-attention, residual) with the kernel swapped: [B, H, W, C]."""
  b, h, w, c = hidden_states.shape
  x = module.group_norm(hidden_states).reshape(b, h * w, c)
  heads = module.num_heads
  split = lambda y: y.reshape(b, h * w, heads, c // heads)
  q, k, v = split(module.query(x)), split(module.key(x)), split(module.value(x))
  out = _dpa(q, k, v, (c // heads) ** -0.5, mode).astype(q.dtype).reshape(b, h * w, c)
  return module.proj_attn(out).reshape(b, h, w, c) + hidden_states


def _interceptor(mode: str):
  from diffusers.models.attention_flax import FlaxAttention
  from diffusers.models.vae_flax import FlaxAttentionBlock

  def swapped(module, head_dim: int) -> bool:
    return mode == "xla" or cudnn_fits(module.dtype, head_dim)

  def intercept(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == "__call__":
      if isinstance(m, FlaxAttention) and not m.use_memory_efficient_attention and swapped(m, m.dim_head):
        return _unet_attention(m, *args, **kwargs, mode=mode)
      if isinstance(m, FlaxAttentionBlock) and swapped(m, m.channels // m.num_heads):
        return _vae_attention(m, *args, **kwargs, mode=mode)
    return next_fun(*args, **kwargs)

  return intercept


@contextlib.contextmanager
def attention_kernels(mode: str) -> Iterator[None]:
  """Within the block, diffusers' Flax attention modules use `mode` ('stock' leaves them alone). Resolve 'auto' first
  (`resolve`); this function takes 'stock', 'xla' or 'cudnn'."""
  if mode not in ("stock", "xla", "cudnn"):
    raise ValueError(f"attention mode {mode!r} must be resolved to one of stock, xla, cudnn (see resolve)")
  if mode == "stock":
    yield
    return
  with nn.intercept_methods(_interceptor(mode)):
    yield


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"prior.attention {mode!r} is unknown; use one of {', '.join(MODES)}")
  return mode


def resolve(mode: str, dtype, head_dims: tuple[int, ...] = ()) -> str:
  """'auto' -> 'cudnn' where an NVIDIA GPU (cc >= 8.0) takes `dtype` and one of `head_dims` and a probe call compiles
  and runs there, else 'stock'. Other modes are returned as they are (after checking the name)."""
  check_mode(mode)
  if mode != "auto":
    return mode
  fitting = [d for d in head_dims if cudnn_fits(dtype, d)]
  if not fitting:
    return "stock"
  try:
    _probe_cudnn(jnp.dtype(dtype).name, tuple(fitting))
  except Exception as e:  # noqa: BLE001 -- any failure of the probe means: do not use cuDNN attention
    log.warning("cuDNN attention failed a probe call (%s); using diffusers' attention.",
                str(e).splitlines()[0][:200])
    return "stock"
  return "cudnn"


@functools.lru_cache(maxsize=None)
def _probe_cudnn(dtype_name: str, head_dims: tuple[int, ...]) -> None:
  """`probe_kernel` with cuDNN, once per process and shape set."""
  probe_kernel(dtype_name, head_dims, "cudnn")


def probe_kernel(dtype_name: str, head_dims: tuple[int, ...], implementation: str) -> None:
  """Compiles and runs `implementation`'s attention once per head dim on small inputs shaped like SD's and wrapped
  like the train step's (jit of shard_map over a 1-device mesh, vmap over cameras): self-attention with its gradient
  (T = S = 128) and cross-attention over 77 text tokens. Raises on any failure."""
  from jax.sharding import PartitionSpec as P
  mesh = jax.make_mesh((1,), ("probe",), devices=jax.devices()[:1])
  for d in head_dims:
    q = jnp.ones((2, 2, 128, 2, d), dtype_name)  # [cameras, batch, tokens, heads, head dim]
    text = jnp.ones((2, 2, 77, 2, d), dtype_name)

    def per_device(q, text):
      attend = lambda q, kv: jax.nn.dot_product_attention(q, kv, kv, implementation=implementation)
      self_loss = lambda q: jax.vmap(attend)(q, q).astype(jnp.float32).sum()
      return jax.grad(self_loss)(q), jax.vmap(attend)(q, text)

    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()), check_vma=False)
    jax.block_until_ready(jax.jit(fn)(q, text))


def unet_head_dims(unet) -> tuple[int, ...]:
  """Head dims of a diffusers Flax UNet's attention layers (channels / heads per block, as the module computes)."""
  heads = unet.num_attention_heads or unet.attention_head_dim
  channels = tuple(unet.block_out_channels)
  heads = (heads,) * len(channels) if isinstance(heads, int) else tuple(heads)
  return tuple(sorted({c // h for c, h in zip(channels, heads)}))
