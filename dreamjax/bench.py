"""`python -m dreamjax.bench`: speed and memory of the real DreamFusion train step, whole and phase by phase.

  python -m dreamjax.bench --config configs/dreamfusion.py --arch sd15 --batch 1,2,4,8 --steps 20 --warmup 3
  python -m dreamjax.bench --config configs/tiny.py --arch config --steps 5 --warmup 2   # CPU / CI
  python -m dreamjax.bench --config configs/dreamfusion.py --arch sd21 --dtype bfloat16 --json sd21.json

--arch sd15 | sd21 builds the Stable Diffusion 1.5 / 2.1-base UNet and VAE from their architectures with random
weights (nothing is downloaded) and feeds random text embeddings [N, 77, 768] / [N, 77, 1024] instead of running CLIP;
--arch config uses the prior the config names (configs/tiny.py: the tiny SD fixture). Any config field can be
overridden (`--config.render.num_fine=64`).

Per per-device batch B (each device renders B cameras, as in training) it reports:
  * the whole compiled step (`train_step.make_train_step`, jit(shard_map), state donated): median and min ms over
    --steps timed calls after --warmup calls, each synchronised with `jax.block_until_ready`; it/s = 1000 / median ms
    and images/s = global batch × it/s; compile seconds;
  * each phase as its own jitted function on the step's shapes, vmapped over the B cameras like the step:
      render     camera/light draw + render + normals, forward and backward to the NeRF (the prior replaced by the
                 identity, so the cotangent is the SDS gradient of the image itself),
      encode     prior.to_latents forward + vjp at the render's input (SD: bilinear resize to 512², VAE encoder),
      unet       prior.predict_eps on the CFG batch (2 per camera; 3 for NFSD), no gradient,
      guidance   the prior side of the step: encode + noise + UNet + distillation rule + vjp to the image,
      optimizer  tx.update + apply_updates on the scene parameters;
  * FLOPs of each compiled function from XLA's cost analysis (per device; library custom calls such as the eigh of
    Shampoo's inverse roots may count as zero) and achieved TFLOP/s = FLOPs / median time;
  * memory: the device allocator's peak (`device.memory_stats()['peak_bytes_in_use']`, the process's peak so far:
    batches run in ascending order) where the backend reports it (GPU/TPU; "n/a" on CPU), and XLA's static estimate
    for the compiled step (arguments + outputs + temporaries - aliased).

--flops_only counts FLOPs from the lowered (unoptimised) HLO with abstract weights instead: nothing is compiled,
allocated or run, so SD-size FLOP counts come from any host. --compile_only also compiles (still abstract
weights, nothing run) and adds XLA's static memory estimate and the optimised HLO's FLOPs for this host's backend.
--xla_option KEY=VALUE passes compiler options to every compiled function (levers such as XLA GPU flags; the CI
test uses it to compile faster). Speed and memory levers are config fields: --config.prior.attention,
--config.render.ray_chunks, --config.prior.remat_encoder.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dreamjax import cameras as cam_lib
from dreamjax import cli
from dreamjax import config_check
from dreamjax import distill
from dreamjax import measure
from dreamjax import objective
from dreamjax import train_state as ts_lib
from dreamjax import train_step as step_lib
from dreamjax import workdir as workdir_lib
from dreamjax.bench_report import PHASE_LABELS, format_report, gib_text
from dreamjax.priors import sd_architectures
from dreamjax.priors.base import TextEmbeddings

PyTree = Any

ARCHS = tuple(sd_architectures.ARCHITECTURES) + ("config",)
PHASES = ("render", "encode", "unet", "guidance", "optimizer")
assert set(PHASES) | {"step"} == set(PHASE_LABELS)


def phase_functions(config: ml_collections.ConfigDict, prior, tx: optax.GradientTransformation) -> dict:
  """The step's phases as pure functions (jit them), built on the step's own halves (`objective.render_view`,
  `objective.prior_loss`); per-camera inputs have a leading axis B (cameras).

    render(params, keys [B, 2], step)                    -> (loss, grads)
    encode(prior_params, images [B, 1, H, W, 3], keys, ct [B, 1, h, w, c]) -> (z, d images)
    unet(prior_params, z_t [B, n, h, w, c], t [B, n], emb [B, n, L, D]) -> eps
    guidance(prior_params, text, images [B, 1, H, W, 3], keys) -> d loss / d images
    optimizer(grads, opt_state, params)                  -> (params, opt_state)

  render: a random view of each camera, its render with normals and the weighted regularisers, differentiated to
  the scene parameters through the cotangent of 0.5 |image|^2 (the prior replaced by the identity).
  """
  s = objective.StepSettings.from_config(config)

  def render(params, keys, step):
    def camera(p, key):
      k_view, k_render = jax.random.split(key)
      view = cam_lib.sample_view(s.view, k_view, step, s.scene.width)
      out = objective.render_view(s.scene, p, view, k_render, step)
      return (0.5 * jnp.sum(jnp.square(out["rgb"])) + s.loss.orient(step) * s.loss.over_rays(out["loss_orient"])
              + s.loss.opacity * s.loss.over_rays(out["loss_opacity"]))
    return jax.value_and_grad(lambda p: jnp.mean(jax.vmap(lambda k: camera(p, k))(keys)))(params)

  def encode(prior_params, images, keys, ct):
    def one(x, k, c):
      z, vjp = jax.vjp(lambda img: prior.to_latents(prior_params, img, k), x)
      return z, vjp(c)[0]
    return jax.vmap(one)(images, keys, ct)

  def unet(prior_params, z_t, t, emb):
    return jax.vmap(lambda z, tt, e: prior.predict_eps(prior_params, z, tt, e))(z_t, t, emb)

  def guidance(prior_params, text, images, keys):
    def one(x, k):
      k_lat, k_dist, k_view = jax.random.split(k, 3)
      view = cam_lib.sample_view(s.view, k_view, s.view.shading.albedo_only_steps, s.scene.width)
      cond = prior.condition(text, view)  # the prompt of the view's label, as in the step
      loss = lambda img: objective.prior_loss(prior, prior_params, s.rule, img, cond, text, latent_rng=k_lat,
                                              distill_rng=k_dist)[0]
      return jax.grad(loss)(x)
    return jax.vmap(one)(images, keys)

  def optimizer(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return {"render": render, "encode": encode, "unet": unet, "guidance": guidance, "optimizer": optimizer}


# ------------------------------------------------------------------------------------------------ the benchmark


def build(config: ml_collections.ConfigDict, arch: str, dtype: str = "auto", seed: int = 0,
          use_memory_efficient_attention: bool = False, abstract: bool = False):
  """(prior, text) for `arch`: a random-weight SD architecture with random text (abstract: parameters as
  ShapeDtypeStructs), or the config's prior with `train_step.text_embeddings`. dtype 'auto' is float16 on GPU,
  bfloat16 on TPU and float32 on CPU (or the config's prior.dtype for arch 'config')."""
  from dreamjax.priors.load import load_prior, resolve_dtype, sd_options
  from dreamjax.priors.stable_diffusion import StableDiffusion
  if arch not in ARCHS:
    raise ValueError(f"--arch {arch!r} is unknown; use one of {', '.join(ARCHS)}")
  if arch == "config":
    if dtype != "auto":
      config.prior.dtype = dtype
    prior = load_prior(config)
    return prior, step_lib.text_embeddings(prior, config)
  prior = StableDiffusion.from_architecture(arch, resolve_dtype(dtype), seed, abstract,
                                            use_memory_efficient_attention, **sd_options(config))
  rule = distill.Rule.from_config(config.distill)
  return prior, sd_architectures.random_text_embeddings(arch, rule.needs_negative, seed)


def _batch_config(config: ml_collections.ConfigDict, batch: int, num_devices: int) -> ml_collections.ConfigDict:
  """The config with `batch` cameras per device on `num_devices` (render.batch is the global batch)."""
  config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  config.render.batch = batch * num_devices
  config.train.disable_jit = False
  return config


def _phase_args(name: str, config: ml_collections.ConfigDict, prior, text: TextEmbeddings, state, prior_params,
                batch: int, put: Callable = lambda x: x) -> tuple:
  """Inputs of phase `name` at per-device batch `batch` (see `phase_functions`); `state` and `prior_params` may be
  abstract (jax.ShapeDtypeStruct trees); small random inputs are made here and placed with `put`."""
  h, w = config.render.height, config.render.width
  keys = put(jax.random.split(jax.random.PRNGKey(1), batch))
  images = put(jax.random.uniform(jax.random.PRNGKey(2), (batch, 1, h, w, 3)))
  z_shape = jax.eval_shape(prior.to_latents, prior_params, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32),
                           jax.random.PRNGKey(0)).shape
  rule = distill.Rule.from_config(config.distill)
  n = rule.cfg_batch
  if name == "render":
    return (state.params, keys, jnp.int32(config.shading.albedo_only_steps))
  if name == "encode":
    return (prior_params, images, keys, put(jax.random.normal(jax.random.PRNGKey(3), (batch,) + z_shape)))
  if name == "unet":
    z_t = jax.random.normal(jax.random.PRNGKey(4), (batch, n) + z_shape[1:])
    t = jax.random.randint(jax.random.PRNGKey(5), (batch, n), 20, 981)
    embs = [text.views[0], text.uncond[0]] + ([text.neg[0]] if rule.needs_negative else [])
    emb = jnp.broadcast_to(jnp.stack(embs), (batch, n) + tuple(text.views.shape[1:]))
    return (prior_params, put(z_t), put(t), put(emb))
  if name == "guidance":
    return (prior_params, text, images, keys)
  if name == "optimizer":
    params = state.params
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(params)):
      grads = params
    else:
      grads = jax.tree_util.tree_map(lambda p: 1e-3 * jnp.ones_like(p) + 1e-2 * p, params)
    return (grads, state.opt_state, params)
  raise ValueError(f"unknown phase {name!r}; use {', '.join(PHASES)}")


