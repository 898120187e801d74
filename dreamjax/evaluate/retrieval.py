"""CLIP R-Precision arithmetic (DreamFusion §4, Dream Fields §5.1): retrieval of a render's caption among a caption
set, R@1 per run, and the mean ± SEM over runs. Pure NumPy; no model here.

A render *retrieves* its caption when the cosine similarity of its image embedding to the true caption's text
embedding is strictly larger than to every other caption of the set. A tie with another caption counts as a failure
(a pessimistic rule: Dream Fields' `compute_query_rank` sorts the scores, so there a tie is broken by the captions'
order, which is arbitrary).
"""

from __future__ import annotations

import dataclasses

import numpy as np


def caption_set(distractors: list[str], true_caption: str) -> tuple[list[str], int]:
  """The captions a run is ranked against and the index of its own: the distractor set with `true_caption` appended
  when it is not in it already (compared exactly, after stripping surrounding white space)."""
  captions = [c.strip() for c in distractors]
  true_caption = true_caption.strip()
  if true_caption in captions:
    return captions, captions.index(true_caption)
  return captions + [true_caption], len(captions)


def normalize(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (float64)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarities(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
  """Cosine similarities [N images, C captions] of image embeddings [N, D] and text embeddings [C, D]."""
  return normalize(image_emb) @ normalize(text_emb).T


def ranks(sims: np.ndarray, true_index) -> np.ndarray:
  """Rank of the true caption per render (0 = retrieved), [N]: the number of *other* captions whose similarity is at
  least the true caption's, so a tie ranks the true caption behind the tied one. sims [N, C]; true_index int or [N]."""
  sims = np.asarray(sims)
  n = sims.shape[0]
  idx = np.broadcast_to(np.asarray(true_index), (n,))
  true = sims[np.arange(n), idx]
  at_least = (sims >= true[:, None]).sum(axis=1)
  return at_least - 1  # the true caption itself is always counted once


def hits_at_1(sims: np.ndarray, true_index) -> np.ndarray:
  """bool [N]: the true caption is strictly the most similar caption of each render."""
  return ranks(sims, true_index) == 0


@dataclasses.dataclass(frozen=True)
class Summary:
  """R@1 over runs: the mean of per-run scores (each the fraction of its renders that retrieve their caption), its
  standard error std(ddof=1) / sqrt(n) (None for a single run), and the counts behind it."""
  mean: float
  sem: float | None
  runs: int
  renders: int

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def run_score(hits) -> float:
  """A run's R@1: the fraction of its renders (azimuths) whose caption is retrieved."""
  hits = np.asarray(hits, np.float64)
  if hits.size == 0:
    raise ValueError("a run needs at least one render")
  return float(hits.mean())


def summarize(scores, renders: int | None = None) -> Summary:
  """Mean ± SEM over runs of per-run scores (floats in [0, 1]); `renders` is the total number of renders behind
  them (default: one per run)."""
  scores = np.asarray(scores, np.float64)
  if scores.size == 0:
    raise ValueError("no runs to summarise")
  n = scores.size
  sem = float(np.std(scores, ddof=1) / np.sqrt(n)) if n > 1 else None
  return Summary(mean=float(scores.mean()), sem=sem, runs=n, renders=n if renders is None else int(renders))
