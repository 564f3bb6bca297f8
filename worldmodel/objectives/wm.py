"""End-to-end JEPA world model from pixels (LeWM / PLDM recipes): encoder + action-conditioned predictor, jointly.

loss = next-embedding half squared error (`model.loss_exp=1`: L1), teacher-forced over the clip
     + the same of a `model.rollout_steps`-step autoregressive rollout from frame 0 (predictions fed back)
     + (`model.dense.weight` > 0) a next-frame loss on every token: tokens projected, predicted one frame ahead
       by a small AC predictor over the token grid, SIGReg per (frame, position) (`model.dense.sigreg`)
     + anti-collapse regularisers, weights in `model.reg` (0 switches one off):
         sigreg             LeWM / LeJEPA: Epps–Pulley statistic of random 1-D projections of each time step's
                            embeddings over the batch against N(0, 1)
         variance, covariance   VICReg: hinge on each dimension's std (>= 1) and off-diagonal covariance
         inverse_dynamics   PLDM: predict a_t from (z_t, z_t+1)
         smoothness         PLDM: mean squared change of consecutive embeddings
No EMA target and no stop-gradient (LeWM): the regulariser alone keeps the embeddings spread.
Frame skip comes from the data (`generate --source=dmc:... --action_repeat=K`: one frame per K control steps, the
action held over them); `data.frame_stride` > 1 would drop the actions of the skipped frames, so it is refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from worldmodel import common, metrics
from worldmodel.models.wm import WorldModel
from worldmodel.objectives import base
from worldmodel.objectives._regularisers import sigreg, vicreg_terms

REGULARISERS = ("sigreg", "variance", "covariance", "inverse_dynamics", "smoothness")


# -- contract hooks ------------------------------------------------------------------------------------------
def resolve_config(config: ml_collections.ConfigDict) -> None:
  """Fill the encoder's clip shape (one tubelet of one frame) and the action size from the data."""
  m = config.model
  m.encoder_model.size, m.encoder_model.frames = m.size, m.encoder_model.tubelet[0]
  common.fill_action_dim(config, "a world model needs the 'action' feature (generate --source=dmc:... or bouncing)")


def create_model(config: ml_collections.ConfigDict, rngs) -> WorldModel:
  return WorldModel(config.model, rngs=rngs)


def batch_spec(config: ml_collections.ConfigDict, sharding) -> dict:
  return common.video_action_spec(config, sharding)


