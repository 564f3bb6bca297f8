"""Multi-block spatiotemporal tube masks (V-JEPA) with a fixed number of context tokens per mask set.

A mask set places `num_blocks` random rectangles (area `spatial_scale` of the frame grid, aspect ratio from
`aspect_ratio`) spanning `temporal_scale` of the clip; their union is the prediction target and the rest the
context. V-JEPA truncates every sample to the batch minimum; we instead fix the context count to
round(keep · N) per set, so shapes never change and jit never recompiles: extra context tokens move to the target,
and a draw that leaves too little context is redrawn. Masks are a pure function of (seed, sample index), like the
clips, so they resume and re-shard with the data order. Token ids are raster order (t slowest, then h, then w).
"""

from __future__ import annotations

import dataclasses

import numpy as np

MAX_TRIES = 20


@dataclasses.dataclass(frozen=True)
class MaskSet:
  num_blocks: int
  spatial_scale: float
  aspect_ratio: tuple[float, float]
  temporal_scale: float
  keep: float  # fraction of tokens the context encoder sees
  anchor: str = "random"  # where blocks sit in time: 'random', or 'end' (predict the future from the past)

  @classmethod
  def from_config(cls, c) -> "MaskSet":
    return cls(
      int(c.num_blocks),
      float(c.spatial_scale),
      tuple(float(a) for a in c.aspect_ratio),
      float(c.temporal_scale),
      float(c.keep),
      str(c.get("anchor", "random")),
    )


def context_count(mask_set: MaskSet, grid_THW: tuple[int, int, int]) -> int:
  return int(round(mask_set.keep * int(np.prod(grid_THW))))


def _blocks_mask(rng: np.random.Generator, grid_THW, ms: MaskSet) -> np.ndarray:
  """Boolean [T, H, W]: True where some block covers the token."""
  T, H, W = grid_THW
  masked = np.zeros(grid_THW, bool)
  area = ms.spatial_scale * H * W
  t_len = max(1, min(T, int(round(ms.temporal_scale * T))))
  for _ in range(ms.num_blocks):
    ar = np.exp(rng.uniform(np.log(ms.aspect_ratio[0]), np.log(ms.aspect_ratio[1])))
    h = int(np.clip(round(np.sqrt(area * ar)), 1, H))
    w = int(np.clip(round(np.sqrt(area / ar)), 1, W))
    t0 = T - t_len if ms.anchor == "end" else rng.integers(0, T - t_len + 1)
    h0, w0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
    masked[t0 : t0 + t_len, h0 : h0 + h, w0 : w0 + w] = True
  return masked


def sample(rng: np.random.Generator, grid_THW, ms: MaskSet) -> tuple[np.ndarray, np.ndarray, bool]:
  """(context ids [K], target ids [N-K], both sorted; whether the fallback had to top up the context)."""
  k = context_count(ms, grid_THW)
  for _ in range(MAX_TRIES):
    context = np.flatnonzero(~_blocks_mask(rng, grid_THW, ms))
    if len(context) >= k:
      break
  fallback = len(context) < k
  n = int(np.prod(grid_THW))
  if fallback:  # rare by construction (check_mask_sets): top up with random target tokens
    others = np.setdiff1d(np.arange(n), context)
    context = np.concatenate([context, rng.choice(others, k - len(context), replace=False)])
  context = np.sort(rng.choice(context, k, replace=False))
  keep = np.ones(n, bool)
  keep[context] = False
  return context.astype(np.int32), np.flatnonzero(keep).astype(np.int32), fallback


def check_mask_sets(grid_THW, mask_sets: list[MaskSet], *, draws: int = 200) -> list[float]:
  """Config-time check that every set can produce its fixed counts; returns the mean context fraction of each."""
  n = int(np.prod(grid_THW))
  out = []
  for i, ms in enumerate(mask_sets):
    where = f"config key 'model.masks' (set {i})"
    if ms.num_blocks < 1 or not 0 < ms.spatial_scale <= 1 or not 0 < ms.temporal_scale <= 1:
      raise ValueError(f"{where}: need num_blocks >= 1 and spatial/temporal scales in (0, 1], got {ms}")
    if ms.anchor not in ("random", "end"):
      raise ValueError(f"{where}: anchor must be 'random' or 'end', got {ms.anchor!r}")
    if not 0 < ms.aspect_ratio[0] <= ms.aspect_ratio[1]:
      raise ValueError(f"{where}: aspect_ratio must be (low, high) with 0 < low <= high, got {ms.aspect_ratio}")
    k = context_count(ms, grid_THW)
    if not 1 <= k <= n - 1:
      raise ValueError(f"{where}: keep={ms.keep} of {n} tokens gives {k} context tokens; need 1..{n - 1}")
    rng = np.random.default_rng(0)
    counts = np.array([(~_blocks_mask(rng, grid_THW, ms)).sum() for _ in range(draws)])
    if np.mean(counts >= k) < 0.1:
      raise ValueError(
        f"{where}: {ms.num_blocks} blocks of scale {ms.spatial_scale} leave {counts.mean() / n:.1%} of the {n} "
        f"tokens unmasked on average (at most {counts.max()}), but keep={ms.keep} asks for {k} context tokens in "
        f"every sample. Lower 'keep' or use fewer / smaller blocks."
      )
    out.append(float(counts.mean() / n))
  return out


class MaskTransform:
  """Adds `NAME_ctx` [K] and `NAME_tgt` [N-K] token ids per named mask set; a pure function of (seed, g)."""

  def __init__(self, grid_THW, mask_sets: dict[str, MaskSet], seed: int):
    self.grid, self.sets, self.seed = tuple(grid_THW), dict(mask_sets), seed

  def __call__(self, clip: dict, g: int) -> dict:
    rng = np.random.default_rng([self.seed, int(g), 17])
    for name, ms in self.sets.items():
      clip[f"{name}_ctx"], clip[f"{name}_tgt"], _ = sample(rng, self.grid, ms)
    return clip
