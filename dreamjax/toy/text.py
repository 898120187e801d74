"""Word-level tokenizer over the toy vocabulary and the small text encoder of the toy prior.

Tokenizing: lower-case, split into runs of letters/digits (punctuation such as the comma of ", side view" is
dropped), one id per word, padded with PAD (0) or cut to MAX_LEN (16) words. Words outside VOCAB map to UNK (1):
a prompt such as "a shiny red cube" reads as "a [unk] red cube"; the prior was only trained on VOCAB words, so
unknown words carry no meaning and simply perturb the embedding a little. The empty prompt is all PAD (the
unconditional input of classifier-free guidance).

Encoder: token embedding + learned position embedding (width WIDTH), `num_layers` pre-LayerNorm transformer blocks
(self-attention over all MAX_LEN positions, no mask, then an MLP), a final LayerNorm. Output [N, MAX_LEN, WIDTH]:
the UNet cross-attends to every position (as Stable Diffusion does to CLIP's 77).
"""

from __future__ import annotations

import re
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from dreamjax import cameras as cam_lib
from dreamjax.toy import shapes

PAD, UNK = "[pad]", "[unk]"
MAX_LEN = 16
WIDTH = 64
_WORDS = ("a", "an", "the", "with", "on", "top", "of", "and", "view") + cam_lib.VIEW_NAMES + shapes.COLOUR_NAMES \
    + shapes.SHAPES
VOCAB = (PAD, UNK) + tuple(dict.fromkeys(_WORDS))
PAD_ID, UNK_ID = 0, 1
_INDEX = {w: i for i, w in enumerate(VOCAB)}
_WORD = re.compile(r"[a-z0-9]+")


def words(prompt: str) -> list[str]:
  """The words of a prompt: lower-case runs of letters/digits."""
  return _WORD.findall(prompt.lower())


def unknown_words(prompt: str) -> list[str]:
  """The words of `prompt` outside VOCAB (they map to UNK and mean nothing to the toy prior), in order, unique."""
  return list(dict.fromkeys(w for w in words(prompt) if w not in _INDEX))


def tokenize(prompts: Sequence[str], max_len: int = MAX_LEN) -> np.ndarray:
  """prompts [N] -> token ids int32 [N, max_len] (UNK for unknown words, PAD after the end, cut at max_len)."""
  out = np.full((len(prompts), max_len), PAD_ID, np.int32)
  for i, p in enumerate(prompts):
    ids = [_INDEX.get(w, UNK_ID) for w in words(p)][:max_len]
    out[i, :len(ids)] = ids
  return out


def detokenize(ids: np.ndarray) -> list[str]:
  """Token ids [N, L] -> the space-joined words (PAD dropped, UNK as '[unk]')."""
  return [" ".join(VOCAB[int(i)] for i in row if int(i) != PAD_ID) for row in np.asarray(ids)]


class TextEncoder(nn.Module):
  """Token ids [N, L] int -> embeddings [N, L, width]."""
  vocab_size: int = len(VOCAB)
  max_len: int = MAX_LEN
  width: int = WIDTH
  num_layers: int = 2
  num_heads: int = 4

  @nn.compact
  def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
    x = nn.Embed(self.vocab_size, self.width, name="token_embedding")(ids)
    pos = self.param("position_embedding", nn.initializers.normal(0.02), (self.max_len, self.width))
    x = x + pos[None, :ids.shape[1]]
    for i in range(self.num_layers):
      h = nn.LayerNorm(name=f"ln_attn_{i}")(x)
      x = x + nn.MultiHeadDotProductAttention(self.num_heads, name=f"attn_{i}")(h, h)
      h = nn.LayerNorm(name=f"ln_mlp_{i}")(x)
      h = nn.Dense(4 * self.width, name=f"mlp_in_{i}")(h)
      x = x + nn.Dense(self.width, name=f"mlp_out_{i}")(nn.gelu(h))
    return nn.LayerNorm(name="ln_final")(x)
