"""Tests for worldmodel.models.quantizers: straight-through grads, FSQ grid / index maps, VQ EMA state and restarts."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from worldmodel.models.quantizers import FSQ, VQ, CodebookState, QuantOut


def _normal(seed, shape, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(0, scale, shape).astype(np.float32))


# ---------------------------------------------------------------- FSQ
def test_fsq_index_code_round_trip_all_codes():
  fsq = FSQ((8, 5, 5, 3))
  idx = jnp.arange(fsq.num_codes, dtype=jnp.int32)
  codes = fsq.indices_to_codes(idx)
  assert fsq.num_codes == 8 * 5 * 5 * 3 and codes.shape == (fsq.num_codes, 4)
  np.testing.assert_array_equal(fsq.codes_to_indices(codes), idx)
  assert len({tuple(c) for c in np.asarray(codes)}) == fsq.num_codes  # a bijection
  assert float(codes.min()) == -1.0 and float(codes.max()) <= 1.0


def test_fsq_outputs_on_grid_and_indices_consistent():
  levels = (8, 5, 5, 5)
  fsq = FSQ(levels)
  z = _normal(0, (2, 6, 7, 4), scale=3.0)
  out = jax.jit(lambda z: fsq(z))(z)
  assert isinstance(out, QuantOut) and out.z_q.shape == z.shape and out.indices.shape == (2, 6, 7)
  assert out.indices.dtype == jnp.int32 and float(out.loss) == 0.0
  half_width = np.array([l // 2 for l in levels], np.float32)
  digits = np.asarray(out.z_q) * half_width + half_width
  np.testing.assert_allclose(digits, np.round(digits), atol=1e-5)  # on the integer grid
  assert digits.min() >= -1e-5 and np.all(digits.max(axis=(0, 1, 2)) <= np.array(levels) - 1 + 1e-5)
  for d in range(4):  # every level is reachable: large inputs saturate to both ends
    assert len(np.unique(np.round(digits[..., d]))) == levels[d]
  np.testing.assert_allclose(fsq.indices_to_codes(out.indices), out.z_q, atol=1e-6)
  assert 0 < float(out.metrics["fsq/codebook_usage_batch"]) <= 1


def test_fsq_zero_maps_to_zero_code_for_odd_and_near_zero_for_even():
  fsq = FSQ((8, 5))
  z_q = fsq(jnp.zeros((1, 2))).z_q
  np.testing.assert_allclose(z_q, [[0.0, 0.0]], atol=1e-6)


def test_fsq_straight_through_gradient():
  fsq = FSQ((8, 5, 5, 5))
  z = _normal(1, (3, 5, 4), scale=0.3)
  w = _normal(2, z.shape)
  g = jax.grad(lambda z: jnp.sum(fsq(z).z_q * w))(z)
  # Rounding is transparent: the gradient is that of the smooth bound / half_width (as in the paper).
  half_width = jnp.array([4.0, 2.0, 2.0, 2.0])
  g_smooth = jax.grad(lambda z: jnp.sum(fsq.bound(z) / half_width * w))(z)
  np.testing.assert_allclose(g, g_smooth, rtol=1e-5, atol=1e-6)
  # Identity-like: same sign as w, and ~w near zero for odd levels.
  assert np.all(np.sign(g) == np.sign(w))
  np.testing.assert_allclose(jax.grad(lambda z: jnp.sum(fsq(z).z_q * w))(z * 0)[..., 1:], w[..., 1:], rtol=2e-3)


# ---------------------------------------------------------------- VQ
def _vq(num_codes=16, dim=8, **kw):
  return VQ(num_codes, dim, rngs=nnx.Rngs(0), **kw)


def test_vq_has_no_params_and_shapes():
  vq = _vq()
  assert len(jax.tree.leaves(nnx.state(vq, nnx.Param))) == 0
  assert len(jax.tree.leaves(nnx.state(vq, CodebookState))) == 3
  assert vq.num_codes == 16 and vq.code_dim == 8
  out = vq(_normal(0, (2, 3, 5, 8)))
  assert out.z_q.shape == (2, 3, 5, 8) and out.indices.shape == (2, 3, 5) and out.indices.dtype == jnp.int32
  assert out.loss.shape == () and {
    "vq/commit_loss",
    "vq/dead_codes",
    "vq/perplexity",
    "vq/codebook_usage_batch",
  } <= set(out.metrics)


def test_vq_straight_through_gradient_and_codes_match_forward():
  vq = _vq()
  z = _normal(3, (4, 6, 8))
  w = _normal(4, z.shape)
  g = jax.grad(lambda z: jnp.sum(vq(z).z_q * w))(z)
  np.testing.assert_allclose(g, w, rtol=1e-6)
  out = vq(z)
  np.testing.assert_allclose(vq.indices_to_codes(out.indices), out.z_q, atol=1e-6)
  # Nearest code by cosine similarity, and commitment loss = 0.25 * mean ||z - q||^2.
  cb = np.asarray(vq.codebook[...])
  zn = np.asarray(z) / np.linalg.norm(z, axis=-1, keepdims=True)
  np.testing.assert_array_equal(out.indices, np.argmax(zn @ cb.T, axis=-1))
  q = np.asarray(out.z_q)
  np.testing.assert_allclose(out.loss, 0.25 * np.mean(np.sum((np.asarray(z) - q) ** 2, -1)), rtol=1e-5)


def test_vq_eval_leaves_state_unchanged():
  vq = _vq(restart_threshold=2.0)  # every code below threshold: eval must still not restart
  before = jax.tree.map(np.asarray, nnx.state(vq, CodebookState))
  out = nnx.jit(lambda m, z: m(z, train=False))(vq, _normal(5, (32, 8)))
  after = nnx.state(vq, CodebookState)
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert float(out.metrics["vq/dead_codes"]) == 16


def test_vq_train_updates_ema_and_is_deterministic():
  z = _normal(6, (64, 8))
  states = []
  for _ in range(2):
    vq = _vq()
    nnx.jit(lambda m, z, r: m(z, train=True, rng=r))(vq, z, jax.random.key(7))
    states.append(jax.tree.map(np.asarray, nnx.state(vq, CodebookState)))
  jax.tree.map(np.testing.assert_array_equal, *states)
  fresh = _vq()
  assert not np.allclose(states[0]["codebook"], np.asarray(fresh.codebook[...]))
  np.testing.assert_allclose(np.linalg.norm(states[0]["codebook"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(states[0]["ema_count"].sum(), 0.99 * 16 + 0.01 * 64, rtol=1e-5)


def test_vq_restart_revives_dead_codes():
  K, D = 16, 8
  vq = _vq(K, D, decay=0.5, restart_threshold=0.3)
  # Data in the positive orthant; code 0 points there, all others point away and are never chosen.
  cb = -np.ones((K, D), np.float32) + np.random.default_rng(0).normal(0, 0.1, (K, D)).astype(np.float32)
  cb[0] = 1.0
  cb /= np.linalg.norm(cb, axis=-1, keepdims=True)
  vq.codebook[...] = jnp.asarray(cb)
  vq.ema_sum[...] = jnp.asarray(cb)
  z = jnp.abs(_normal(8, (256, D)))
  assert len(np.unique(vq(z).indices)) == 1

  step = nnx.jit(lambda m, z, r: m(z, train=True, rng=r))
  restarted = [float(step(vq, z, jax.random.key(i)).metrics["vq/dead_codes"]) for i in range(4)]
  assert restarted[0] == 0 and restarted[1] == K - 1  # counts 1 -> 0.5 -> 0.25 < 0.3
  used = len(np.unique(vq(z).indices))
  assert used > K // 2
  # Revived codes now sit next to data: every code's nearest input is close (cosine > 0.5, was < 0).
  cb_new = np.asarray(vq.codebook[...])
  zn = np.asarray(z) / np.linalg.norm(z, axis=-1, keepdims=True)
  assert np.all((cb_new @ zn.T).max(axis=1) > 0.5)


class _Tok(nnx.Module):
  """A tiny encoder + VQ: the pattern a tokenizer train step uses."""

  def __init__(self, rngs):
    self.enc = nnx.Linear(4, 8, rngs=rngs)
    self.vq = VQ(16, 8, rngs=rngs, restart_threshold=0.995)  # unused codes restart at once

  def __call__(self, x, *, train, rng):
    out = self.vq(self.enc(x), train=train, rng=rng)
    return jnp.mean(out.z_q**2) + out.loss, out


def test_vq_jit_grad_over_params_with_state_as_aux():
  model = _Tok(nnx.Rngs(0))
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  assert len(jax.tree.leaves(nnx.state(model, CodebookState))) == 3
  assert not jax.tree.leaves(nnx.state(params, CodebookState))  # codebook is not among the params

  @jax.jit
  def step(params, other, x, rng):
    def loss_fn(params):
      # copy=True is required: with flax >= 0.11.2's default copy=False, writing CodebookState under
      # jax.grad raises TraceContextError (flax issue #5050; BatchNorm fails the same way).
      m = nnx.merge(graphdef, params, other, copy=True)
      loss, out = m(x, train=True, rng=rng)
      return loss, (nnx.state(m, CodebookState), out.metrics)

    (loss, (cb_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, cb_state, metrics

  x = _normal(9, (2, 10, 4))
  for i in range(2):
    loss, grads, cb_state, metrics = step(params, other, x, jax.random.key(i))
    other = nnx.merge_state(other, cb_state)  # carry updated codebook into the next step
  assert np.isfinite(float(loss)) and float(metrics["vq/dead_codes"]) > 0
  grad_paths = {p for p, _ in jax.tree_util.tree_leaves_with_path(grads)}
  assert len(grad_paths) == 2 and all("enc" in str(p) for p in grad_paths)  # only kernel + bias
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))
  nnx.update(model, cb_state)
  np.testing.assert_array_equal(model.vq.codebook[...], cb_state["vq"]["codebook"][...])
  assert not np.allclose(model.vq.codebook[...], _Tok(nnx.Rngs(0)).vq.codebook[...])


def test_batch_usage_metrics_match_a_histogram_without_materialising_the_codebook():
  from worldmodel.models.quantizers import _usage_metrics

  idx = np.array([3, 3, 7, 1, 7, 7, 0, 3], np.int32)
  m = _usage_metrics(jnp.asarray(idx), 10, "x")
  p = np.bincount(idx) / len(idx)
  p = p[p > 0]
  np.testing.assert_allclose(float(m["x/perplexity"]), np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
  np.testing.assert_allclose(float(m["x/codebook_usage_batch"]), 4 / 10)
  # a codebook far larger than int32 bincount could hold is fine
  big = _usage_metrics(jnp.asarray(idx), 15**8, "x")
  assert float(big["x/codebook_usage_batch"]) > 0


def test_fsq_saturation_penalty_pulls_frozen_channels_back():
  z = jnp.array([[0.3, -0.5, 5.0, -4.0]], jnp.float32)
  plain, penalised = FSQ((8, 5, 5, 5)), FSQ((8, 5, 5, 5), saturation_penalty=1.0)
  assert float(plain(z).loss) == 0.0
  out = penalised(z)
  np.testing.assert_allclose(float(out.loss), (3.0**2 + 2.0**2) / 4, rtol=1e-6)
  np.testing.assert_allclose(float(out.metrics["fsq/saturated_frac"]), 0.5)
  g = jax.grad(lambda x: penalised(x).loss)(z)
  assert float(g[0, 2]) > 0 and float(g[0, 3]) < 0  # descent moves both back towards the responsive range
  assert float(g[0, 0]) == 0.0 and float(g[0, 1]) == 0.0