def benchmark_batch(config: ml_collections.ConfigDict, prior, text: TextEmbeddings, batch: int, *, steps: int,
                    warmup: int, num_devices: int = 1, phases: Sequence[str] = PHASES,
                    compiler_options: dict | None = None,
                    log: Callable[[str], None] = print) -> dict:
  """Times the compiled step (and `phases`) at per-device batch `batch` on `num_devices` devices. Returns a dict
  with it_per_s, images_per_s, compile_s, memory and per-phase {median_ms, min_ms, flops, tflops_per_s, ...}."""
  mesh = step_lib.make_mesh(num_devices)
  config = _batch_config(config, batch, mesh.devices.size)
  n_dev = mesh.devices.size
  put = lambda x: step_lib.replicate(x, mesh)
  tx = ts_lib.make_optimizer(config)
  state = put(ts_lib.create(config, tx))
  prior_params = put(prior.params)
  text = put(text)

  step_fn = step_lib.make_train_step(config, prior, tx, mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, prior_params, text).compile(compiler_options)
  compile_s = time.perf_counter() - t0
  log(f"  batch {batch}: step compiled in {compile_s:.1f} s")
  for _ in range(warmup):
    state, metrics = compiled(state, prior_params, text)
    jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, prior_params, text)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  mem = measure.device_memory(jax.local_devices()[0])
  result = {"batch_per_device": batch, "devices": n_dev, "global_batch": batch * n_dev, "compile_s": compile_s,
            "phases": {"step": measure.summary(times, measure.flops(compiled), measure.xla_bytes(compiled))},
            "peak_bytes": mem["peak_bytes"] if mem else None,
            "loss_finite": bool(np.isfinite(float(jax.device_get(metrics["loss"]))))}
  shares = step_lib.host_metrics(step_lib.make_gradient_shares(config, prior, mesh)(state, prior_params, text))
  result["gradient_shares"] = {"step": int(jax.device_get(state.step)),
                               **{k.split("/", 1)[1]: v for k, v in shares.items() if k.startswith("grad_share/")}}
  del compiled
  med = result["phases"]["step"]["median_ms"] / 1e3
  result["it_per_s"] = 1.0 / med
  result["images_per_s"] = batch * n_dev / med
  log(f"  batch {batch}: step median {1e3 * med:.2f} ms ({result['it_per_s']:.3g} it/s)")

  fns = phase_functions(config, prior, tx)
  for name in (p for p in phases if p != "step"):  # the step itself was timed above
    args = _phase_args(name, config, prior, text, state, prior_params, batch, put)
    result["phases"][name] = measure.time_jitted(fns[name], args, steps, warmup, compiler_options)
    log(f"  batch {batch}: {name} median {result['phases'][name]['median_ms']:.2f} ms")
  return result


