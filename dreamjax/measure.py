"""Measuring compiled JAX functions: FLOPs and memory from XLA's analyses, the device allocator's statistics, and
wall-clock timing of synchronised calls; plus the host facts a benchmark report records."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Sequence

import jax


def flops(compiled) -> float | None:
  """Total FLOPs of a compiled (or lowered) computation from XLA's cost analysis (None when there is none)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def xla_bytes(compiled) -> int | None:
  """XLA's static memory estimate of an executable: arguments + outputs + temporaries - aliased (bytes)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def device_memory(device=None) -> dict | None:
  """{'peak_bytes', 'bytes_in_use'} from the allocator, or None where the backend keeps no statistics (CPU)."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return {"peak_bytes": int(stats["peak_bytes_in_use"]), "bytes_in_use": int(stats.get("bytes_in_use", 0))}


def summary(times_s: Sequence[float], flop_count: float | None, memory_bytes: int | None = None) -> dict:
  """Median / min of call times (seconds) in ms, FLOPs, achieved TFLOP/s at the median, XLA memory estimate."""
  med = statistics.median(times_s)
  return {"median_ms": 1e3 * med, "min_ms": 1e3 * min(times_s), "flops": flop_count,
          "tflops_per_s": (flop_count / med / 1e12) if flop_count and med > 0 else None, "xla_bytes": memory_bytes,
          "times_ms": [1e3 * t for t in times_s]}


def time_jitted(fn: Callable, args: tuple, steps: int, warmup: int, compiler_options: dict | None = None) -> dict:
  """Compiles jit(fn) for `args`, then times `steps` synchronised calls after `warmup` calls."""
  compiled = jax.jit(fn).lower(*args).compile(compiler_options)
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return summary(times, flops(compiled), xla_bytes(compiled))


def versions() -> dict:
  """Versions of Python and the packages a benchmark's figures depend on."""
  import importlib.metadata as md
  out = {"python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "flax", "optax", "diffusers", "transformers", "numpy"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = None
  return out


def cpu_model() -> str:
  """The host CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()
