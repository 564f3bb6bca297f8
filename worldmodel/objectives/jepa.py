"""V-JEPA objective: predict the target encoder's features of masked tubes from the context encoder's features.

loss = mean over mask sets of L1(predictor(context), LayerNorm(target_encoder(clip))[targets]) (`model.loss_exp`=1;
2 gives half the squared error, as V-JEPA's loss_exp); the target encoder
is an EMA of the encoder (updated in `after_update`). Masks come from the data pipeline (`sample_transform`) with a
fixed number of tokens per set. Collapse monitors are logged every step (`monitor/...`).

Small-scale options (weights in `model.reg`, 0: off), from the literature on JEPAs trained on little data:
  sigreg         LeJEPA: SIGReg (objectives/_regularisers.py) on the context encoder's tokens, one sample set per mask
                 set (all its context tokens over the batch): keeps the features spread without relying on the EMA
  dense_context  V-JEPA 2.1: the predictor also regresses the target features at the context positions, so every
                 token carries a loss and local detail is not lost
and `model.freeze_patch_embed` (MoCo v3): the patch projection keeps its random init (`lr_scales`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from worldmodel import common, metrics, optim
from worldmodel.common import layer_norm, regression_loss
from worldmodel.data import masks as masks_lib
from worldmodel.models import vit
from worldmodel.models.jepa import JEPA
from worldmodel.objectives import base
from worldmodel.objectives._regularisers import sigreg

REG_DEFAULTS = {"sigreg": 0.0, "sigreg_projections": 256, "dense_context": 0.0}


def create_model(config: ml_collections.ConfigDict, rngs) -> JEPA:
  return JEPA(config.model, rngs=rngs)


def grid(config) -> tuple[int, int, int]:
  m = config.model
  return vit.token_grid(m.frames, m.size, m.tubelet)


def mask_sets(config) -> dict[str, masks_lib.MaskSet]:
  return {name: masks_lib.MaskSet.from_config(c) for name, c in config.model.masks.items()}


def sample_transform(config, *, eval: bool = False):
  # Eval masks use another seed stream than training, but are just as reproducible.
  return masks_lib.MaskTransform(grid(config), mask_sets(config), config.seed + (7919 if eval else 0))


def batch_spec(config: ml_collections.ConfigDict, sharding) -> dict:
  m, B = config.model, config.batch_size
  n = int(np.prod(grid(config)))
  spec = {"video": jax.ShapeDtypeStruct((B, m.frames, m.size, m.size, 3), jnp.uint8, sharding=sharding)}
  for name, ms in mask_sets(config).items():
    k = masks_lib.context_count(ms, grid(config))
    spec[f"{name}_ctx"] = jax.ShapeDtypeStruct((B, k), jnp.int32, sharding=sharding)
    spec[f"{name}_tgt"] = jax.ShapeDtypeStruct((B, n - k), jnp.int32, sharding=sharding)
  return spec


def check_config(config: ml_collections.ConfigDict) -> None:
  m = config.model
  common.check_ints("model.tubelet", m.tubelet, length=3, minimum=1)
  for key in ("frames", "size"):
    common.check_ints(f"model.{key}", (m[key],), minimum=1)
  for part in ("encoder", "predictor"):
    for key in ("width", "depth", "heads"):
      common.check_ints(f"model.{part}.{key}", (m[part][key],), minimum=1)
    if m[part].width % m[part].heads:
      raise ValueError(
        f"config key 'model.{part}.width' ({m[part].width}) must be divisible by 'model.{part}.heads' ({m[part].heads})"
      )
  for key, n in (("frames", 0), ("size", 1), ("size", 2)):
    if m[key] % m.tubelet[n]:
      raise ValueError(f"config key 'model.{key}' ({m[key]}) is not divisible by model.tubelet[{n}] ({m.tubelet[n]})")
  if not m.masks:
    raise ValueError("config key 'model.masks' needs at least one mask set")
  masks_lib.check_mask_sets(grid(config), list(mask_sets(config).values()))
  unknown = sorted(set(m.reg) - set(REG_DEFAULTS))
  if unknown:
    raise ValueError(f"config key 'model.reg' has unknown options {unknown}; choose from {sorted(REG_DEFAULTS)}")
  for k in ("sigreg", "dense_context"):
    if not m.reg[k] >= 0:
      raise ValueError(f"config key 'model.reg.{k}' ({m.reg[k]}) must be >= 0 (0: off)")
  common.check_ints("model.reg.sigreg_projections", (m.reg.sigreg_projections,), minimum=1)
  vit.PositionTable(m.pos, grid(config), m.encoder.width, m.encoder.heads)  # validates model.pos


def _forward(model: JEPA, batch: dict, names, dense: bool = False) -> tuple[jax.Array, jax.Array, list, list, list]:
  """(raw target-encoder features, their layer norm (the regression target), context features, predictions and
  targets per set). dense: predictions and targets cover the context positions too, those first."""
  video = common.to_float(batch["video"])
  raw_BND = jax.lax.stop_gradient(model.target_encoder(video))
  target_BND = layer_norm(raw_BND)
  sets, targets = [], []
  for name in names:
    ctx_ids, tgt_ids = batch[f"{name}_ctx"], batch[f"{name}_tgt"]
    sets.append((model.encoder(video, ctx_ids), ctx_ids, tgt_ids))
    ids = jnp.concatenate([ctx_ids, tgt_ids], axis=1) if dense else tgt_ids
    targets.append(vit.gather_tokens(target_BND, ids))
  preds = model.predictor(sets, dense=dense)
  ctx = [c for c, _, _ in sets]
  return raw_BND, target_BND, ctx, [p.astype(jnp.float32) for p in preds], targets


def loss_fn(model: JEPA, batch: dict, *, rng: jax.Array, train: bool):
  del train  # masks come with the batch; no dropout
  names, reg = _names(batch), dict(model.reg)
  dense = reg.get("dense_context", 0.0) > 0
  _, target_BND, ctx, preds, targets = _forward(model, batch, names, dense=dense)
  K = [c.shape[1] if dense else 0 for c in ctx]  # predictions before K are the context positions'
  per_set = [regression_loss(p[:, k:], t[:, k:], model.loss_exp) for p, t, k in zip(preds, targets, K)]
  loss = sum(per_set) / len(per_set)
  logs = {f"loss/{n}": l for n, l in zip(names, per_set)}
  if dense:
    logs["loss/dense_context"] = sum(
      regression_loss(p[:, :k], t[:, :k], model.loss_exp) for p, t, k in zip(preds, targets, K)
    ) / len(names)
    loss = loss + reg["dense_context"] * logs["loss/dense_context"]
  if reg.get("sigreg", 0.0) > 0:
    sets_GND = [c.reshape(1, -1, c.shape[-1]) for c in ctx]  # every context token of the batch: one sample set
    logs["loss/sigreg"] = sum(sigreg(z, rng, int(reg["sigreg_projections"])) for z in sets_GND) / len(ctx)
    loss = loss + reg["sigreg"] * logs["loss/sigreg"]
  preds_tgt = preds[0][:, K[0] :]
  return loss, {"loss": loss, **logs, **monitors(model, target_BND, preds_tgt)}


def _names(batch: dict) -> list[str]:
  """Mask-set names in a fixed (sorted) order: set i uses the predictor's mask token i."""
  return sorted(k[:-4] for k in batch if k.endswith("_ctx"))