def count_flops(config: ml_collections.ConfigDict, prior, text: TextEmbeddings, batch: int, *, num_devices: int = 1,
                phases: Sequence[str] = PHASES, compile: bool = False, compiler_options: dict | None = None,
                log: Callable[[str], None] = lambda s: None) -> dict:
  """FLOPs of the step and each phase from XLA's cost analysis of the *lowered* (unoptimised) HLO, with abstract
  inputs: nothing is allocated or run, so it works for SD-size priors on any host (use
  `StableDiffusion.from_architecture(..., abstract=True)`). compile=True also compiles each function for this
  host's backend and adds 'xla_bytes' (static memory estimate), 'compiled_flops' and 'compile_s'.
  Returns {'batch_per_device', 'phases': {name: {'flops', ...}}}."""
  mesh = step_lib.make_mesh(num_devices)
  config = _batch_config(config, batch, mesh.devices.size)
  tx = ts_lib.make_optimizer(config)
  state = jax.eval_shape(lambda: ts_lib.create(config, tx))

  def analyse(name, lowered):
    out = {"flops": measure.flops(lowered)}
    if compile:
      t0 = time.perf_counter()
      compiled = lowered.compile(compiler_options)
      out.update(compile_s=time.perf_counter() - t0, xla_bytes=measure.xla_bytes(compiled),
                 compiled_flops=measure.flops(compiled))
      log(f"  batch {batch}: {name} compiled in {out['compile_s']:.1f} s, XLA estimate {gib_text(out['xla_bytes'])}")
    return out

  out = {"batch_per_device": batch, "devices": mesh.devices.size, "global_batch": batch * mesh.devices.size,
         "phases": {}}
  if "step" in phases or not compile:
    out["phases"]["step"] = analyse("step", step_lib.make_train_step(config, prior, tx, mesh).lower(
        state, prior.params, text))
  fns = phase_functions(config, prior, tx)
  for name in phases:
    if name == "step":
      continue
    args = _phase_args(name, config, prior, text, state, prior.params, batch)
    out["phases"][name] = analyse(name, jax.jit(fns[name]).lower(*args))
  return out


