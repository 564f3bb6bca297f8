"""Held-out evaluation of an end-to-end world model: the AC evaluator's latent rollout error (L1 and MSE per
horizon, against copying the last observed frame), the embeddings' collapse monitors, and (datasets with a `state`)
probes of the per-frame physical state from three feature sets each (fit on `eval.probe_train_split`, at most
`eval.probe_clips` clips; scored on the evaluated clips):
  linear     ridge on the trained model's embeddings (what the planner compares), a randomly initialised model's,
             and pixels area-averaged to 16 x 16
  attentive  (`eval.attentive_probes`) learned queries over the encoder's tokens (before pooling and projector),
             the random-init encoder's, and raw pixel patches (probes.attentive_probe, `eval.probe_steps` steps)
The probe of frame t sees the features of frames t-h+1..t (h = `eval.probe_history`; attentive: token by token):
one frame shows no velocity, so qvel needs h >= 2, for every feature set alike."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from worldmodel import metrics, probes
from worldmodel.data import pipeline, records
from worldmodel.models import vit
from worldmodel.models.wm import WorldModel
from worldmodel.objectives import ac_eval

MONITORS = ("monitor_target_std", "monitor_rankme", "monitor_cross_cosine")
PIXEL_GRID = 16  # pixel baseline: frames area-averaged to 16 x 16 x 3 (768 features per frame)
SATURATED = 0.95  # a group every feature set probes above this says nothing about the encoder


def pixel_features(video_BTHWC: np.ndarray) -> np.ndarray:
  """[B, T, H, W, C] frames → [B, T, g*g*C] block means on a PIXEL_GRID grid (g = min(PIXEL_GRID, H)), in [0, 1]."""
  B, T, H, W, C = video_BTHWC.shape
  g = min(PIXEL_GRID, H, W)
  v = np.asarray(video_BTHWC)[:, :, : H // g * g, : W // g * g]
  v = v / np.float32(255.0) if v.dtype == np.uint8 else v.astype(np.float32)
  return v.reshape(B, T, g, H // g, g, W // g, C).mean(axis=(3, 5)).reshape(B, T, -1)


def pixel_patches(video_BTHWC: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
  """[B, T, H, W, C] frames → [B, T, L, p*p*C] raw patches in [0, 1], the encoder's own patch grid."""
  B, T = video_BTHWC.shape[:2]
  v = np.asarray(video_BTHWC)
  v = v / np.float32(255.0) if v.dtype == np.uint8 else v.astype(np.float32)
  x_BNP = np.asarray(vit.patchify(v.reshape(B * T, 1, *v.shape[2:]), (1, *patch)))
  return x_BNP.reshape(B, T, *x_BNP.shape[1:])


def with_history(x_BTF: np.ndarray, h: int) -> np.ndarray:
  """[B, T, (L,) F] → [B, T-h+1, (L,) h*F]: frame t's features (token by token) next to those of the h-1 frames
  before it."""
  T = x_BTF.shape[1]
  return np.concatenate([x_BTF[:, k : T - h + 1 + k] for k in range(h)], axis=-1)


def saturated_groups(r2: dict) -> list[str]:
  """State groups where every feature set's R² is above SATURATED (reported, not counted)."""
  groups = set.intersection(*(set(v) for v in r2.values()))
  return sorted(g for g in groups if all(v[g] > SATURATED for v in r2.values()))