def monitors(model: JEPA, target_BND: jax.Array, pred_BMD: jax.Array) -> dict:
  """Collapse diagnostics: spread of target and predicted features, effective rank, cross-clip similarity."""
  target_BND = jax.lax.stop_gradient(target_BND)
  return {
    "monitor/target_std": metrics.feature_std(target_BND, across_clips=True),
    "monitor/pred_std": metrics.feature_std(jax.lax.stop_gradient(pred_BMD)),
    "monitor/rankme": metrics.rankme(target_BND),
    "monitor/cross_cosine": metrics.mean_cross_cosine(target_BND),
  }


def lr_scales(config, params: dict):
  """`model.freeze_patch_embed`: the encoder's patch projection keeps its random initialisation (step and weight
  decay scaled by 0; the EMA target's copy stays equal to it), as MoCo v3's frozen random patch projection: the
  tubelet's raw content, frame differences included, stays linearly in every token while the blocks learn."""
  if not config.model.get("freeze_patch_embed", False):
    return None

  def scale(path, _):
    keys = [getattr(p, "key", None) for p in path[:2]]
    return np.float32(0.0 if keys == ["encoder", "patch_embed"] else 1.0)

  return jax.tree_util.tree_map_with_path(scale, params)


def ema_momentum(config, step: jax.Array) -> jax.Array:
  """Linear from optim.ema_start to optim.ema_end over the schedule (V-JEPA: 0.998 → 1.0; V-JEPA 2: constant)."""
  o = config.optim
  frac = jnp.clip(step.astype(jnp.float32) / optim.schedule_steps(o, config.total_steps), 0.0, 1.0)
  return o.ema_start + (o.ema_end - o.ema_start) * frac