def check_config(config: ml_collections.ConfigDict) -> None:
  m = config.model
  for key in ("frames", "max_frames", "size", "action_dim", "rollout_steps", "embed_dim", "projector_width"):
    common.check_ints(f"model.{key}", (m[key],), minimum=1)
  dense = m.get("dense")
  predictors = {"model.predictor": m.predictor} | ({"model.dense.predictor": dense.predictor} if dense else {})
  for name, p in predictors.items():
    for key in ("width", "depth", "heads"):
      common.check_ints(f"{name}.{key}", (p[key],), minimum=1)
    if p.width % p.heads:
      raise ValueError(f"config key '{name}.width' ({p.width}) must be divisible by its heads")
  if m.frames < 2 or m.frames > m.max_frames:
    raise ValueError(f"config key 'model.frames' ({m.frames}) must be in 2..model.max_frames ({m.max_frames})")
  if not 1 <= m.context_frames < m.frames:
    raise ValueError(f"config key 'model.context_frames' ({m.context_frames}) must be in 1..{m.frames - 1}")
  if m.loss_exp not in (1, 2):
    raise ValueError(f"config key 'model.loss_exp' ({m.loss_exp}) must be 2 (squared error) or 1 (L1)")
  if m.rollout_steps >= m.frames:
    raise ValueError(f"config key 'model.rollout_steps' ({m.rollout_steps}) must be < model.frames ({m.frames})")
  if m.size % m.encoder_model.tubelet[1]:
    raise ValueError(f"config key 'model.size' ({m.size}) must be a multiple of the tubelet's patch size")
  unknown = sorted(set(m.reg) - set(REGULARISERS) - {"sigreg_projections"})
  if unknown:
    raise ValueError(f"config key 'model.reg' has unknown regularisers {unknown}; choose from {REGULARISERS}")
  for k in REGULARISERS:
    if not m.reg[k] >= 0:
      raise ValueError(f"config key 'model.reg.{k}' ({m.reg[k]}) must be >= 0 (0: off)")
  common.check_ints("model.reg.sigreg_projections", (m.reg.sigreg_projections,), minimum=1)
  if dense:
    for key in ("weight", "sigreg"):
      if not dense[key] >= 0:
        raise ValueError(f"config key 'model.dense.{key}' ({dense[key]}) must be >= 0 (0: off)")
    common.check_ints("model.dense.dim", (dense.dim,), minimum=1)
  if m.reg.sigreg == 0 and m.reg.variance == 0:
    raise ValueError(
      "config keys 'model.reg.sigreg' and 'model.reg.variance' are both 0: nothing stops the jointly trained "
      "encoder from collapsing to a constant (set one > 0)"
    )
  if config.batch_size < 2:
    raise ValueError(
      f"config key 'batch_size' ({config.batch_size}) must be >= 2: the regularisers are batch statistics"
    )
  if config.data.frame_stride != 1:
    raise ValueError(
      f"config key 'data.frame_stride' ({config.data.frame_stride}) must be 1 for a world model: a stride keeps "
      "one action per kept frame and drops the others; skip frames at generation (--action_repeat=K)"
    )


def _mse(a, b, axis=None):
  return jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2, axis=axis)


def _pred_loss(model: WorldModel, pred, target):
  return common.regression_loss(pred.astype(jnp.float32), target.astype(jnp.float32), model.loss_exp)


def monitors(z_BTND: jax.Array) -> dict:
  """Collapse monitors under the keys the trainer checks (metrics.COLLAPSE_LIMITS): spread across clips, rank."""
  z = jax.lax.stop_gradient(z_BTND[:, :, 0])
  return {
    "monitor/target_std": metrics.feature_std(z, across_clips=True),
    "monitor/rankme": metrics.rankme(z),
    "monitor/cross_cosine": metrics.mean_cross_cosine(z),
  }


def _dense_loss(model: WorldModel, x_BTLW, a_BTA, rng):
  """`model.dense`: every token projected, its next-frame value predicted from all tokens of frames <= t and the
  actions (teacher forced), plus SIGReg over the batch per (frame, position) to keep the projections spread."""
  zt_BTLd = model.dense_proj(x_BTLW)
  pred = model.dense_predictor(zt_BTLd[:, :-1], a_BTA[:, :-1])
  dense = _pred_loss(model, pred, zt_BTLd[:, 1:])
  logs = {"loss/dense": dense}
  if model.dense_sigreg:
    B, T, L, d = zt_BTLd.shape
    spread = sigreg(
      jnp.transpose(zt_BTLd, (1, 2, 0, 3)).reshape(T * L, B, d), rng, int(dict(model.reg)["sigreg_projections"])
    )
    dense, logs = dense + model.dense_sigreg * spread, logs | {"loss/dense_sigreg": spread}
  return dense, logs


