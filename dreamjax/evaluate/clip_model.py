"""A CLIP model for evaluation: transformers' `FlaxCLIPModel`, its tokenizer and its image preprocessing, from a
Hugging Face hub id (e.g. openai/clip-vit-base-patch32) or a local folder in the hub layout, without torch.

A folder (or repository) holds config.json, preprocessor_config.json, the tokenizer (vocab.json, merges.txt,
tokenizer_config.json, special_tokens_map.json) and the weights as `flax_model.msgpack` (a Flax tree; what the openai
repositories ship, and all that B/32 ships on its main branch) or `model.safetensors` (PyTorch names and layout, read
with the project's converter `dreamjax.priors.weights.convert_torch_state_dict`). The msgpack is preferred. Only
these files are downloaded. Every failure is a `WeightsError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import jax
import numpy as np

from dreamjax.evaluate import preprocess as pre_lib
from dreamjax.evaluate import retrieval
from dreamjax.priors import weights as w_lib
from dreamjax.priors.weights import WeightsError

CONFIG_FILES = ("config.json", "preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                "special_tokens_map.json")
WEIGHT_FILES = ("flax_model.msgpack", "model.safetensors")  # in order of preference
_WIDTHS = {768: "B", 1024: "L", 1280: "H", 1664: "G"}  # ViT width -> size letter of the CLIP papers


def weight_file(names, where: str, fmt: str = "auto") -> str:
  """The weight file to read among `names`: `fmt` 'auto' (msgpack, else safetensors), 'msgpack' or 'safetensors'."""
  names = set(names)
  wanted = WEIGHT_FILES if fmt == "auto" else [f for f in WEIGHT_FILES if f.endswith("." + fmt)]
  if not wanted:
    raise ValueError(f"unknown CLIP weight format {fmt!r}: use auto, msgpack or safetensors")
  for name in wanted:
    if name in names:
      return name
  if fmt == "auto" and "pytorch_model.bin" in names:
    raise WeightsError(f"{where} has only pytorch_model.bin, which cannot be read without torch; pass a folder with "
                       f"flax_model.msgpack or model.safetensors")
  raise WeightsError(f"{where} has no CLIP weights ({' or '.join(wanted)}); pass a CLIP folder in the hub layout or "
                     f"a hub id such as openai/clip-vit-base-patch32")


def _hub_folder(repo_id: str, fmt: str) -> pathlib.Path:
  """Downloads (or finds in the cache) the configs, tokenizer and one weight file of a hub repository."""
  from huggingface_hub import HfApi, snapshot_download
  offline = w_lib._offline()
  try:
    if offline:
      root = pathlib.Path(snapshot_download(repo_id, allow_patterns=list(CONFIG_FILES + WEIGHT_FILES),
                                            local_files_only=True))
    else:
      names = HfApi().list_repo_files(repo_id)
      wanted = [f for f in CONFIG_FILES if f in names] + [weight_file(names, f"hub repository {repo_id!r}", fmt)]
      root = pathlib.Path(snapshot_download(repo_id, allow_patterns=wanted))
  except WeightsError:
    raise
  except Exception as e:  # huggingface_hub raises many types: not found, gated, offline, network
    hint = "it is not in the local cache (HF_HUB_OFFLINE is set)" if offline else "check the id and the network"
    raise WeightsError(f"cannot get CLIP {repo_id!r} from the Hugging Face hub ({w_lib.brief_error(e, 120)}); "
                       f"{hint}, or pass a local folder") from None
  return root


def resolve(source: str, fmt: str = "auto") -> pathlib.Path:
  """A local folder holding CLIP `source` (a folder path, or a hub id fetched into the cache)."""
  src = os.path.expanduser(str(source))
  if os.path.isdir(src):
    root = pathlib.Path(src)
  elif os.path.exists(src):
    raise WeightsError(f"--clip {src!r} is a file; pass a CLIP folder in the hub layout or a hub id")
  elif w_lib._looks_like_path(src):
    raise WeightsError(f"--clip {src!r}: no such folder; pass a CLIP folder in the hub layout or a hub id such as "
                       f"openai/clip-vit-base-patch32")
  else:
    root = _hub_folder(src, fmt)
  names = os.listdir(root)
  missing = [f for f in ("config.json", "preprocessor_config.json", "vocab.json", "merges.txt") if f not in names]
  if missing:
    raise WeightsError(f"CLIP {src!r} lacks {', '.join(missing)}; pass a complete CLIP folder in the hub layout")
  weight_file(names, f"CLIP {src!r}", fmt)
  return root


def label_of(source: str, config) -> str:
  """'B/32', 'B/16', 'L/14' (plus '@336' for another input size) from the vision tower; else the folder's name."""
  v = config.vision_config
  size = _WIDTHS.get(int(v.hidden_size))
  if size is None:
    return pathlib.PurePath(str(source).rstrip("/")).name
  return f"{size}/{v.patch_size}" + ("" if int(v.image_size) == 224 else f"@{v.image_size}")


