"""The benchmark report (`dreamjax.bench`) as text: a header with the machine, versions and config, a summary row
per per-device batch, and a table of phases per batch (or the FLOP / XLA-memory tables of --flops_only and
--compile_only)."""

from __future__ import annotations

import math

PHASE_LABELS = {
    "step": "full train step",
    "render": "render + normals, fwd+bwd",
    "encode": "encode (to_latents), fwd+bwd",
    "unet": "UNet fwd, CFG batch",
    "guidance": "guidance: encode+UNet+grad",
    "optimizer": "optimizer update",
}


def _fmt(x, spec: str, none: str = "n/a") -> str:
  return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def gib_text(b) -> str:
  return "n/a" if b is None else f"{b / 2 ** 30:.2f} GiB"


def format_report(report: dict) -> str:
  """The report as text: a header, a summary row per batch, and a phase table per batch."""
  m = report["meta"]
  load = m.get("load_average")
  lines = [
      f"dreamjax.bench  arch={m['arch']} ({m['prior']}, {m['prior_params'] / 1e6:.1f}M params, {m['prior_dtype']})",
      f"device: {m['num_devices']} x {m['device_kind']} ({m['platform']}); host: {m['host_cpu']}, "
      f"{m['host_cores']} cores, load average {_fmt(load[0] if load else None, '.2f')} at start",
      "versions: " + ", ".join(f"{k} {val}" for k, val in m["versions"].items()),
      f"config: render {m['render'][0]}x{m['render'][1]}, coarse {m['num_coarse']} / fine {m['num_fine']}, "
      f"NeRF {m['nerf']}, optimizer {m['optimizer']}, distill {m['distill']} (CFG batch {m['cfg_batch']} per "
      f"camera), prior input {_fmt(m['prior_image_size'], 'd')}², text {tuple(m['text_shape'])}",
      f"attention kernel: {m.get('attention')}; encoder remat: {m.get('remat_encoder')}; render ray chunks: "
      f"{m.get('ray_chunks', 1)}",
  ]
  if m.get("ray_chunks", 1) > 1:
    lines.append("note: XLA's cost analysis counts the body of the ray-chunk loop once, so the render and step FLOPs "
                 "(and TFLOP/s) below leave out the other chunks")
  if m.get("compiler_options"):
    lines.append("compiler options: " + ", ".join(f"{k}={v}" for k, v in m["compiler_options"].items()))
  if m.get("flops_only"):
    lines += ["FLOPs only (XLA cost analysis of the lowered, unoptimised HLO; nothing run), GFLOP per device per "
              "call" + ("; XLA static memory estimates of the compiled functions (this host's backend)" if
                        m.get("compile_only") else "") + ":", ""]
    names = list(report["results"][0]["phases"]) if report["results"] else []
    lines.append(f"  {'phase':<32}" + "".join(f" {'batch ' + str(r['batch_per_device']):>10}"
                                             for r in report["results"]))
    for name in names:
      lines.append(f"  {PHASE_LABELS.get(name, name):<32}" + "".join(
          f" {_fmt(None if r['phases'][name]['flops'] is None else r['phases'][name]['flops'] / 1e9, '.1f'):>10}"
          for r in report["results"]))
    if m.get("compile_only"):
      lines += ["", f"  {'XLA estimate (GiB)':<32}"]
      gib = lambda b: None if b is None else b / 2 ** 30
      for name in names:
        lines.append(f"  {PHASE_LABELS.get(name, name):<32}" + "".join(
            f" {_fmt(gib(r['phases'][name].get('xla_bytes')), '.2f'):>10}" for r in report["results"]))
    return "\n".join(lines)
  lines += [
      f"timing: median / min over {m['steps']} steps after {m['warmup']} warmup; FLOPs from XLA cost analysis "
      "(per device)",
      "",
      f"{'batch/dev':>9} {'devices':>7} {'it/s':>9} {'images/s':>9} {'step ms':>9} {'TFLOP/s':>8} "
      f"{'peak mem':>10} {'XLA est.':>10} {'compile s':>9}",
  ]
  for r in report["results"]:
    s = r["phases"]["step"]
    lines.append(f"{r['batch_per_device']:>9} {r['devices']:>7} {r['it_per_s']:>9.3f} {r['images_per_s']:>9.3f} "
                 f"{s['median_ms']:>9.2f} {_fmt(s['tflops_per_s'], '.3f'):>8} {gib_text(r['peak_bytes']):>10} "
                 f"{gib_text(s['xla_bytes']):>10} {r['compile_s']:>9.1f}")
  for r in report["results"]:
    if r.get("gradient_shares"):
      g = r["gradient_shares"]
      lines.append(f"gradient shares at step {g['step']}, batch {r['batch_per_device']} (each weighted loss term's "
                   "gradient norm on the scene / their sum): " + ", ".join(
                       f"{k} {100 * v:.2f}%" for k, v in g.items() if k != "step"))
  for r in report["results"]:
    lines += ["", f"per-device batch {r['batch_per_device']}:",
              f"  {'phase':<32} {'median ms':>10} {'min ms':>10} {'GFLOP':>10} {'TFLOP/s':>8}"]
    for name, p in r["phases"].items():
      gflop = None if p["flops"] is None else p["flops"] / 1e9
      lines.append(f"  {PHASE_LABELS.get(name, name):<32} {p['median_ms']:>10.2f} {p['min_ms']:>10.2f} "
                   f"{_fmt(gflop, '.4g'):>10} {_fmt(p['tflops_per_s'], '.4g'):>8}")
    parts = [r["phases"][k]["median_ms"] for k in ("render", "guidance", "optimizer") if k in r["phases"]]
    if len(parts) == 3:
      lines.append(f"  {'step - (render+guidance+optim.)':<32} "
                   f"{r['phases']['step']['median_ms'] - sum(parts):>10.2f}")
  return "\n".join(lines)
