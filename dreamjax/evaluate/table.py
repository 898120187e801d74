"""The evaluation's output: a markdown table laid out like DreamFusion's Table 1 (one row per method; per CLIP model
a Color and a Geo column of R@1 in %, mean ± SEM over runs) and the same figures as JSON."""

from __future__ import annotations

import json

from dreamjax.evaluate import retrieval


def cell(s: retrieval.Summary | None) -> str:
  """'75.1 ± 2.3' (percent, one decimal; no ± for a single run); '–' for no figure."""
  if s is None:
    return "–"
  return f"{100 * s.mean:.1f}" + ("" if s.sem is None else f" ± {100 * s.sem:.1f}")


def clip_markdown(models: dict, method: str = "dreamjax", captions: int | None = None) -> str:
  """models: {label: {'color': Summary, 'geo': Summary, ...}} in column order -> Table 1's layout plus a note."""
  labels = list(models)
  head = "| Method | " + " | ".join(f"{l} {k}" for l in labels for k in ("Color", "Geo")) + " |"
  rule = "|---|" + "---|" * (2 * len(labels))
  row = f"| {method} | " + " | ".join(cell(models[l].get(k)) for l in labels for k in ("color", "geo")) + " |"
  first = models[labels[0]]["color"] if labels else None
  note = ""
  if first is not None:
    per_run = first.renders / max(first.runs, 1)
    note = (f"\n\nCLIP R-Precision R@1 (%), mean ± SEM over {first.runs} run(s), {per_run:g} render(s) per run"
            + (f", against {captions} captions" if captions else "") + ".")
  return "\n".join([head, rule, row]) + note


def to_json(document: dict) -> str:
  """The JSON text of an evaluation document (Summaries as dicts)."""
  def default(x):
    if isinstance(x, retrieval.Summary):
      return x.to_json()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
  return json.dumps(document, indent=2, default=default)