@dataclasses.dataclass
class Clip:
  """A loaded CLIP: embeddings of images and captions, unit-normalised (float64 NumPy)."""
  source: str
  label: str
  weights: str  # the file the parameters came from
  model: object  # FlaxCLIPModel (built without parameters)
  params: dict
  tokenizer: object
  preprocess: pre_lib.ClipPreprocess
  max_length: int

  @functools.cached_property
  def _image_fn(self):
    return jax.jit(lambda p, x: self.model.get_image_features(x, params=p))

  @functools.cached_property
  def _text_fn(self):
    return jax.jit(lambda p, ids, mask: self.model.get_text_features(ids, attention_mask=mask, params=p))

  @property
  def input_size(self) -> tuple[int, int]:
    return self.preprocess.input_size

  def embed_pixels(self, pixel_values: np.ndarray, batch: int = 16) -> np.ndarray:
    """Projected image embeddings [N, D] (unnormalised) of preprocessed pixel_values [N, 3, h, w]."""
    return np.concatenate([np.asarray(self._image_fn(self.params, pixel_values[i:i + batch]))
                           for i in range(0, len(pixel_values), batch)])

  def embed_images(self, images: np.ndarray) -> np.ndarray:
    """Unit image embeddings [N, D] of images [N, H, W, 3] in [0, 1] (preprocessed as the folder declares)."""
    return retrieval.normalize(self.embed_pixels(self.preprocess(images)))

  def token_ids(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask [C, max_length] int32: the caption itself, no template, padded/truncated."""
    t = self.tokenizer(list(captions), padding="max_length", max_length=self.max_length, truncation=True,
                       return_tensors="np")
    return t["input_ids"].astype(np.int32), t["attention_mask"].astype(np.int32)

  def embed_texts(self, captions: list[str], batch: int = 64) -> np.ndarray:
    """Unit text embeddings [C, D] of captions."""
    ids, mask = self.token_ids(captions)
    out = [np.asarray(self._text_fn(self.params, ids[i:i + batch], mask[i:i + batch]))
           for i in range(0, len(ids), batch)]
    return retrieval.normalize(np.concatenate(out))


def load(source: str, fmt: str = "auto") -> Clip:
  """Loads CLIP `source` (hub id or folder) in float32; `fmt` forces 'msgpack' or 'safetensors' weights."""
  from flax import serialization
  from transformers import CLIPConfig, CLIPTokenizer, FlaxCLIPModel
  root = resolve(source, fmt)
  config_dict = w_lib.read_json(root / "config.json")
  if config_dict.get("model_type") != "clip":
    raise WeightsError(f"CLIP {source!r}: config.json describes a {config_dict.get('model_type')!r} model, not clip")
  config = CLIPConfig.from_dict(config_dict)
  model = FlaxCLIPModel(config, _do_init=False)
  name = weight_file(os.listdir(root), f"CLIP {source!r}", fmt)
  what = f"CLIP weights {os.fspath(root / name)!r}"
  if name.endswith(".msgpack"):
    try:
      tree = serialization.msgpack_restore((root / name).read_bytes())
    except Exception as e:
      raise WeightsError(f"cannot read {what} ({w_lib.brief_error(e)}); re-download it") from None
    params = w_lib.check_flax_tree(tree, model.params_shape_tree, what)
  else:
    params = w_lib.convert_torch_state_dict(w_lib.read_safetensors(root / name), model.params_shape_tree, what)
  params = jax.device_put(w_lib.cast_floating(params, np.float32))
  try:
    tokenizer = CLIPTokenizer.from_pretrained(os.fspath(root))
  except Exception as e:
    raise WeightsError(f"cannot read the tokenizer of CLIP {source!r} ({w_lib.brief_error(e)})") from None
  preprocess = pre_lib.ClipPreprocess.from_dict(w_lib.read_json(root / "preprocessor_config.json"))
  return Clip(source=str(source), label=label_of(source, config), weights=name, model=model, params=params,
              tokenizer=tokenizer, preprocess=preprocess,
              max_length=int(config.text_config.max_position_embeddings))
