"""Gradient accumulation (optim.microbatches): K micro-batches give the single large batch's loss and update."""

import jax
import numpy as np
import pytest
from conftest import experiment_config, first_batch

from worldmodel import accumulate, runtime
from worldmodel.data import pipeline
from worldmodel.parallel import mesh as mesh_lib


def _two_steps(config, batch_np):
  rt = runtime.build(config)
  state = rt.init_fn()
  init = jax.device_get(state["params"])
  batch = pipeline.to_global(batch_np, rt.mesh)
  losses = []
  for _ in range(2):  # step 0 has lr 0 (warmup from 0): the second step moves the weights
    state, logs = rt.train_step(state, batch)
    losses.append(float(logs["loss"]))
  return losses, init, jax.device_get(state), {k: float(v) for k, v in logs.items()}


SHRINK = {  # one block each: compile time, not what is tested, dominates here
  "tokenizer": lambda m: m.update(enc_depth=1, dec_depth=1),
  "jepa": lambda m: (m.encoder.update(depth=1), m.predictor.update(depth=1)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tokenizer", "jepa"])
def test_microbatches_equal_the_large_batch(name, dataset):
  config = experiment_config(name, "tiny")
  config.data.dir = dataset
  SHRINK[name](config.model)
  batch = first_batch(config)
  runs = {}
  for K in (1, 4):
    config.optim.microbatches = K
    runs[K] = _two_steps(config, batch)
  (l1, init, s1, logs1), (l4, _, s4, logs4) = runs[1], runs[4]
  np.testing.assert_allclose(l4, l1, rtol=2e-6)
  for a, b in zip(jax.tree.leaves(s4["params"]), jax.tree.leaves(s1["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)  # Adam: ±lr steps on near-zero grads
  for a, b in zip(jax.tree.leaves(s4["extra"]), jax.tree.leaves(s1["extra"])):  # JEPA: the EMA target
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)  # Adam: ±lr steps on near-zero grads
  np.testing.assert_allclose(logs4["grad_norm"], logs1["grad_norm"], rtol=1e-5)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s4["params"]), jax.tree.leaves(init)))
  assert moved > 1e-6  # the comparison is of real updates, not of two untouched inits


def test_microbatches_that_do_not_divide_the_per_device_batch_are_refused():
  config = experiment_config("tokenizer", "tiny")
  mesh = mesh_lib.make_mesh(config.mesh)
  config.optim.microbatches = 3
  with pytest.raises(ValueError, match=r"'optim.microbatches'=3 does not divide the per-device batch 8"):
    accumulate.check(config, mesh)
  config.optim.microbatches = 0
  with pytest.raises(ValueError, match="positive integer"):
    accumulate.check(config, mesh)


def test_split_takes_a_slice_of_every_device_shard():
  config = experiment_config("tokenizer", "tiny")
  mesh = mesh_lib.make_mesh(config.mesh)
  x = np.arange(8)
  out = np.asarray(jax.jit(lambda b: accumulate.split({"x": b}, 2, mesh)["x"])(x))
  shards = accumulate.batch_shards(mesh)
  want = x.reshape(shards, 2, -1).swapaxes(0, 1).reshape(2, -1)
  np.testing.assert_array_equal(out, want)
