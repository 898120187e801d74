"""The toy models' weight files (the toy prior and the toy classifier): one reader and one writer.

A model is two files in one folder: `<name>.msgpack` (flax.serialization of the float32 parameter tree) and
`<name>.json` (architecture, training summary). The shipped ones live in `WEIGHTS_DIR`, inside the package. Writers
never replace existing weights unless asked (`overwrite=True`, the trainers' `--overwrite`), and write atomically.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
from flax import serialization

from dreamjax import files
from dreamjax.priors.weights import WeightsError, brief_error

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"


def weights_file(path: str | pathlib.Path | None, name: str) -> pathlib.Path:
  """The .msgpack of model `name` at `path`: a folder holding `<name>.msgpack`, or the .msgpack itself; None = the
  shipped weights."""
  p = WEIGHTS_DIR if path is None else pathlib.Path(path).expanduser()
  return p / f"{name}.msgpack" if p.is_dir() or p.suffix != ".msgpack" else p


def read(path: str | pathlib.Path | None, name: str, *, what: str, retrain: str) -> tuple[dict, dict]:
  """(parameter tree, meta) of model `name` (see `weights_file`). Raises WeightsError (one line; `retrain` is the
  command that makes the weights) when they are missing or unreadable."""
  f = weights_file(path, name)
  if not f.exists():
    raise WeightsError(f"{what} {str(f)!r} are missing; train them with `{retrain} --out {f.parent}`")
  try:
    tree = serialization.msgpack_restore(f.read_bytes())
    meta_file = f.with_suffix(".json")
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
  except Exception as e:  # msgpack and JSON raise many types for damaged files
    raise WeightsError(f"cannot read {what} {str(f)!r} ({brief_error(e)}); retrain them") from e
  return tree, meta


def check_writable(out_dir: str | pathlib.Path, name: str, *, overwrite: bool, flag: str = "--out") -> pathlib.Path:
  """The folder `out_dir` if model `name` may be written there: refused (ValueError, one line) when it already
  holds `<name>.msgpack` or `<name>.json` and `overwrite` is off, or when it is a file. Call before any work."""
  out = pathlib.Path(out_dir).expanduser()
  if out.exists() and not out.is_dir():
    raise ValueError(f"{flag} {str(out)!r} is a file, not a folder; pass a folder for the weights")
  existing = [p.name for p in (out / f"{name}.msgpack", out / f"{name}.json") if p.exists()]
  if existing and not overwrite:
    shipped = " (the weights shipped in the package)" if out.resolve() == WEIGHTS_DIR.resolve() else ""
    raise ValueError(f"{flag} {str(out)!r} already holds {', '.join(existing)}{shipped}; pass another {flag} "
                     f"folder, or --overwrite to replace them")
  return out


def define_out_flags(name: str) -> None:
  """The trainers' --out (default: the shipped weights folder) and --overwrite flags for model `name`."""
  from absl import flags
  flags.DEFINE_string("out", str(WEIGHTS_DIR), f"Folder for {name}.msgpack/.json.")
  flags.DEFINE_bool("overwrite", False, "Replace weights already in --out (the default --out holds the shipped ones).")


def write(out_dir: str | pathlib.Path, name: str, params: Any, meta: dict) -> pathlib.Path:
  """Writes `<name>.msgpack` (params as float32) and `<name>.json` (meta) atomically into out_dir (created).
  Returns the .msgpack path. Callers check `check_writable` first."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  host = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  path = files.write_bytes(out / f"{name}.msgpack", serialization.msgpack_serialize(host))
  files.write_text(out / f"{name}.json", json.dumps(meta, indent=1))
  return path