def after_update(config, params: dict, extra: dict, step: jax.Array) -> tuple[dict, dict]:
  """target ← m·target + (1 - m)·encoder, on the weights just updated by the optimizer."""
  m = ema_momentum(config, step)
  target = jax.tree.map(lambda t, p: m * t + (1.0 - m) * p, extra["target_encoder"], params["encoder"])
  diff = jax.tree.map(lambda t, p: jnp.sum(jnp.square(t - p)), target, params["encoder"])
  norm = jax.tree.map(lambda p: jnp.sum(jnp.square(p)), params["encoder"])
  distance = jnp.sqrt(sum(jax.tree.leaves(diff)) / (sum(jax.tree.leaves(norm)) + 1e-12))
  return {**extra, "target_encoder": target}, {"ema_momentum": m, "monitor/ema_distance": distance}


def eval_step(model: JEPA, batch: dict) -> dict:
  """Per-clip masked-prediction loss, monitors, and target-encoder features for the probes."""
  names = _names(batch)
  raw_BND, target_BND, _, preds, targets = _forward(model, batch, names)
  per_clip = sum(regression_loss(p, t, model.loss_exp, axis=(1, 2)) for p, t in zip(preds, targets)) / len(names)
  return {"loss_B": per_clip, "features": raw_BND, **monitors(model, target_BND, preds[0])}


from worldmodel.objectives.jepa_eval import Evaluator  # noqa: E402  (the evaluator lives in its own file)


@base.register
class Jepa(base.Objective):
  name = "jepa"
  defaults = {
    "model": {"loss_exp": 1.0, "scan_layers": False, "reg": dict(REG_DEFAULTS), "freeze_patch_embed": False},
    "eval": {"probes": True},
  }
  create_model, batch_spec = staticmethod(create_model), staticmethod(batch_spec)
  check_config, check_data = staticmethod(check_config), staticmethod(common.check_frames)
  loss_fn, eval_step, Evaluator = staticmethod(loss_fn), staticmethod(eval_step), Evaluator
  sample_transform, after_update = staticmethod(sample_transform), staticmethod(after_update)
  lr_scales = staticmethod(lr_scales)
  encoder_description = "its EMA target encoder"

  def configure_eval(self, config, *, context=None, perceptual="", probes=True) -> None:
    super().configure_eval(config, context=context, perceptual=perceptual)
    config.eval.probes = config.eval.probes and probes

  def encoder_config(self, config):
    return config.model

  def encoder_weights(self, state: dict):
    return state.get("extra", {}).get("target_encoder")
