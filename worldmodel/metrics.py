"""Evaluation metrics: frame quality (jax), code-usage statistics and running means (numpy, host side)."""

from __future__ import annotations

import math

import dm_pix
import jax.numpy as jnp
import numpy as np

# dm_pix.psnr is +inf for identical frames; clip so split averages stay finite.
PSNR_MAX_DB = 100.0


def video_psnr_ssim(truth_BTHWC, pred_BTHWC) -> dict:
  """Per-frame PSNR (dB, clipped at PSNR_MAX_DB), SSIM (Gaussian 11x11, sigma 1.5) and MSE.

  Inputs are floats in [0, 1] (max_val = 1). Returns {"psnr_BT", "ssim_BT", "mse_BT"}, each [B, T].
  jit-friendly: shapes are static, no host callbacks.
  """
  assert truth_BTHWC.shape == pred_BTHWC.shape, (truth_BTHWC.shape, pred_BTHWC.shape)
  B, T, H, W, C = truth_BTHWC.shape
  # Frames are independent: flatten (B, T) into the image batch axis dm_pix expects.
  truth_NHWC = jnp.reshape(truth_BTHWC, (B * T, H, W, C)).astype(jnp.float32)
  pred_NHWC = jnp.reshape(pred_BTHWC, (B * T, H, W, C)).astype(jnp.float32)
  mse_N = jnp.mean(jnp.square(truth_NHWC - pred_NHWC), axis=(1, 2, 3))
  psnr_N = jnp.minimum(dm_pix.psnr(truth_NHWC, pred_NHWC), PSNR_MAX_DB)
  ssim_N = dm_pix.ssim(truth_NHWC, pred_NHWC, max_val=1.0)
  return {
    "psnr_BT": psnr_N.reshape(B, T),
    "ssim_BT": ssim_N.reshape(B, T),
    "mse_BT": mse_N.reshape(B, T),
  }


class CodeStats:
  """Histogram of discrete code indices accumulated over an eval split."""

  def __init__(self, num_codes: int):
    self.num_codes = int(num_codes)
    self.counts_K = np.zeros(self.num_codes, dtype=np.int64)

  def update(self, indices: np.ndarray) -> None:
    idx = np.asarray(indices).reshape(-1).astype(np.int64)
    if idx.size == 0:
      return
    if idx.min() < 0 or idx.max() >= self.num_codes:
      raise ValueError(f"code index out of range [0, {self.num_codes}): {idx.min()}..{idx.max()}")
    self.counts_K += np.bincount(idx, minlength=self.num_codes)

  def _probs_K(self) -> np.ndarray:
    total = self.counts_K.sum()
    return self.counts_K / total if total else np.zeros(self.num_codes)

  def usage(self) -> float:
    """Fraction of the codebook used at least once."""
    return float(np.count_nonzero(self.counts_K)) / self.num_codes

  def entropy_bits(self) -> float:
    """Entropy of the empirical code distribution, bits per token (0 if nothing seen)."""
    p = self._probs_K()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())

  def perplexity(self) -> float:
    """exp(entropy): the effective number of codes in use."""
    return float(2.0 ** self.entropy_bits())


def bits_per_pixel(tokens_per_clip: int, num_codes: int, frames: int, height: int, width: int) -> float:
  """Upper bound on the code rate: log2(num_codes) bits per token spread over the clip's pixels."""
  return math.log2(num_codes) * tokens_per_clip / (frames * height * width)


class RunningMean:
  """Weighted mean of dicts of scalars or per-index arrays (e.g. per-frame PSNR_T) over batches.

  Each update passes the batch's *mean* metrics and its weight (number of valid clips), so a
  partial last batch counts in proportion to the clips it holds.
  """

  def __init__(self):
    self._sums = {}
    self._weight = {}

  def update(self, metrics: dict, weight: float = 1.0) -> None:
    weight = float(weight)
    if weight <= 0:
      return  # an all-padding batch contributes nothing
    for key, value in metrics.items():
      v = np.asarray(value, dtype=np.float64)
      if key in self._sums and self._sums[key].shape != v.shape:
        raise ValueError(f"{key}: shape {v.shape} != {self._sums[key].shape}")
      self._sums[key] = self._sums.get(key, 0.0) + weight * v
      self._weight[key] = self._weight.get(key, 0.0) + weight

  def result(self) -> dict:
    """Means so far: python floats for scalars, numpy arrays for per-index metrics."""
    out = {}
    for key, total in self._sums.items():
      mean = total / self._weight[key]
      out[key] = float(mean) if mean.ndim == 0 else mean
    return out

  def total_weight(self) -> float:
    return max(self._weight.values(), default=0.0)

  def reset(self) -> None:
    self._sums.clear()
    self._weight.clear()


# ---------------------------------------------------------------------------------------------------------------
# Representation collapse monitors (jit-friendly): a collapsed encoder maps every input to (nearly) one vector.
# ---------------------------------------------------------------------------------------------------------------
def feature_std(x_BND, across_clips: bool = False) -> jnp.ndarray:
  """Mean std of each channel across all tokens, or (across_clips) across the clips of the batch at the same token
  position: ~0 when the features stop depending on the content, even if they still encode position."""
  x = x_BND.astype(jnp.float32)
  if across_clips:
    # Moments over the batch as products with 1/B: XLA:CPU's reduction over the leading axis is ~10x slower.
    w = jnp.full((x.shape[0],), 1.0 / x.shape[0], jnp.float32)
    mean_ND = jnp.einsum("b,bnd->nd", w, x)
    return jnp.mean(jnp.sqrt(jnp.einsum("b,bnd->nd", w, jnp.square(x - mean_ND))))
  return jnp.mean(jnp.std(x.reshape(-1, x.shape[-1]), axis=0))


def rankme(x_BND, max_rows: int = 2048) -> jnp.ndarray:
  """Effective rank (RankMe, Garrido et al. 2023): exp(entropy of the normalised singular values) of token features.

  Singular values come from the eigenvalues of the D×D Gram matrix (cheaper than an SVD of the tokens).
  """
  x = x_BND.reshape(-1, x_BND.shape[-1]).astype(jnp.float32)
  x = x[:: max(1, x.shape[0] // max_rows)]
  eig = jnp.clip(jnp.linalg.eigvalsh(x.T @ x), 0.0, None)
  s = jnp.sqrt(eig)
  p = s / (jnp.sum(s) + 1e-12) + 1e-12
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


def mean_cross_cosine(x_BND) -> jnp.ndarray:
  """Mean cosine similarity between the mean-pooled features of different clips (1.0 when all clips look alike)."""
  z = jnp.mean(x_BND.astype(jnp.float32), axis=1)
  z = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)
  sim = z @ z.T
  B = z.shape[0]
  return (jnp.sum(sim) - jnp.trace(sim)) / max(B * (B - 1), 1)


# Thresholds that flag collapse: target features that no longer depend on the clip, or an effective rank near 1.
# (cross_cosine is logged but not flagged: clips with a shared static background are alike in a healthy model.)
COLLAPSE_LIMITS = {"monitor/target_std": ("<", 0.02), "monitor/rankme": ("<", 2.0)}


def collapse_warnings(scalars: dict) -> list[str]:
  """Human-readable reasons why logged monitors look like a collapsed representation (empty if healthy)."""
  out = []
  for key, (op, limit) in COLLAPSE_LIMITS.items():
    v = scalars.get(key)
    if v is not None and ((op == "<" and v < limit) or (op == ">" and v > limit)):
      out.append(f"{key}={v:.4g} (healthy: {'>=' if op == '<' else '<='} {limit})")
  return out
