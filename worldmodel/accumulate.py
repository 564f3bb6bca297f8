"""Gradient accumulation: `optim.microbatches=K` runs the step's forward / backward over K slices of every device's
batch in a `lax.scan` and applies one optimizer update, so activations are held for B/K clips at a time.

Micro-batch i takes rows i·b/K..(i+1)·b/K of *each device's* shard (b = per-device batch): every micro-step keeps all
devices busy and needs no data movement. Loss, gradients and logged metrics are means over the micro-batches (all
equal in size), so for a loss that is a mean over clips the update equals the single large batch's to float
rounding. What differs, by design: metrics that are not means over clips (e.g. JEPA's rankme / cross-clip monitors)
are averaged per micro-batch, and state a forward pass updates (VQ codebook EMA) takes K small steps, one per
micro-batch, instead of one step on the whole batch.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from worldmodel.parallel import mesh as mesh_lib


def count(config: ml_collections.ConfigDict) -> int:
  return int(config.optim.get("microbatches", 1))


def batch_shards(mesh) -> int:
  return math.prod(mesh.shape[a] for a in mesh_lib.batch_axes(mesh))


def check(config: ml_collections.ConfigDict, mesh) -> None:
  """Config-time: K must divide the per-device batch (named with both numbers)."""
  K, shards = count(config), batch_shards(mesh)
  if not isinstance(config.optim.get("microbatches", 1), int) or K < 1:
    raise ValueError(f"config key 'optim.microbatches' must be a positive integer, got {config.optim.microbatches!r}")
  if K == 1:
    return
  if config.batch_size % shards:
    raise ValueError(f"batch_size {config.batch_size} does not divide over the mesh's {shards} batch shards")
  per_device = config.batch_size // shards
  if per_device % K:
    raise ValueError(
      f"config key 'optim.microbatches'={K} does not divide the per-device batch {per_device} "
      f"(batch_size {config.batch_size} over {shards} data × fsdp devices)"
    )


def split(batch: dict, K: int, mesh) -> dict:
  """Leaves [B, ...] → [K, B/K, ...]; micro-batch i holds the i-th slice of every device's shard."""
  shards = batch_shards(mesh)
  sharding = NamedSharding(mesh, P(None, mesh_lib.batch_axes(mesh)))

  def one(x):
    B, rest = x.shape[0], x.shape[1:]
    x = x.reshape(shards, K, B // (shards * K), *rest).swapaxes(0, 1).reshape(K, B // K, *rest)
    return jax.lax.with_sharding_constraint(x, sharding)

  return jax.tree.map(one, batch)


def value_and_grad(grad_fn: Callable, params, extra, batch: dict, rng, K: int, mesh):
  """grad_fn(params, extra, batch, rng) → ((loss, (logs, extra)), grads), over K micro-batches when K > 1.

  Micro-batch i draws its randomness from fold_in(rng, i); K = 1 calls grad_fn once with `rng` unchanged."""
  if K == 1:
    return grad_fn(params, extra, batch, rng)
  micro = split(batch, K, mesh)
  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, extra, first, rng))
  (loss0, (logs0, _)), grads0 = zeros

  def body(carry, xs):
    loss_sum, logs_sum, grads_sum, extra = carry
    i, mb = xs
    (loss, (logs, extra)), grads = grad_fn(params, extra, mb, jax.random.fold_in(rng, i))
    add = lambda a, b: a + b.astype(a.dtype)  # noqa: E731
    return (loss_sum + loss, jax.tree.map(add, logs_sum, logs), jax.tree.map(add, grads_sum, grads), extra), None

  init = (loss0, logs0, grads0, extra)
  (loss, logs, grads, extra), _ = jax.lax.scan(body, init, (jnp.arange(K), micro))
  mean = lambda x: x / K  # noqa: E731 - equal-size micro-batches: the mean of means is the batch mean
  return (mean(loss), (jax.tree.map(mean, logs), extra)), jax.tree.map(mean, grads)