def run_benchmark(config: ml_collections.ConfigDict, *, arch: str = "config", steps: int = 20, warmup: int = 3,
                  batches: Sequence[int] = (1,), dtype: str = "auto", num_devices: int = 1,
                  phases: Sequence[str] = PHASES, use_memory_efficient_attention: bool = False,
                  compiler_options: dict | None = None, flops_only: bool = False, compile_only: bool = False,
                  log: Callable[[str], None] = print) -> dict:
  """Runs the benchmark; returns the report {'meta': ..., 'results': [one dict per batch]} (`format_report` prints
  it). flops_only: no timing, only `count_flops` (abstract SD weights: nothing allocated); compile_only: the same
  plus compilation (XLA memory estimates; phase 'step' in `phases` selects the whole step, else phases only)."""
  if steps < 1 or warmup < 0:
    raise ValueError(f"--steps must be >= 1 and --warmup >= 0 (got {steps}, {warmup})")
  if not batches or min(batches) < 1:
    raise ValueError(f"--batch must list per-device batch sizes >= 1 (got {list(batches)})")
  t0 = time.perf_counter()
  flops_only = flops_only or compile_only
  prior, text = build(config, arch, dtype, config.seed, use_memory_efficient_attention, abstract=flops_only)
  build_s = time.perf_counter() - t0
  dev = jax.local_devices()[0]
  prior_dtype = str(jnp.dtype(getattr(prior, "dtype", jnp.float32)))
  report = {
      "meta": {
          "arch": arch, "prior": getattr(prior, "source", type(prior).__name__), "prior_dtype": prior_dtype,
          "prior_params": sd_architectures.param_count(prior.params),
          "prior_image_size": getattr(prior, "image_size", None),
          "text_shape": list(text.views.shape),
          "cfg_batch": distill.Rule.from_config(config.distill).cfg_batch,
          "render": [config.render.height, config.render.width], "num_coarse": config.render.num_coarse,
          "num_fine": config.render.num_fine, "nerf": f"{config.nerf.width} x {config.nerf.num_blocks} blocks",
          "optimizer": config.optim.name, "distill": config.distill.name, "steps": steps, "warmup": warmup,
          "flops_only": flops_only, "compile_only": compile_only, "compiler_options": compiler_options or {},
          "platform": dev.platform, "device_kind": dev.device_kind, "num_devices": num_devices,
          "host_cpu": measure.cpu_model(), "host_cores": os.cpu_count(), "versions": measure.versions(),
          "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
          "build_s": build_s, "memory_efficient_attention": use_memory_efficient_attention,
          "attention": getattr(prior, "attention", None), "remat_encoder": getattr(prior, "remat_encoder", None),
          "ray_chunks": int(config.render.ray_chunks),
          "command": "",
      },
      "results": [],
  }
  log(f"bench: {arch} prior ({report['meta']['prior']}, {prior_dtype}, "
      f"{report['meta']['prior_params'] / 1e6:.1f}M params, attention {report['meta']['attention']}, "
      f"remat_encoder {report['meta']['remat_encoder']}) built in {build_s:.1f} s on {dev.device_kind}")
  for b in sorted(set(batches)):
    if flops_only:
      report["results"].append(count_flops(config, prior, text, b, num_devices=num_devices, phases=phases,
                                           compile=compile_only, compiler_options=compiler_options, log=log))
      if "step" in report["results"][-1]["phases"]:
        log(f"  batch {b}: step {report['results'][-1]['phases']['step']['flops'] / 1e12:.3f} TFLOP")
    else:
      report["results"].append(benchmark_batch(config, prior, text, b, steps=steps, warmup=warmup,
                                               num_devices=num_devices, phases=phases,
                                               compiler_options=compiler_options, log=log))
  return report


