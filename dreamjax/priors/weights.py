"""Loads diffusers-layout model folders into Flax parameter trees, without torch.

A diffusers folder (or Hub repository) holds one subfolder per component:

  model_index.json
  unet/config.json          + diffusion_pytorch_model[.VARIANT].safetensors | diffusion_flax_model[.VARIANT].msgpack
  vae/config.json           + the same file names as unet/
  text_encoder/config.json  + model[.VARIANT].safetensors | flax_model[.VARIANT].msgpack
  tokenizer/                  vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
  scheduler/scheduler_config.json

Large models may be sharded: `NAME.safetensors.index[.VARIANT].json` maps every tensor to one of several shard files.
`.safetensors` tensors are PyTorch-named and laid out (conv kernels [out, in, kh, kw], linear [out, in]); they are
renamed and transposed into the tree of the Flax model (conv kernels [kh, kw, in, out], linear [in, out]) and checked
leaf by leaf against the shapes of the Flax model's `init`. A Flax `.msgpack` is already a Flax tree and is preferred.

Everything that can go wrong while getting weights raises `WeightsError`, whose message is one line naming the
source that failed and how to fix it (the CLI prints `str(e)` and exits non-zero).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

# Weight file stems per component: (PyTorch-layout safetensors stem, Flax msgpack stem).
WEIGHT_STEMS = {
    "unet": ("diffusion_pytorch_model", "diffusion_flax_model"),
    "vae": ("diffusion_pytorch_model", "diffusion_flax_model"),
    "text_encoder": ("model", "flax_model"),
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json")
# PyTorch state-dict entries that are buffers, not parameters, and have no Flax counterpart.
_IGNORED_SUFFIXES = ("position_ids", "num_batches_tracked")
# VAE attention: current PyTorch names <-> Flax (and legacy PyTorch) names.
_ATTENTION_ALIASES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
_INDEX_FILE = re.compile(r"\.safetensors\.index(\.[^./]+)?\.json$")
_LOGIN_HINT = "log in with `huggingface-cli login` (or set HF_TOKEN)"

log = logging.getLogger(__name__)


class WeightsError(Exception):
  """Weights could not be had or do not fit the model. `str(e)` is one line: what failed and how to fix it."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


