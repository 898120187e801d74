"""The toy latent-diffusion model as a Stable Diffusion folder: its component configs, its CLIP BPE tokenizer, and a
writer that saves Flax weights as PyTorch-named `.safetensors` in diffusers' layout.

The folder `write_folder` produces is what `StableDiffusion.from_pretrained` (and diffusers' PyTorch
`StableDiffusionPipeline.from_pretrained`) read for SD 1.5:

  model_index.json
  unet/config.json + diffusion_pytorch_model.safetensors     UNet2DConditionModel, 8x8x4 latents, cross-attention
  vae/config.json  + diffusion_pytorch_model.safetensors     AutoencoderKL, 32x32x3 <-> 8x8x4 (factor 4)
  text_encoder/config.json + model.safetensors               CLIPTextModel, width 64, 2 layers, 77 positions
  tokenizer/ vocab.json, merges.txt, ...                     CLIP byte-level BPE; every toy word is one token
  scheduler/scheduler_config.json                            DDPM, scaled_linear 0.00085..0.012, epsilon (SD's)

Names and layouts follow diffusers' PyTorch modules: 'down_blocks_0/resnets_0/conv1/kernel' [kh, kw, in, out] is
'down_blocks.0.resnets.0.conv1.weight' [out, in, kh, kw]; Dense kernels are transposed; the VAE attention's
query/key/value/proj_attn are to_q/to_k/to_v/to_out.0. `tests/test_toy_sd.py` checks the mapping against a folder
written by PyTorch diffusers (tests/fixtures/tiny_sd): loading it and writing it back gives the same tensors.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
import tempfile
from typing import Any, Mapping

import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax import files
from dreamjax.toy import shapes

PyTree = Any

DIFFUSERS_VERSION = "0.39.0"
RESOLUTION = 32  # VAE input (the toy renders' size)
LATENT_SIZE = 8  # RESOLUTION / 4
TEXT_WIDTH = 64

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION,
    "sample_size": LATENT_SIZE, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [64, 96, 96],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn", "attention_head_dim": 8, "cross_attention_dim": TEXT_WIDTH,
    "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
    "dropout": 0.0, "only_cross_attention": False, "use_linear_projection": False, "center_input_sample": False,
    "downsample_padding": 1, "mid_block_scale_factor": 1,
}
VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
    "block_out_channels": [16, 32, 64], "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3, "act_fn": "silu", "sample_size": RESOLUTION,
    "scaling_factor": 1.0,  # replaced by the measured 1 / std of the training latents (as SD's 0.18215)
    "force_upcast": True, "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
    "shift_factor": None, "latents_mean": None, "latents_std": None,
}
TEXT_CONFIG = {  # transformers CLIPTextConfig fields
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
    "hidden_size": TEXT_WIDTH, "intermediate_size": 4 * TEXT_WIDTH, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": TEXT_WIDTH,
    "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
    "torch_dtype": "float32",
}
SCHEDULER_CONFIG = {  # stable-diffusion-v1-5's training schedule (its scheduler folder holds a PNDM sampler on it)
    "_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
    "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
    "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    "trained_betas": None, "variance_type": "fixed_small",
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": DIFFUSERS_VERSION,
    "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
    "safety_checker": [None, None], "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}


# ----------------------------------------------------------------------------------------------- tokenizer


def byte_alphabet() -> list[str]:
  """The 256 printable stand-ins byte-level BPE (and CLIPTokenizer) use for the bytes 0..255, in byte order: printable
  Latin-1 bytes stand for themselves, every other byte b for the code point 256 + k (k counts those bytes)."""
  printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
  out, k = [], 0
  for b in range(256):
    if b in printable:
      out.append(chr(b))
    else:
      out.append(chr(256 + k))
      k += 1
  return out


def toy_words() -> list[str]:
  """Every word of every toy caption ('a red cube, front view' -> a, red, cube, front, view), commas excluded."""
  texts = [cam_lib.view_prompt(p, v) for p in shapes.PROMPTS for v in range(len(cam_lib.VIEW_NAMES))]
  return [w for t in texts for w in re.findall(r"[a-z]+", t.lower())]


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
  """Greedy BPE merges (most frequent pair first, ties by string) with CLIP's end-of-word marker, until every word
  of `words` is one symbol."""
  vocab = collections.Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words)
  merges = []
  while True:
    pairs = collections.Counter()
    for sym, c in vocab.items():
      for a, b in zip(sym[:-1], sym[1:]):
        pairs[(a, b)] += c
    if not pairs:
      return merges
    best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
    merges.append(best)
    merged = collections.Counter()
    for sym, c in vocab.items():
      out, i = [], 0
      while i < len(sym):
        if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
          out.append(sym[i] + sym[i + 1])
          i += 2
        else:
          out.append(sym[i])
          i += 1
      merged[tuple(out)] += c
    vocab = merged


def write_tokenizer(folder: str | pathlib.Path) -> None:
  """A CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json): the 512 byte
  tokens (with and without '</w>', so any text tokenizes), the merges that make each toy word one token, and
  <|startoftext|> / <|endoftext|> (also the padding token, as SD 1.x), 77 tokens long."""
  from transformers import CLIPTokenizer
  alphabet = byte_alphabet()
  merges = learn_merges(toy_words())
  vocab: dict[str, int] = {}
  for tok in alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges] + ["<|startoftext|>",
                                                                                     "<|endoftext|>"]:
    vocab.setdefault(tok, len(vocab))
  with tempfile.TemporaryDirectory() as tmp:
    (pathlib.Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (pathlib.Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                                  encoding="utf-8")
    tok = CLIPTokenizer(str(pathlib.Path(tmp) / "vocab.json"), str(pathlib.Path(tmp) / "merges.txt"),
                        model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(str(folder))


def load_tokenizer(folder: str | pathlib.Path):
  from transformers import CLIPTokenizer
  return CLIPTokenizer.from_pretrained(str(folder))


# ----------------------------------------------------------------------------------------------- Flax -> PyTorch

# Flax module names 'x_N' that are PyTorch ModuleList entries 'x.N' (others, such as 'linear_1', keep the underscore).
_LIST_MODULES = ("down_blocks", "up_blocks", "attentions", "resnets", "transformer_blocks", "downsamplers",
                 "upsamplers", "to_out", "net")
_LIST_INDEX = re.compile(r"^(" + "|".join(_LIST_MODULES) + r")_(\d+)$")
_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _torch_module(parts: tuple[str, ...]) -> str:
  out = []
  for p in parts:
    m = _LIST_INDEX.match(p)
    out.append(f"{m.group(1)}.{m.group(2)}" if m else _VAE_ATTENTION.get(p, p))
  return ".".join(out)


def to_torch_state_dict(tree: Mapping) -> dict[str, np.ndarray]:
  """A Flax parameter tree (diffusers' Flax UNet/VAE or transformers' FlaxCLIPTextModel) as a PyTorch state dict:
  dotted names, leaves kernel/scale/embedding -> weight, conv kernels HWIO -> OIHW, Dense kernels [in, out] ->
  [out, in]; float32 NumPy arrays."""
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, Mapping):
        walk(v, prefix + (str(k),))
        continue
      x = np.asarray(v, np.float32)
      leaf = "weight" if k in ("kernel", "scale", "embedding") else str(k)
      if k == "kernel":
        x = np.transpose(x, (3, 2, 0, 1)) if x.ndim == 4 else x.T
      out[f"{_torch_module(prefix)}.{leaf}"] = np.ascontiguousarray(x)

  walk(tree, ())
  return out


# ----------------------------------------------------------------------------------------------- the folder


def _write_json(path: pathlib.Path, obj: Mapping) -> None:
  files.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_folder(out: str | pathlib.Path, params: Mapping[str, PyTree], scaling_factor: float) -> pathlib.Path:
  """Writes the SD-layout folder `out` (created) for params {'unet', 'vae', 'text_encoder'} (Flax trees) with the
  VAE latent scale `scaling_factor`. Every file is written atomically (whole or not at all); other files in `out`
  are left alone. Callers check that `out` may be written first."""
  import safetensors.numpy
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  if not (out / "tokenizer" / "vocab.json").exists():
    write_tokenizer(out / "tokenizer")
  _write_json(out / "unet" / "config.json", UNET_CONFIG)
  _write_json(out / "vae" / "config.json", VAE_CONFIG | {"scaling_factor": float(scaling_factor)})
  _write_json(out / "text_encoder" / "config.json", TEXT_CONFIG | text_token_ids(out / "tokenizer"))
  _write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
  for name, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                     ("text_encoder", "model")):
    data = safetensors.numpy.save(to_torch_state_dict(params[name]), metadata={"format": "pt"})
    files.write_bytes(out / name / f"{stem}.safetensors", data)
  _write_json(out / "model_index.json", MODEL_INDEX)
  return out


def text_token_ids(tokenizer_folder: pathlib.Path) -> dict:
  """vocab_size and the special token ids (CLIPTextConfig fields) of the tokenizer in `tokenizer_folder`."""
  tok = load_tokenizer(tokenizer_folder)
  return {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
          "pad_token_id": tok.pad_token_id}