class Evaluator(ac_eval.Evaluator):
  def __init__(self, model, config, num_media: int = 4):
    super().__init__(model, config, num_media)
    self.model, self.monitors, self.has_state = model, metrics.RunningMean(), False

  def update(self, batch: dict, out: dict) -> None:
    super().update(batch, out)
    valid = np.asarray(batch["valid"]) > 0
    if valid.any():
      self.monitors.update({k: np.asarray(out[f"{k}_B"])[valid].mean() for k in MONITORS}, weight=int(valid.sum()))
      self.has_state |= "state" in batch

  def finish(self, out_dir: str, num_clips: int) -> dict:
    result = super().finish(out_dir, num_clips)
    result |= {k.replace("monitor_", "embedding_"): float(v) for k, v in self.monitors.result().items()}
    if self.has_state and self.config.eval.probes:
      r2 = self._probes(num_clips)
      for kind, by_set in r2.items():
        result[f"probe_r2_{kind}"] = by_set
        result[f"probe_saturated_groups{'' if kind == 'linear' else '_' + kind}"] = saturated_groups(by_set)
      result["probe_history"] = int(self.config.eval.probe_history)
    return result

  def _features(self, extractors: dict, split: str, max_clips: int | None):
    """Per feature set [N, h*F] and the states [N, S] of every probed frame of a split."""
    c, h = self.config, int(self.config.eval.probe_history)
    xs, ys = {k: [] for k in extractors}, []
    batches, _ = pipeline.eval_batches(c.data, split, c.eval.batch_size, max_clips)
    for batch in batches:
      valid = np.asarray(batch["valid"]) > 0
      for k, f in extractors.items():
        xs[k].append(with_history(np.asarray(f(batch["video"]), np.float32)[valid], h))
      ys.append(np.asarray(batch["state"])[valid][:, h - 1 :])
    flat = lambda a: (a := np.concatenate(a)).reshape(-1, *a.shape[2:])  # noqa: E731  (clips x frames)
    return {k: flat(v) for k, v in xs.items()}, flat(ys)

  def _probes(self, num_clips: int) -> dict:
    """R² per state group, {linear: {trained, random_init, pixels}, attentive: {...}}."""
    c = self.config
    if not 1 <= c.eval.probe_history <= c.data.num_frames:
      raise ValueError(f"config key 'eval.probe_history' ({c.eval.probe_history}) must be in 1..{c.data.num_frames}")
    meta = records.read_meta(pipeline.data_dirs(c.data)[0], pipeline.feature_map(c.data))
    groups, periodic = meta.get("state_groups") or {}, meta.get("periodic_state") or []
    random_init = WorldModel(c.model, rngs=nnx.Rngs(c.seed + 1000))
    encode = nnx.jit(lambda m, v: m.encode(v)[:, :, 0])
    tokens = nnx.jit(lambda m, v: m.tokens(v))
    patch = tuple(c.model.encoder_model.tubelet[1:])
    extractors = {
      ("linear", "trained"): lambda v: encode(self.model, jax.numpy.asarray(v)),
      ("linear", "random_init"): lambda v: encode(random_init, jax.numpy.asarray(v)),
      ("linear", "pixels"): pixel_features,
    }
    if c.eval.attentive_probes:
      extractors |= {
        ("attentive", "trained"): lambda v: tokens(self.model, jax.numpy.asarray(v)),
        ("attentive", "random_init"): lambda v: tokens(random_init, jax.numpy.asarray(v)),
        ("attentive", "pixels"): lambda v: pixel_patches(v, patch),
      }
    x_tr, s_tr = self._features(extractors, c.eval.probe_train_split, c.eval.probe_clips)
    # The clips this evaluation saw (evaluate's --max_clips may cap them below eval.max_clips).
    x_te, s_te = self._features(extractors, c.eval.split, num_clips or None)
    y_tr, _ = probes.state_targets(s_tr, groups, periodic)
    y_te, g = probes.state_targets(s_te, groups, periodic)
    fit = {
      "linear": probes.ridge_probe,
      "attentive": lambda *xy: probes.attentive_probe(*xy, steps=int(c.eval.probe_steps)),
    }
    r2 = {}
    for kind, name in extractors:
      r2.setdefault(kind, {})[name] = probes.r2_by_group(*fit[kind](x_tr[kind, name], y_tr, x_te[kind, name], y_te), g)
    return r2