def brief_error(e: BaseException, limit: int = 200) -> str:
  """'Type: message' of an exception on one line, cut to `limit` characters."""
  text = " ".join(f"{type(e).__name__}: {e}".split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------- file selection


def add_variant(name: str, variant: str | None) -> str:
  """'model.safetensors' + 'fp16' -> 'model.fp16.safetensors' (the variant goes before the last extension)."""
  if not variant:
    return name
  stem, ext = name.rsplit(".", 1)
  return f"{stem}.{variant}.{ext}"


def choose_weight_files(names: Iterable[str], component: str, variant: str | None = None,
                        warn: bool = False) -> list[str]:
  """Picks the weight file(s) of `component` among repo-relative posix paths `names`.

  Order of preference: with a variant, its Flax msgpack, its single safetensors, its sharded index; then the same
  three without a variant. Returns [one path] (a msgpack, a safetensors or an index json) or [] if none is there.
  """
  pt_stem, flax_stem = WEIGHT_STEMS[component]
  present = set(names)
  variants = [variant, None] if variant else [None]
  for v in variants:
    for name in (add_variant(f"{flax_stem}.msgpack", v), add_variant(f"{pt_stem}.safetensors", v),
                 add_variant(f"{pt_stem}.safetensors.index.json", v)):
      path = f"{component}/{name}"
      if path in present:
        if v is None and variant and warn:
          log.warning("No %s variant of %s; using %s.", variant, component, path)
        return [path]
  return []


def _missing_weights_message(where: str, names: Iterable[str], component: str, variant: str | None) -> str:
  pt_stem, flax_stem = WEIGHT_STEMS[component]
  wanted = f"{component}/{add_variant(pt_stem + '.safetensors', variant)}"
  bins = sorted(n for n in names if n.startswith(component + "/") and n.endswith((".bin", ".ckpt", ".pt")))
  if bins:
    return (f"{where} has only PyTorch pickle weights for {component} ({bins[0]}), which cannot be read without torch; "
            f"convert the folder to .safetensors (diffusers `save_pretrained(..., safe_serialization=True)`) or pass "
            f"another source")
  extra = f" (no `{variant}` variant either: try variant=None)" if variant else ""
  return (f"{where} has no {component} weights: expected {wanted} or {component}/{flax_stem}.msgpack{extra}; pass a "
          f"complete diffusers-layout folder or Hub id")


def _shards_of(index_file: pathlib.Path) -> list[str]:
  """Shard file names (relative to the index's folder) listed by a `*.safetensors.index*.json`."""
  try:
    weight_map = json.loads(index_file.read_text())["weight_map"]
  except (OSError, ValueError, KeyError) as e:
    raise WeightsError(f"cannot read the shard index {index_file}: {e}") from e
  return sorted(set(weight_map.values()))


# ----------------------------------------------------------------------------------------------- sources


def _offline() -> bool:
  """HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)."""
  from huggingface_hub import constants
  env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
  return env or bool(constants.HF_HUB_OFFLINE)


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def _looks_like_path(source: str) -> bool:
  """Hub ids are exactly 'owner/name'; anything else (./x, /x, ~/x, a/b/c, x) is taken as a local path."""
  return source.startswith((".", "/", "~")) or not _REPO_ID.match(source)


def _local_names(root: pathlib.Path) -> list[str]:
  """Repo-relative posix paths of every file under `root` (followed symlinks included)."""
  out = []
  for dirpath, _, files in os.walk(root, followlinks=True):
    rel = pathlib.Path(dirpath).relative_to(root)
    out += [(rel / f).as_posix() for f in files]
  return out


def _wanted_patterns(names: Iterable[str], variant: str | None, components: Sequence[str]) -> list[str]:
  """Exact repo paths to fetch: configs, tokenizer files and one weight file (or index) per component."""
  names = set(names)
  wanted = [n for n in CONFIG_FILES if n in names] + [f"tokenizer/{f}" for f in TOKENIZER_FILES
                                                      if f"tokenizer/{f}" in names]
  for c in components:
    wanted += choose_weight_files(names, c, variant)
  return wanted


def _hub_snapshot(repo_id: str, revision: str | None, variant: str | None, token: str | bool | None,
                  cache_dir: str | None, components: Sequence[str]) -> pathlib.Path:
  """Downloads (or finds in the local cache) the files of `repo_id` that loading needs; returns the snapshot folder."""
  from huggingface_hub import HfApi, snapshot_download
  from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                      RepositoryNotFoundError, RevisionNotFoundError)
  rev = f" at revision {revision!r}" if revision else ""
  offline = _offline()
  names = None
  if not offline:
    try:
      names = HfApi().list_repo_files(repo_id, revision=revision, token=token)
    except GatedRepoError as e:
      raise WeightsError(f"{repo_id!r} is a gated repository on the Hugging Face Hub: accept its licence on the model "
                         f"page, then {_LOGIN_HINT}; or pass a local folder") from e
    except RevisionNotFoundError as e:
      raise WeightsError(f"{repo_id!r} has no revision {revision!r} on the Hugging Face Hub; check `revision`") from e
    except RepositoryNotFoundError as e:
      raise WeightsError(f"{repo_id!r} was not found on the Hugging Face Hub (check the id; if it is private, "
                         f"{_LOGIN_HINT}), and no local folder of that name exists") from e
    except (HfHubHTTPError, OSError) as e:  # network trouble: fall back to the local cache below
      log.warning("Could not reach the Hugging Face Hub for %s (%s); trying the local cache.", repo_id, e)
  patterns = list(CONFIG_FILES) + [f"tokenizer/{f}" for f in TOKENIZER_FILES] + [
      f"{c}/*{ext}" for c in components for ext in (".safetensors", ".msgpack", ".json")]
  try:
    if names is None:
      root = pathlib.Path(snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                            allow_patterns=patterns, local_files_only=True))
    else:
      wanted = _wanted_patterns(names, variant, components)
      missing = [c for c in components if not choose_weight_files(names, c, variant)]
      if missing:
        raise WeightsError(_missing_weights_message(f"Hub repository {repo_id!r}{rev}", names, missing[0], variant))
      root = pathlib.Path(snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                            allow_patterns=wanted))
      indices = [w for w in wanted if _INDEX_FILE.search(w)]
      shards = [f"{pathlib.PurePosixPath(w).parent}/{s}" for w in indices for s in _shards_of(root / w)]
      if shards:
        root = pathlib.Path(snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                                              allow_patterns=shards))
  except WeightsError:
    raise
  except GatedRepoError as e:
    raise WeightsError(f"{repo_id!r} is a gated repository: accept its licence on the model page, then "
                       f"{_LOGIN_HINT}; or pass a local folder") from e
  except LocalEntryNotFoundError as e:
    if offline:
      raise WeightsError(f"cannot load {repo_id!r}{rev}: HF_HUB_OFFLINE is set and it is not in the local Hugging Face "
                         f"cache; pass a local diffusers-layout folder, or unset HF_HUB_OFFLINE to download it (gated "
                         f"models: {_LOGIN_HINT})") from e
    raise WeightsError(f"cannot load {repo_id!r}{rev}: the Hugging Face Hub could not be reached and it is not in the "
                       f"local cache; check the network, or pass a local diffusers-layout folder") from e
  except (HfHubHTTPError, OSError) as e:
    raise WeightsError(f"downloading {repo_id!r}{rev} failed ({brief_error(e)}); check the network, "
                       f"{_LOGIN_HINT} for gated models, or pass a local folder") from e
  return root


