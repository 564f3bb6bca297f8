"""Learning-rate schedules and the optimizer (AdamW with clipping, masked weight decay, per-parameter lr scales).

Pure functions of the `optim` config block, so objectives (e.g. JEPA's EMA momentum, which follows the schedule's
length) can use them without importing the runtime.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def schedule_steps(opt: ml_collections.ConfigDict, total_steps: int) -> int:
  # The schedule length is its own key so that stopping and extending a run (total_steps) never changes its past.
  return max(opt.decay_steps if opt.decay_steps > 0 else total_steps, opt.warmup_steps + 1)


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """optim.schedule: 'cosine' (warmup + cosine), 'wsd' (warmup, stable, linear decay over the last
  optim.decay_frac of the schedule: V-JEPA 2's cooldown recipe) or 'constant' (after warmup)."""
  kind, length, warmup = opt.schedule, schedule_steps(opt, total_steps), max(opt.warmup_steps, 1)
  end = opt.lr * opt.final_lr_frac
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, opt.lr, warmup, length, end_value=end)
  if kind == "constant":
    return optax.warmup_constant_schedule(0.0, opt.lr, warmup)
  if kind == "wsd":
    decay = max(1, int(round(length * opt.decay_frac)))
    return optax.join_schedules(
      [optax.warmup_constant_schedule(0.0, opt.lr, warmup), optax.linear_schedule(opt.lr, end, decay)],
      [max(length - decay, warmup)],
    )
  raise ValueError(f"config key 'optim.schedule' must be 'cosine', 'wsd' or 'constant', got {kind!r}")


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiply each update by its own factor (a tree like the params; leaves broadcast): per-layer learning rates."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
  opt: ml_collections.ConfigDict, schedule: optax.Schedule, total_steps: int = 0, lr_scales=None
) -> optax.GradientTransformation:
  """AdamW with global-norm clipping; `lr_scales` (e.g. layer-wise decay from the objective) scales the step of
  each parameter, weight decay included (as PyTorch's per-group lr does)."""

  # Weight decay on matrices only: biases, norms, mask tokens and position tables are left alone.
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)

  wd = opt.weight_decay
  if opt.weight_decay_end is not None and opt.weight_decay_end != opt.weight_decay:  # V-JEPA: cosine 0.04→0.4
    wd = optax.cosine_decay_schedule(
      opt.weight_decay,
      schedule_steps(opt, total_steps),
      alpha=opt.weight_decay_end / opt.weight_decay if opt.weight_decay else 0.0,
    )
    if not opt.weight_decay:
      raise ValueError("config key 'optim.weight_decay' must be > 0 when 'optim.weight_decay_end' is set")
  chain = [
    optax.clip_by_global_norm(opt.grad_clip),
    optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=decay_mask),
  ]
  return optax.chain(*chain, *([scale_by_tree(lr_scales)] if lr_scales is not None else []))
