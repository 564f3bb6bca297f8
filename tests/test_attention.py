"""The CPU attention kernel equals jax.nn.dot_product_attention, values and gradients, with and without masks."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodel.models.attention import dot_product_attention


@pytest.mark.parametrize("masked", ["none", "causal", "mask"])
def test_matches_jax_reference(masked):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 12, 3, 8)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(rng.random((1, 1, 12, 12)) > 0.3) | jnp.eye(12, dtype=bool)[None, None]
  kw = {"none": {}, "causal": {"causal": True}, "mask": {"mask": mask}}[masked]
  ref_kw = {"none": {}, "causal": {"is_causal": True}, "mask": {"mask": mask}}[masked]
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, **ref_kw)  # noqa: E731
  ours = lambda q, k, v: dot_product_attention(q, k, v, **kw)  # noqa: E731
  np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), atol=1e-5)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))  # noqa: E731
  g_ours = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_blocked_forward_small_and_large_logits(scale):
  """L=256 runs the forward in query blocks; large inputs give sharply peaked softmax rows."""
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(scale * rng.normal(size=(2, 256, 2, 16)), jnp.float32) for _ in range(3))
  ref = jax.nn.dot_product_attention(q, k, v)
  np.testing.assert_allclose(dot_product_attention(q, k, v), ref, atol=2e-5 * scale, rtol=1e-4)
  g = jax.grad(lambda q: jnp.sum(jnp.sin(dot_product_attention(q, k, v))))(q)
  g_ref = jax.grad(lambda q: jnp.sum(jnp.sin(jax.nn.dot_product_attention(q, k, v))))(q)
  np.testing.assert_allclose(g, g_ref, atol=1e-4 * scale, rtol=1e-3)


def _dot_outputs(f, *args):
  """The output dtypes of every dot_general in f's jaxpr, forward and backward."""
  jaxpr = jax.make_jaxpr(f)(*args)
  found = []

  def walk(j):
    for eqn in j.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(eqn.outvars[0].aval.dtype)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return found


@pytest.mark.parametrize("masked", ["causal", "mask"])
def test_bf16_matches_f32_and_accumulates_in_f32(masked):
  """bf16 operands (masked calls stay on this kernel): values and gradients match f32 to bf16 rounding, and every
  product, forward and backward, accumulates in f32 (XLA:CPU's bf16 -> bf16 dots are its slow path)."""
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 128, 2, 16)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(rng.random((1, 1, 128, 128)) > 0.3) | jnp.eye(128, dtype=bool)[None, None]
  kw = {"causal": {"causal": True}, "mask": {"mask": mask}}[masked]
  loss = lambda q, k, v: jnp.sum(jnp.sin(dot_product_attention(q, k, v, **kw).astype(jnp.float32)))  # noqa: E731
  grad = jax.grad(loss, argnums=(0, 1, 2))
  bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  np.testing.assert_allclose(
    dot_product_attention(*bf, **kw).astype(jnp.float32), dot_product_attention(q, k, v, **kw), atol=0.05
  )
  for a, b in zip(grad(*bf), grad(q, k, v)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(a.astype(jnp.float32), b, atol=0.1, rtol=0.05)
  assert set(_dot_outputs(grad, *bf)) == {jnp.dtype(jnp.float32)}
