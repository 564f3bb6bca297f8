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
from flax import nnx
import ml_collections
import optax

from worldmodel import checkpoint
from worldmodel.parallel import mesh as mesh_lib

OBJECTIVES = {"tokenizer": "worldmodel.objectives.tokenizer"}


def get_objective(name: str):
  if name not in OBJECTIVES:
    raise ValueError(f"config key 'objective' is {name!r}; known objectives: {sorted(OBJECTIVES)}")
  return importlib.import_module(OBJECTIVES[name])


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  # The schedule length is its own key so that stopping and extending a run (total_steps) never changes its past.
  decay = opt.decay_steps if opt.decay_steps > 0 else total_steps
  return optax.warmup_cosine_decay_schedule(0.0, opt.lr, max(opt.warmup_steps, 1), max(decay, opt.warmup_steps + 1),
                                            end_value=opt.lr * opt.final_lr_frac)


def make_optimizer(opt: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  # Weight decay on matrices only: biases, norms and position tables are left alone.
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip),
                     optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask))


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

  def model(self, state) -> nnx.Module:
    return nnx.merge(self.graphdef, state["params"], state["extra"])

  @functools.cached_property
  def train_step(self) -> Callable:
    return jax.jit(functools.partial(_train_step, self), in_shardings=(self.state_shardings, None),
                   out_shardings=(self.state_shardings, None), donate_argnums=(0,))

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
  schedule = make_schedule(config.optim, config.total_steps)
  tx = make_optimizer(config.optim, schedule)

  create = lambda: objective.create_model(config, nnx.Rngs(config.seed))  # noqa: E731 - traced twice below
  graphdef, abs_params, abs_extra = _split(nnx.eval_shape(create))
  param_specs = nnx.to_pure_dict(nnx.get_partition_spec(abs_params))
  abs_params, abs_extra = nnx.to_pure_dict(abs_params), nnx.to_pure_dict(abs_extra)
  repl = mesh_lib.replicated(mesh)
  param_sh = mesh_lib.shardings_for(abs_params, param_specs, mesh)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abs_opt, param_sh, transform_non_params=lambda _: repl,
                                 is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
  shardings = {"step": repl, "params": param_sh, "extra": jax.tree.map(lambda _: repl, abs_extra), "opt": opt_sh}
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abs_params, "extra": abs_extra, "opt": abs_opt}
  abstract = checkpoint.abstract_with_shardings(abstract, shardings)

  @functools.partial(jax.jit, out_shardings=shardings)
  def init():
    _, params, extra = _split(create())
    params = nnx.to_pure_dict(params)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "extra": nnx.to_pure_dict(extra), "opt": tx.init(params)}

  return Runtime(config, mesh, objective, graphdef, tx, schedule, shardings, abstract, init)


def _train_step(rt: Runtime, state: dict, batch: dict):
  step = state["step"]
  rng = jax.random.fold_in(jax.random.key(rt.config.seed), step)  # a pure function of (seed, step): resumable

  def loss_of(params):
    # copy=True: the forward pass writes non-Param state (VQ EMA) under grad's trace (flax#5050).
    model = nnx.merge(rt.graphdef, params, state["extra"], copy=True)
    loss, logs = rt.objective.loss_fn(model, batch, rng=rng, train=True)
    _, _, extra = _split(model)
    return loss, (logs, nnx.to_pure_dict(extra))

  (_, (logs, extra)), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
  updates, opt = rt.tx.update(grads, state["opt"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  logs = {**logs, "grad_norm": optax.global_norm(grads), "lr": rt.schedule(step)}
  return {"step": step + 1, "params": params, "extra": extra, "opt": opt}, logs