def resolve_source(source: str | os.PathLike, revision: str | None = None, variant: str | None = None,
                   token: str | bool | None = None, cache_dir: str | None = None,
                   components: Sequence[str] = ("unet", "vae", "text_encoder")) -> pathlib.Path:
  """Returns a local folder in diffusers layout for `source`: a folder path, or a Hub id fetched/cached.

  Only configs, tokenizer files and one weight file (or its shards) per component are downloaded. The Hub is not
  contacted when HF_HUB_OFFLINE is set; then the id must be in the local cache. `variant` ("fp16", "bf16") picks
  `NAME.VARIANT.safetensors`-style files where they exist. Raises WeightsError.
  """
  src = os.path.expanduser(os.fspath(source))
  if os.path.isdir(src):
    root = pathlib.Path(src)
  elif os.path.exists(src):
    raise WeightsError(f"{src!r} is a file; pass a diffusers-layout folder (unet/, vae/, text_encoder/, tokenizer/, "
                       f"scheduler/) or a Hugging Face Hub id")
  elif _looks_like_path(src):
    raise WeightsError(f"local folder {src!r} does not exist; pass an existing diffusers-layout folder or a Hugging "
                       f"Face Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5")
  else:
    root = _hub_snapshot(src, revision, variant, token, cache_dir, components)
  names = _local_names(root)
  for c in components:
    if f"{c}/config.json" not in names:
      raise WeightsError(f"{src!r} has no {c}/config.json; pass a complete diffusers-layout folder (unet/, vae/, "
                         f"text_encoder/, tokenizer/, scheduler/) or Hub id")
    if not choose_weight_files(names, c, variant):
      raise WeightsError(_missing_weights_message(repr(src), names, c, variant))
  return root


