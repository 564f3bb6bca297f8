"""Everything a run builds from a config: mesh, model, optimizer, sharded train state, jitted train step.

Shared by train / evaluate / bench so that all three see the same model, shardings and step function.

The train state is a plain pytree (what Orbax saves):
  {"step": int32, "params": nnx.Param values, "extra": other model variables (e.g. VQ codebook EMA), "opt": optax state}
Models are Flax NNX modules; inside jitted code we `nnx.merge` the graph definition with these values.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from worldmodel import accumulate, checkpoint
from worldmodel.models import attention_backends
from worldmodel.parallel import fsdp_split
from worldmodel.parallel import mesh as mesh_lib

OBJECTIVES = {
  "tokenizer": "worldmodel.objectives.tokenizer",
  "jepa": "worldmodel.objectives.jepa",
  "ac": "worldmodel.objectives.ac",
  "finetune": "worldmodel.objectives.finetune",
}


def get_objective(name: str):
  if name not in OBJECTIVES:
    raise ValueError(f"config key 'objective' is {name!r}; known objectives: {sorted(OBJECTIVES)}")
  return importlib.import_module(OBJECTIVES[name])


def sample_transform(config: ml_collections.ConfigDict, *, eval: bool = False):
  """What the objective adds to every sample in the data pipeline (e.g. JEPA masks), or None."""
  make = getattr(get_objective(config.objective), "sample_transform", None)
  return make(config, eval=eval) if make else None


def schedule_steps(opt: ml_collections.ConfigDict, total_steps: int) -> int:
  # The schedule length is its own key so that stopping and extending a run (total_steps) never changes its past.
  return max(opt.decay_steps if opt.decay_steps > 0 else total_steps, opt.warmup_steps + 1)


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """optim.schedule: 'cosine' (warmup + cosine), 'wsd' (warmup, stable, linear decay over the last
  optim.decay_frac of the schedule: V-JEPA 2's cooldown recipe) or 'constant' (after warmup)."""
  kind, length, warmup = opt.get("schedule", "cosine"), schedule_steps(opt, total_steps), max(opt.warmup_steps, 1)
  end = opt.lr * opt.final_lr_frac
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, opt.lr, warmup, length, end_value=end)
  if kind == "constant":
    return optax.warmup_constant_schedule(0.0, opt.lr, warmup)
  if kind == "wsd":
    decay = max(1, int(round(length * opt.get("decay_frac", 0.2))))
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
  if opt.get("weight_decay_end") is not None and opt.weight_decay_end != opt.weight_decay:  # V-JEPA: cosine 0.04→0.4
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


@dataclasses.dataclass
class Runtime:
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  objective: Any
  graphdef: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: Any
  abstract_state: Any
  init_fn: Callable[[], Any]

  def fresh_state(self):
    """A new train state: initialised, then (if the objective loads pretrained parts, e.g. AC's frozen encoder)
    filled in by the objective."""
    state = self.init_fn()
    own = getattr(self.objective, "LOADS_INIT_SOURCE", False)  # e.g. finetune: maps the source onto its own parts
    if self.config.get("init") and self.config.init.get("source") and not own:  # warm start: pretrained weights first
      from worldmodel import init_from

      state = init_from.initialize_from(self, state)
    initialize = getattr(self.objective, "initialize", None)
    return initialize(self, state) if initialize else state

  def model(self, state) -> nnx.Module:
    return nnx.merge(self.graphdef, state["params"], state["extra"])

  @functools.cached_property
  def train_step(self) -> Callable:
    return jax.jit(
      functools.partial(_train_step, self),
      in_shardings=(self.state_shardings, None),
      out_shardings=(self.state_shardings, None),
      donate_argnums=(0,),
    )

  @functools.cached_property
  def eval_step(self) -> Callable:
    def step(state, batch):
      return self.objective.eval_step(self.model(state), batch)

    return jax.jit(step, in_shardings=(self.state_shardings, None))


def _split(model: nnx.Module):
  """graphdef, Param state, everything else (e.g. VQ codebook EMA)."""
  return nnx.split(model, nnx.Param, ...)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Runtime:
  objective = get_objective(config.objective)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
  nnx.use_eager_sharding(False)  # shard once, inside the jitted init below, not variable by variable
  create = lambda: objective.create_model(config, nnx.Rngs(config.seed))  # noqa: E731 - traced twice below
  graphdef, abs_params, abs_extra = _split(nnx.eval_shape(create))
  param_specs = nnx.to_pure_dict(nnx.get_partition_spec(abs_params))
  extra_specs = nnx.to_pure_dict(nnx.get_partition_spec(abs_extra))  # e.g. the EMA target shards like the encoder
  abs_params, abs_extra = nnx.to_pure_dict(abs_params), nnx.to_pure_dict(abs_extra)
  mesh = fsdp_split.fit_mesh(mesh, (abs_params, abs_extra), (param_specs, extra_specs))  # fsdp × fsdp_sub if needed
  attention_backends.configure(config.model.get("attention", "auto"), mesh)  # before the step is traced
  accumulate.check(config, mesh)
  schedule = make_schedule(config.optim, config.total_steps)
  lr_scales = objective.lr_scales(config, abs_params) if hasattr(objective, "lr_scales") else None
  tx = make_optimizer(config.optim, schedule, config.total_steps, lr_scales)
  repl = mesh_lib.replicated(mesh)
  param_sh = mesh_lib.shardings_for(abs_params, param_specs, mesh)
  extra_sh = mesh_lib.shardings_for(abs_extra, extra_specs, mesh)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  opt_sh = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abs_opt,
    param_sh,
    transform_non_params=lambda _: repl,
    is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding),
  )
  shardings = {"step": repl, "params": param_sh, "extra": extra_sh, "opt": opt_sh}
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abs_params, "extra": abs_extra, "opt": abs_opt}
  abstract = checkpoint.abstract_with_shardings(abstract, shardings)

  @functools.partial(jax.jit, out_shardings=shardings)
  def init():
    _, params, extra = _split(create())
    params = nnx.to_pure_dict(params)
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "extra": nnx.to_pure_dict(extra),
      "opt": tx.init(params),
    }

  return Runtime(config, mesh, objective, graphdef, tx, schedule, shardings, abstract, init)


def _train_step(rt: Runtime, state: dict, batch: dict):
  step = state["step"]
  rng = jax.random.fold_in(jax.random.key(rt.config.seed), step)  # a pure function of (seed, step): resumable

  def loss_of(params, extra, batch, rng):
    # copy=True: the forward pass writes non-Param state (VQ EMA) under grad's trace (flax#5050).
    model = nnx.merge(rt.graphdef, params, extra, copy=True)
    loss, logs = rt.objective.loss_fn(model, batch, rng=rng, train=True)
    _, _, extra = _split(model)
    return loss, (logs, nnx.to_pure_dict(extra))

  grad_fn = jax.value_and_grad(loss_of, has_aux=True)
  K = accumulate.count(rt.config)  # optim.microbatches: K forward / backward passes, one update
  (_, (logs, extra)), grads = accumulate.value_and_grad(
    grad_fn, state["params"], state["extra"], batch, rng, K, rt.mesh
  )
  updates, opt = rt.tx.update(grads, state["opt"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  if hasattr(rt.objective, "after_update"):  # e.g. JEPA: the EMA target follows the new encoder weights
    extra, more = rt.objective.after_update(rt.config, params, extra, step)
    logs = {**logs, **more}
  logs = {**logs, "grad_norm": optax.global_norm(grads), "lr": rt.schedule(step)}
  return {"step": step + 1, "params": params, "extra": extra, "opt": opt}, logs
