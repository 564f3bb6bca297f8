"""Everything a run builds from a config: mesh, model, optimizer, sharded train state, jitted train step.

Shared by train / evaluate / bench so that all three see the same model, shardings and step function.

The train state is a plain pytree (what Orbax saves):
  {"step": int32, "params": nnx.Param values, "extra": other model variables (e.g. VQ codebook EMA), "opt": optax state}
Models are Flax NNX modules; inside jitted code we `nnx.merge` the graph definition with these values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from worldmodel import accumulate, checkpoint, objectives, optim
from worldmodel import config as config_lib
from worldmodel.models import attention_backends
from worldmodel.parallel import fsdp_split
from worldmodel.parallel import mesh as mesh_lib


def sample_transform(config: ml_collections.ConfigDict, *, eval: bool = False):
  """What the objective adds to every sample in the data pipeline (e.g. JEPA masks), or None."""
  return objectives.get(config.objective).sample_transform(config, eval=eval)


@dataclasses.dataclass
class Runtime:
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  objective: objectives.Objective
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
    own = self.objective.loads_init_source  # e.g. finetune: maps the source onto its own parts
    if self.config.init.source and not own:  # warm start: pretrained weights first
      from worldmodel import init_from

      state = init_from.initialize_from(self, state)
    return self.objective.initialize(self, state)

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
  objective = objectives.get(config.objective)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
  # model.dtype='auto': the compute dtype the mesh's devices run fastest (config.auto_dtype), resolved in place.
  with config.unlocked():
    for line in config_lib.resolve_auto_dtypes(config.get("model"), mesh.devices.flat[0].platform):
      print(line, flush=True)
  nnx.use_eager_sharding(False)  # shard once, inside the jitted init below, not variable by variable
  create = lambda: objective.create_model(config, nnx.Rngs(config.seed))  # noqa: E731 - traced twice below
  graphdef, abs_params, abs_extra = _split(nnx.eval_shape(create))
  param_specs = nnx.to_pure_dict(nnx.get_partition_spec(abs_params))
  extra_specs = nnx.to_pure_dict(nnx.get_partition_spec(abs_extra))  # e.g. the EMA target shards like the encoder
  abs_params, abs_extra = nnx.to_pure_dict(abs_params), nnx.to_pure_dict(abs_extra)
  mesh = fsdp_split.fit_mesh(mesh, (abs_params, abs_extra), (param_specs, extra_specs))  # fsdp × fsdp_sub if needed
  attention_backends.configure(config.model.attention, mesh)  # before the step is traced
  accumulate.check(config, mesh)
  schedule = optim.make_schedule(config.optim, config.total_steps)
  tx = optim.make_optimizer(config.optim, schedule, config.total_steps, objective.lr_scales(config, abs_params))
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
  extra, more = rt.objective.after_update(rt.config, params, extra, step)  # e.g. JEPA: the EMA target follows
  logs = {**logs, **more}
  logs = {**logs, "grad_norm": optax.global_norm(grads), "lr": rt.schedule(step)}
  return {"step": step + 1, "params": params, "extra": extra, "opt": opt}, logs