def read_json(path: str | os.PathLike) -> dict:
  """Reads a JSON config; a missing or broken file is a WeightsError."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WeightsError(f"cannot read {os.fspath(path)!r} ({brief_error(e)}); pass a complete diffusers-layout "
                       f"folder") from e


# ----------------------------------------------------------------------------------------------- reading tensors


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads one .safetensors file as NumPy arrays (float32, float16 and bfloat16 (ml_dtypes) kept as stored)."""
  from safetensors import safe_open
  try:
    with safe_open(os.fspath(path), framework="numpy") as f:
      return {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # safetensors raises several unrelated types for bad files
    raise WeightsError(f"cannot read {os.fspath(path)!r} ({brief_error(e)}); re-download it or pass another "
                       f"source") from e


def read_state_dict(folder: str | os.PathLike, component: str, variant: str | None = None
                    ) -> tuple[str, dict[str, np.ndarray] | PyTree]:
  """Reads the weights of `folder/component`. Returns ('msgpack', Flax tree) or ('safetensors', {torch name: array})."""
  root = pathlib.Path(folder)
  names = _local_names(root)
  chosen = choose_weight_files(names, component, variant, warn=True)
  if not chosen:
    raise WeightsError(_missing_weights_message(repr(os.fspath(folder)), names, component, variant))
  path = root / chosen[0]
  if path.suffix == ".msgpack":
    from flax import serialization
    try:
      return "msgpack", serialization.msgpack_restore(path.read_bytes())
    except Exception as e:
      raise WeightsError(f"cannot read {os.fspath(path)!r} ({brief_error(e)}); re-download it") from e
  if _INDEX_FILE.search(path.name):  # sharded
    state = {}
    for shard in _shards_of(path):
      if not (path.parent / shard).exists():
        raise WeightsError(f"shard {shard!r} listed in {os.fspath(path)!r} is missing; re-download the folder")
      state.update(read_safetensors(path.parent / shard))
    return "safetensors", state
  return "safetensors", read_safetensors(path)


# ----------------------------------------------------------------------------------------------- PyTorch -> Flax


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  out: dict = {}
  for key, v in flat.items():
    node = out
    for k in key[:-1]:
      node = node.setdefault(k, {})
    node[key[-1]] = v
  return out


_INDEXED = re.compile(r"_(\d+)(?=\.|$)")


def _canonical(path: str) -> str:
  """Module path with every index as its own dotted part: 'down_blocks_0.net_2' and 'down_blocks.0.net.2' agree."""
  return _INDEXED.sub(r".\1", path)


def _to_flax_leaf(pt_leaf: str, flax_leaves: Mapping[str, Any]) -> str | None:
  """Flax leaf name for a PyTorch leaf name, among the leaves the Flax module really has."""
  if pt_leaf in ("weight", "gamma"):
    for name in ("kernel", "scale", "embedding"):
      if name in flax_leaves:
        return name
    return None
  if pt_leaf == "beta":
    pt_leaf = "bias"
  return pt_leaf if pt_leaf in flax_leaves else None


def _to_flax_layout(x: np.ndarray, flax_leaf: str, shape: tuple) -> np.ndarray:
  """Transposes a PyTorch tensor to the Flax layout of `shape` (conv OIHW -> HWIO, linear [out,in] -> [in,out])."""
  if flax_leaf != "kernel":
    return x
  if x.ndim == 4 and len(shape) == 4:
    return np.transpose(x, (2, 3, 1, 0))
  if x.ndim == 2 and len(shape) == 2:
    return x.T
  if x.ndim == 4 and len(shape) == 2 and x.shape[2:] == (1, 1):  # 1x1 conv stored where Flax has a Dense
    return x[:, :, 0, 0].T
  if x.ndim == 2 and len(shape) == 4 and shape[:2] == (1, 1):  # Dense stored where Flax has a 1x1 conv
    return x.T[None, None]
  return x


def _short(keys: Sequence[str], n: int = 4) -> str:
  keys = sorted(keys)
  more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
  return ", ".join(keys[:n]) + more


def _mismatch_error(what: str, missing: Sequence[str], unexpected: Sequence[str], bad_shape: Sequence[str]) -> None:
  if not (missing or unexpected or bad_shape):
    return
  parts = []
  if missing:
    parts.append(f"missing {len(missing)} [{_short(missing)}]")
  if unexpected:
    parts.append(f"unexpected {len(unexpected)} [{_short(unexpected)}]")
  if bad_shape:
    parts.append(f"wrong shape {len(bad_shape)} [{_short(bad_shape)}]")
  raise WeightsError(f"{what} do not fit the model built from its config.json: {'; '.join(parts)}; the weights and "
                     f"config disagree (mixed or corrupt download?) or the architecture is not supported by the Flax "
                     f"classes")


def convert_torch_state_dict(state: Mapping[str, np.ndarray], target: PyTree, what: str = "weights") -> dict:
  """Maps a PyTorch-named state dict onto the Flax tree `target` (leaves with `.shape`, e.g. from jax.eval_shape).

  Names: 'a.0.b.weight' -> ('a_0', 'b', 'kernel' | 'scale' | 'embedding') or ('a', '0', ...) whichever the Flax tree
  has; VAE attention 'to_q/to_k/to_v/to_out.0' <-> 'query/key/value/proj_attn'. Layout: conv kernels (2, 3, 1, 0),
  linear kernels transposed. Every Flax leaf must be filled with the right shape and every tensor used, else
  WeightsError listing the missing / unexpected / mis-shaped names. Returns a nested dict of NumPy arrays.
  """
  flat_target = _flatten(target)
  modules: dict[str, tuple] = {}
  for key in flat_target:
    modules[_canonical(".".join(key[:-1]))] = key[:-1]
  leaves: dict[tuple, dict[str, Any]] = {}
  for key, v in flat_target.items():
    leaves.setdefault(key[:-1], {})[key[-1]] = v
  aliases = dict(_ATTENTION_ALIASES)
  aliases.update({v: k for k, v in _ATTENTION_ALIASES.items()})

  out, unexpected, bad_shape = {}, [], []
  for name, x in state.items():
    if name.endswith(_IGNORED_SUFFIXES):
      continue
    module, _, pt_leaf = _canonical(name).rpartition(".")
    flax_module = modules.get(module)
    if flax_module is None:
      for src, dst in aliases.items():
        if module.endswith("." + src):
          flax_module = modules.get(module[: -len(src)] + dst)
          if flax_module is not None:
            break
    flax_leaf = _to_flax_leaf(pt_leaf, leaves[flax_module]) if flax_module is not None else None
    if flax_leaf is None:
      unexpected.append(name)
      continue
    key = flax_module + (flax_leaf,)
    shape = tuple(flat_target[key].shape)
    y = _to_flax_layout(np.asarray(x), flax_leaf, shape)
    if tuple(y.shape) != shape:
      bad_shape.append(f"{name} {tuple(np.shape(x))} vs {'/'.join(key)} {shape}")
      continue
    out[key] = y
  missing = ["/".join(k) for k in flat_target if k not in out]
  _mismatch_error(what, missing, unexpected, bad_shape)
  return _unflatten(out)


def check_flax_tree(tree: Mapping, target: PyTree, what: str = "weights") -> dict:
  """Checks a Flax tree (e.g. from a .msgpack) against `target`: same leaves, same shapes. Returns a plain dict."""
  flat, flat_target = _flatten(tree), _flatten(target)
  missing = ["/".join(k) for k in flat_target if k not in flat]
  unexpected = ["/".join(k) for k in flat if k not in flat_target]
  bad_shape = [f"{'/'.join(k)} {tuple(np.shape(flat[k]))} vs {tuple(v.shape)}" for k, v in flat_target.items()
               if k in flat and tuple(np.shape(flat[k])) != tuple(v.shape)]
  _mismatch_error(what, missing, unexpected, bad_shape)
  return _unflatten({k: np.asarray(flat[k]) for k in flat_target})


def cast_floating(tree: PyTree, dtype: Any) -> PyTree:
  """Casts every floating-point leaf to `dtype` (NumPy on the host; integer leaves are kept)."""
  dtype = np.dtype(dtype)

  def cast(x):
    x = np.asarray(x)
    return x.astype(dtype, copy=False) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree_util.tree_map(cast, tree)


def load_params(folder: str | os.PathLike, component: str, target: PyTree, dtype: Any = np.float32,
                variant: str | None = None, device_put: bool = True) -> PyTree:
  """Reads `folder/component`'s weights, maps them onto `target` (shape tree), casts to `dtype`, puts on device.

  Args:
    folder: a local diffusers-layout folder (see `resolve_source`).
    component: 'unet', 'vae' or 'text_encoder'.
    target: the Flax parameter tree's shapes, e.g. `jax.eval_shape(model.init_weights, key)`.
    dtype: dtype of the returned floating leaves (float32, bfloat16, float16).
    variant: e.g. 'fp16' to prefer `NAME.fp16.safetensors`.
  Returns the parameter tree (jax arrays if device_put, else NumPy).
  """
  what = f"{component} weights in {os.fspath(folder)!r}"
  kind, state = read_state_dict(folder, component, variant)
  if kind == "msgpack":
    tree = check_flax_tree(state, target, what)
  else:
    tree = convert_torch_state_dict(state, target, what)
  del state
  tree = cast_floating(tree, dtype)
  return jax.device_put(tree) if device_put else tree


def param_shapes(init_fn: Callable[..., PyTree], *args) -> PyTree:
  """The shape/dtype tree of `init_fn(PRNGKey(0), *args)`, computed abstractly (no parameters are allocated)."""
  return jax.eval_shape(lambda key: init_fn(key, *args), jax.random.PRNGKey(0))