def loss_fn(model: WorldModel, batch: dict, *, rng: jax.Array, train: bool):
  m = dict(model.reg)
  z, x_BTLW = model.encode_with_tokens(batch["video"], train=train)  # [B, T, 1, D], [B, T, L, W]
  a = batch["action"].astype(jnp.float32)
  teacher = _pred_loss(model, model.predictor(z[:, :-1], a[:, :-1]), z[:, 1:])
  seq, roll = z[:, :1], []
  for s in range(1, min(model.rollout_steps, z.shape[1] - 1) + 1):
    out = model.predictor(seq, a[:, :s])[:, -1]
    roll.append(_pred_loss(model, out, z[:, s]))
    seq = jnp.concatenate([seq, out[:, None]], axis=1)
  rollout = sum(roll) / len(roll)
  logs = {"loss/teacher_forcing": teacher, "loss/rollout": rollout}
  z_BTD = z[:, :, 0]
  terms = {"sigreg": sigreg(jnp.swapaxes(z_BTD, 0, 1), rng, int(m["sigreg_projections"])) if m["sigreg"] else 0.0}
  if m["variance"] or m["covariance"]:
    terms["variance"], terms["covariance"] = vicreg_terms(z_BTD)
  if m["inverse_dynamics"]:
    terms["inverse_dynamics"] = _mse(model.inverse_dynamics(z), a[:, :-1])
  if m["smoothness"]:
    terms["smoothness"] = _mse(z_BTD[:, 1:], z_BTD[:, :-1])
  loss = teacher + rollout + sum(m[k] * v for k, v in terms.items() if m[k])
  logs |= {f"loss/{k}": v for k, v in terms.items() if m[k]}
  if model.dense_weight:
    dense, dense_logs = _dense_loss(model, x_BTLW, a, jax.random.fold_in(rng, 1))
    loss, logs = loss + model.dense_weight * dense, logs | dense_logs
  return loss, {"loss": loss, **logs, **monitors(z)}


def eval_step(model: WorldModel, batch: dict) -> dict:
  """As the AC evaluator expects: per clip and horizon, L1 and MSE of the rollout from the first C frames and of
  copying frame C-1, the teacher-forced L1; plus the batch's collapse monitors (per clip, equal)."""
  z = model.encode(batch["video"])
  a = batch["action"].astype(jnp.float32)
  T, C = z.shape[1], model.context_frames
  preds = model.rollout(z[:, :C], a, T - C)
  out = {"teacher_B": jnp.mean(jnp.abs(model.predictor(z[:, :-1], a[:, :-1]) - z[:, 1:]), axis=(1, 2, 3))}
  for name, guess in (("rollout", preds), ("copy_last", z[:, C - 1 : C])):
    err = guess.astype(jnp.float32) - z[:, C:]
    out[f"{name}_BH"] = jnp.mean(jnp.abs(err), axis=(2, 3))
    out[f"{name}_mse_BH"] = jnp.mean(err**2, axis=(2, 3))
  B = z.shape[0]
  out["embed_BTD"] = z[:, :, 0]  # for the state probes
  out |= {k.replace("monitor/", "monitor_") + "_B": jnp.full((B,), v) for k, v in monitors(z).items()}
  return out


from worldmodel.objectives.wm_eval import Evaluator  # noqa: E402


@base.register
class WorldModelObjective(base.Objective):
  name = "wm"
  defaults = {
    "eval": {
      "probes": True,
      "probe_train_split": "train",
      "probe_clips": 256,
      "probe_history": 1,
      "rollout_frames": 0,
      "attentive_probes": True,  # workdirs from before the attentive probes get them too
      "probe_steps": 1500,
    }
  }
  create_model, batch_spec = staticmethod(create_model), staticmethod(batch_spec)
  check_config, check_data = staticmethod(check_config), staticmethod(common.check_frames)
  loss_fn, eval_step, Evaluator = staticmethod(loss_fn), staticmethod(eval_step), Evaluator
  resolve_config = staticmethod(resolve_config)
  plannable = True
  encoder_description = "its jointly trained encoder (before the projector)"

  def configure_eval(self, config, *, context=None, perceptual="", probes=True) -> None:
    super().configure_eval(config, perceptual=perceptual, probes=probes)
    config.eval.probes = config.eval.probes and probes
    if config.eval.rollout_frames:  # longer eval clips than training ones: rollout error at larger horizons
      config.data.num_frames = config.model.frames = int(config.eval.rollout_frames)
    if context is not None:
      config.model.context_frames = context
      check_config(config)

  def encoder_config(self, config):
    return config.model.encoder_model

  def encoder_weights(self, state: dict):
    return state.get("params", {}).get("encoder")
