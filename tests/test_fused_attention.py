"""Fused attention backends: splash (Pallas, interpret mode on CPU) and the cuDNN path's padding against the reference
attention; the per-backend choice and its logged fallbacks (the cuDNN kernel itself cannot run on CPU)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, cli_env

from worldmodel.models import attention_backends as ab
from worldmodel.models.ac_predictor import block_causal_mask
from worldmodel.models.attention import FrameCausal, dot_product_attention


@pytest.fixture(autouse=True)
def _reset():
  yield
  ab.configure("auto", None)


def _qkv(B=2, L=45, H=3, D=16, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(B, L, H, D)), dtype) for _ in range(3))


def _reference(q, k, v, mask, causal):
  return jax.nn.dot_product_attention(q, k, v, mask=ab.dense_mask(mask, q.shape[1], k.shape[1]), is_causal=causal)


def _check(ours, q, k, v, mask, causal, atol=1e-5, grads=True):
  np.testing.assert_allclose(ours(q, k, v), _reference(q, k, v, mask, causal), atol=atol)
  if grads:
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))  # noqa: E731
    g = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(loss(lambda q, k, v: _reference(q, k, v, mask, causal)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g, g_ref):
      np.testing.assert_allclose(a, b, atol=atol * 4)


def test_splash_mask_is_block_causal_and_hides_padding():
  m = ab.splash_mask(45, 128, 3, mask=FrameCausal(9))
  dense = np.asarray(m.masks[0][:, :])
  np.testing.assert_array_equal(dense[:45, :45], block_causal_mask(5, 9))
  assert not dense[:, 45:].any()  # padded keys are never seen
  assert dense[45:, :45].all()  # padded queries see real keys: no empty softmax row
  assert len(m.masks) == 3


def test_splash_interpret_frame_causal_values_and_grads():
  ab.configure("splash", None, interpret=True)
  q, k, v = _qkv(B=1, L=20, H=2)
  _check(lambda q, k, v: dot_product_attention(q, k, v, mask=FrameCausal(5)), q, k, v, FrameCausal(5), False)
  _check(lambda q, k, v: dot_product_attention(q, k, v, causal=True), q, k, v, None, True, grads=False)
  assert not any(r.startswith("splash") for r in ab.fallback_reasons())


@pytest.mark.parametrize("kind", ["none", "causal", "frames", "keys"])
def test_cudnn_padding_through_xla(kind):
  """Head dim 12 → 16 and length 7 → 8, as the cuDNN path pads them; run through XLA, values and grads match."""
  q, k, v = _qkv(L=7, D=12)
  keys = jnp.asarray(np.arange(7) < np.array([[5], [7]]))[:, None, None, :]  # [B, 1, 1, K]: per-row valid keys
  mask, causal = {
    "none": (None, False),
    "causal": (None, True),
    "frames": (FrameCausal(3), False),
    "keys": (keys, False),
  }[kind]
  ours = lambda q, k, v: ab.cudnn_attention(q, k, v, mask=mask, causal=causal, implementation="xla")  # noqa: E731
  _check(ours, q, k, v, mask, causal)


def test_choice_per_backend_and_fallback_reasons():
  f32, bf16 = _qkv(L=8), _qkv(L=8, dtype=jnp.bfloat16)
  assert ab.choose(*bf16[:2], None, False, backend="gpu") == ("cudnn", None)
  impl, why = ab.choose(*f32[:2], None, False, backend="gpu")
  assert impl == "xla" and "dtype float32" in why
  wide = _qkv(L=8, D=200, dtype=jnp.bfloat16)
  assert ab.choose(*wide[:2], None, False, backend="gpu")[1].startswith("cudnn cannot take this call (head dim 200")
  assert ab.choose(*bf16[:2], FrameCausal(4), False, backend="tpu") == ("splash", None)
  impl, why = ab.choose(*bf16[:2], jnp.ones((1, 1, 8, 8), bool), False, backend="tpu")
  assert impl == "xla" and "run time" in why
  assert ab.choose(*f32[:2], None, False, backend="cpu") == ("cpu", None)
  ab.configure("xla")
  assert ab.choose(*bf16[:2], None, False, backend="gpu") == ("xla", None)
  ab.configure("cudnn")  # forced on a CPU: falls back to XLA with the reason logged, never a crash
  q, k, v = f32
  _check(lambda q, k, v: dot_product_attention(q, k, v, causal=True), q, k, v, None, True, grads=False)
  assert any("backend is cpu" in r for r in ab.fallback_reasons())
  with pytest.raises(ValueError, match="model.attention"):
    ab.configure("flash")


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_num_cpu_devices", 4)
from worldmodel.models import attention_backends as ab
from worldmodel.models.attention import FrameCausal, dot_product_attention
from worldmodel.parallel import mesh as mesh_lib
mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 2})
ab.configure("splash", mesh, interpret=True)
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.normal(size=(4, 20, 4, 8)), jnp.float32) for _ in range(3))
out = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, mask=FrameCausal(5)))(q, k, v)
ref = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(FrameCausal(5).dense(20, 20))[None, None])
np.testing.assert_allclose(out, ref, atol=1e-5)
print("ok", out.sharding)
"""


@pytest.mark.slow
def test_splash_under_shard_map_on_four_devices():
  r = subprocess.run(
    [sys.executable, "-c", SHARDED], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.startswith("ok")
