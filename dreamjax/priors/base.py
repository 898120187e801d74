"""The interface every 2D diffusion prior implements, and the text embeddings a run feeds it.

A prior is a frozen text-to-image diffusion model seen by score distillation through five things:

  encode_text(prompts)                     -> emb     [N, L, D]   (eager, once, outside the train step)
  condition(text, view)                    -> emb     [B, L, D]   (the conditional embedding of a training view)
  to_latents(params, images, rng)          -> z       [B, h, w, c] (differentiable w.r.t. images)
  predict_eps(params, z_t, t, emb)         -> eps     [B, h, w, c] (epsilon-prediction, whatever the model predicts)
  alphas_cumprod                           -> abar    [T] float32  (the discrete DDPM schedule)

`text` is a `TextEmbeddings` (the prompt per view label, the unconditional prompt, and a rule's negative prompt),
computed once per run by `TextEmbeddings.encode`; `view` is a `cameras.View`. Text-to-image priors condition on the
prompt of the view's label (`ViewTextConditioning`); a prior may condition on the view itself instead (the oracle).

`params` is the prior's frozen weight pytree (`prior.params`); it is passed explicitly into jitted functions so that
large weights are arguments, not baked-in constants. `images` are renders in [0, 1], channels last, [B, H, W, 3].
`t` are integer timesteps in [0, T) with shape [B]. Classifier-free guidance is done by the caller (distill.py): it
concatenates the conditional and unconditional batches into one `predict_eps` call.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import chex
import jax.numpy as jnp
import numpy as np
from flax import struct

from dreamjax import cameras as cam_lib

PyTree = Any

@struct.dataclass
class TextEmbeddings:
  """The embeddings of one run: views [V, L, D] (the prompt per view label), uncond [1, L, D] (the unconditional
  prompt) and neg [1, L, D] or None (the negative prompt of a rule that needs one, e.g. NFSD)."""
  views: jnp.ndarray
  uncond: jnp.ndarray
  neg: Optional[jnp.ndarray] = None

  @classmethod
  def encode(cls, prior, prompt: str, *, uncond_prompt: str = "", view_dependent: bool = True,
             rule=None) -> "TextEmbeddings":
    """Encodes `prompt` once per view label (with its ", front view" ... suffix when `view_dependent`, else the
    prompt 4 times), `uncond_prompt` ("" = the empty prompt), and `rule.negative_prompt` when `rule.needs_negative`
    (rule: a `distill.Rule` or None)."""
    views = [cam_lib.view_prompt(prompt, label) if view_dependent else prompt
             for label in range(len(cam_lib.VIEW_NAMES))]
    neg = None
    if rule is not None and rule.needs_negative:
      neg = jnp.asarray(prior.encode_text([rule.negative_prompt]))
    out = cls(views=jnp.asarray(prior.encode_text(views)), uncond=jnp.asarray(prior.encode_text([uncond_prompt])),
              neg=neg)
    chex.assert_rank(out.views, 3)
    return out


def fit_prompt(prior, prompt: str, suffixes: Sequence[str] = ("",)) -> tuple[str, int]:
  """The prompt shortened (whole words from the end) so that prompt + each suffix fits the prior's text window, and
  how many of the prompt's tokens were dropped (0: unchanged). A prior without a window (`text_window`,
  `count_tokens`) takes any prompt. Truncating the whole text instead would cut the view suffix off silently."""
  if not hasattr(prior, "text_window") or not hasattr(prior, "count_tokens"):
    return prompt, 0
  fits = lambda p: all(prior.count_tokens(p + s) <= prior.text_window for s in suffixes)
  words = prompt.split()
  while words and not fits(" ".join(words)):
    words.pop()
  short = " ".join(words)
  if short == prompt.strip() and fits(prompt):
    return prompt, 0
  return short, prior.count_tokens(prompt) - prior.count_tokens(short)


class ViewTextConditioning:
  """Mixin of text-to-image priors: the conditional embedding of a view is the prompt of its label."""

  def condition(self, text: TextEmbeddings, view) -> jnp.ndarray:
    """text.views[view.label]: [B, L, D] for the B cameras of `view`."""
    return text.views[view.label]


@runtime_checkable
class Prior(Protocol):
  """Structural type of a diffusion prior; see the module docstring for shapes."""

  params: PyTree
  alphas_cumprod: np.ndarray

  def encode_text(self, prompts: Sequence[str]) -> jnp.ndarray:
    ...

  def condition(self, text: TextEmbeddings, view) -> jnp.ndarray:
    ...

  def to_latents(self, params: PyTree, images: jnp.ndarray, rng: jnp.ndarray) -> jnp.ndarray:
    ...

  def predict_eps(self, params: PyTree, z_t: jnp.ndarray, t: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    ...


def v_to_eps(v: jnp.ndarray, z_t: jnp.ndarray, alpha_bar_t: jnp.ndarray) -> jnp.ndarray:
  """Converts a v-prediction to an epsilon-prediction.

  With z_t = a z + s eps, a = sqrt(abar), s = sqrt(1 - abar) and v = a eps - s z, eps = a v + s z_t.
  Args: v, z_t [B, ...]; alpha_bar_t [B] broadcast over the trailing axes.
  """
  abar = jnp.reshape(alpha_bar_t, (-1,) + (1,) * (z_t.ndim - 1))
  return jnp.sqrt(abar) * v + jnp.sqrt(1.0 - abar) * z_t


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> np.ndarray:
  """Stable Diffusion's `scaled_linear` DDPM schedule: betas linear in sqrt-space. Returns abar [T] float32."""
  betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
  return np.cumprod(1.0 - betas).astype(np.float32)


def linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> np.ndarray:
  """The original DDPM `linear` schedule (betas linear). Returns abar [T] float32."""
  betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
  return np.cumprod(1.0 - betas).astype(np.float32)