# ------------------------------------------------------------------------------------------------ CLI


def _parse_batches(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--batch must be comma-separated integers such as 1,2,4,8 (got {text!r})") from None


def _parse_options(items: Sequence[str]) -> dict | None:
  """['key=value', ...] -> {key: value} with true/false/ints/floats converted."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--xla_option must be KEY=VALUE (got {item!r})")
    low = value.lower()
    if low in ("true", "false"):
      out[key] = low == "true"
    else:
      try:
        out[key] = int(value)
      except ValueError:
        try:
          out[key] = float(value)
        except ValueError:
          out[key] = value
  return out or None


def main(argv: Sequence[str]) -> dict:
  """Parses `argv` (argv[0] is the program name), runs, prints the table, writes --json. Returns the report."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  cli.make_config_package_importable(cli.config_file_argument(argv) or "configs/dreamfusion.py")
  problem = cli.check_config_file(argv, "configs/dreamfusion.py")
  if problem:
    raise ValueError(problem)
  try:  # with sys_argv, the overrides are parsed here
    config_flags.DEFINE_config_file("config", "configs/dreamfusion.py", "Config file; fields can be overridden "
                                    "(--config.render.num_fine=64).", flag_values=fv, sys_argv=list(argv))
  except Exception as e:  # pylint: disable=broad-except  (flag parsing runs the config file)
    raise ValueError(cli.flag_error_line(e, argv)) from None
  flags.DEFINE_enum("arch", "sd15", list(ARCHS), "sd15 / sd21: random-weight Stable Diffusion 1.5 / 2.1-base "
                    "architecture; config: the prior the config names.", flag_values=fv)
  flags.DEFINE_integer("steps", 20, "Timed steps (after warmup) per measurement.", flag_values=fv)
  flags.DEFINE_integer("warmup", 3, "Untimed calls before timing (after compilation).", flag_values=fv)
  flags.DEFINE_string("batch", "1", "Per-device batch sizes to sweep, e.g. 1,2,4,8.", flag_values=fv)
  flags.DEFINE_string("dtype", "auto", "Frozen-network dtype: auto (fp16 on GPU, bf16 on TPU, f32 on CPU), bfloat16, "
                      "float32, float16.", flag_values=fv)
  flags.DEFINE_integer("devices", 1, "Devices in the data-parallel mesh.", flag_values=fv)
  flags.DEFINE_string("phases", ",".join(PHASES), "Phases to time besides the whole step ('' = none).",
                      flag_values=fv)
  flags.DEFINE_bool("memory_efficient_attention", False, "sd15/sd21: the Flax UNet's memory-efficient attention.",
                    flag_values=fv)
  flags.DEFINE_bool("flops_only", False, "Only count FLOPs (lowered HLO, abstract SD weights): no compile, no run; "
                    "works for sd15/sd21 on any host.", flag_values=fv)
  flags.DEFINE_bool("compile_only", False, "Like --flops_only, and also compile each function (abstract weights, "
                    "nothing run): adds XLA's static memory estimate. Add 'step' to --phases for the whole step.",
                    flag_values=fv)
  flags.DEFINE_multi_string("xla_option", [], "KEY=VALUE compiler option for every compiled function (repeatable), "
                            "e.g. xla_gpu_enable_latency_hiding_scheduler=true.", flag_values=fv)
  flags.DEFINE_string("json", None, "Write the report (all numbers, every step time) to this JSON file.",
                      flag_values=fv)
  if "--help" in argv or "-h" in argv:
    print(__doc__ + "\nFlags:\n" + fv.get_help())
    return {}
  try:
    fv(list(argv))
    config = cli.resolve_overrides(fv.config, config_flags.get_override_values(fv["config"]))
  except Exception as e:  # pylint: disable=broad-except  (flag parsing runs the config file)
    raise ValueError(cli.flag_error_line(e, argv)) from None
  config_check.check(config, require_prompt=False)
  for name, low in (("steps", 1), ("warmup", 0), ("devices", 1)):
    if fv[name].value < low:
      raise ValueError(f"--{name} must be >= {low} (got {fv[name].value})")
  if fv.json:
    workdir_lib.check_output_file(fv.json, "--json")
  phases = [p for p in fv.phases.split(",") if p.strip()]
  unknown = sorted(set(phases) - set(PHASES) - {"step"})
  if unknown:
    raise ValueError(f"--phases {','.join(unknown)} unknown; use a subset of {','.join(PHASES)}")
  report = run_benchmark(config, arch=fv.arch, steps=fv.steps, warmup=fv.warmup,
                         batches=_parse_batches(fv.batch), dtype=fv.dtype, num_devices=fv.devices, phases=phases,
                         use_memory_efficient_attention=fv.memory_efficient_attention,
                         compiler_options=_parse_options(fv.xla_option), flops_only=fv.flops_only,
                         compile_only=fv.compile_only,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
  report["meta"]["command"] = "python -m dreamjax.bench " + shlex.join(list(argv[1:]))
  print(format_report(report), flush=True)
  if fv.json:
    with open(fv.json, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  from absl import flags as _flags
  from dreamjax.priors.weights import WeightsError
  try:
    main(sys.argv)
  except (_flags.Error, ValueError, WeightsError, workdir_lib.WorkdirError) as e:
    print(f"bench: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
