"""bf16 compute with f32 master weights on CPU: dense layers accumulate in f32 forward and backward (the fast XLA:CPU
dot path on AVX512_BF16 hosts), match f32 to bf16 rounding, and model.dtype='auto' resolves per host in runtime.build."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import wm as wm_exp
from worldmodel import config as config_lib
from worldmodel import objectives, runtime
from worldmodel.models import layers


def _grads(dtype):
  m = layers.dense(48, 32, axes=(None, None), rngs=nnx.Rngs(0), dtype=dtype)
  x = jax.random.normal(jax.random.key(1), (2, 5, 48))
  loss = lambda m, x: jnp.sum(jnp.sin(m(x).astype(jnp.float32)))  # noqa: E731
  return m(x), nnx.grad(loss, argnums=(0, 1))(m, x), m, x


def test_bf16_dense_matches_f32_and_accumulates_in_f32():
  y16, (gm16, gx16), m16, x = _grads(jnp.bfloat16)
  y32, (gm32, gx32), _, _ = _grads(jnp.float32)
  # CPU: bf16 dot operands, f32 results (activations stay f32 between layers); master weights stay f32
  assert y16.dtype == jnp.float32 and gm16.kernel[...].dtype == jnp.float32
  np.testing.assert_allclose(y16.astype(jnp.float32), y32, atol=3e-2, rtol=2e-2)
  for a, b in ((gx16, gx32), (gm16.kernel[...], gm32.kernel[...]), (gm16.bias[...], gm32.bias[...])):
    assert float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b)) < 2e-2
  gd, st = nnx.split(m16)
  step = jax.jit(jax.grad(lambda st, x: jnp.sum(nnx.merge(gd, st)(x).astype(jnp.float32) ** 2), argnums=(0, 1)))
  dots = re.findall(r"stablehlo.dot_general.*", step.lower(st, x.astype(jnp.bfloat16)).as_text())
  assert len(dots) == 3  # forward, input gradient, weight gradient
  assert all(re.search(r"\(tensor<[^>]*bf16>, tensor<[^>]*bf16>\) -> tensor<[^>]*f32>", d) for d in dots), dots


def test_bf16_dense_gradients_are_not_rounded_to_bf16():
  """On CPU the casts live inside the product's VJP: the weight gradient is the f32 accumulation of the bf16
  operands, not that rounded to bf16 (and the layer keeps its compute dtype where callers can read it)."""
  y16, (gm16, gx16), m16, x = _grads(jnp.bfloat16)
  assert layers.compute_dtype(m16) == jnp.bfloat16 and gx16.dtype == jnp.float32
  rounded = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
  g = rounded(jnp.cos(y16))
  want_dw = jnp.einsum("btk,btn->kn", rounded(x), g)
  want_dx = jnp.einsum("btn,kn->btk", g, rounded(m16.kernel[...]))
  np.testing.assert_allclose(gm16.kernel[...], want_dw, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gx16, want_dx, rtol=1e-5, atol=1e-5)


def test_f32_dense_is_plain_dot_general():
  m = layers.dense(8, 4, axes=(None, None), rngs=nnx.Rngs(0))
  x = jnp.ones((3, 8))
  np.testing.assert_allclose(m(x), x @ m.kernel[...] + m.bias[...], rtol=1e-6)


def test_runtime_resolves_auto_dtype_for_the_host(capsys):
  config = wm_exp.get_config("tiny")
  config.model.dtype = config.model.encoder_model.dtype = "auto"
  config.model.action_dim = 2
  rt = runtime.build(config)
  want, why = config_lib.auto_dtype("cpu")
  assert config.model.dtype == config.model.encoder_model.dtype == want and rt.config.model.dtype == want
  assert f"model.dtype=auto -> {want}: {why}" in capsys.readouterr().out


def test_models_built_without_runtime_resolve_auto_too():
  """A preset with dtype 'auto' can be instantiated directly (notebooks, encoders.load): the host's dtype."""
  config = wm_exp.get_config("tiny")
  config.model.dtype = config.model.encoder_model.dtype = "auto"
  config.model.action_dim = 2
  want = jnp.dtype(config_lib.auto_dtype("cpu")[0])
  assert config_lib.compute_dtype("auto") == want and config_lib.compute_dtype("float32") == jnp.float32
  model = objectives.get("wm").create_model(config, nnx.Rngs(0))
  assert layers.compute_dtype(model.encoder.patch_embed) == want
