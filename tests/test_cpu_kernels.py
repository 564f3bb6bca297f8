"""The fused native CPU attention kernel (worldmodel/kernels): values and gradients against XLA's attention, the
routing in `dot_product_attention`, its FLOP count, the build cache, the fallback without it, and a sharded run."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, cli_env

from worldmodel import kernels, perf
from worldmodel.models import attention_backends as ab
from worldmodel.models.attention import dot_product_attention

pytestmark = pytest.mark.skipif(kernels.unavailable() is not None, reason=f"no kernel: {kernels.unavailable()}")


def _qkv(B, Lq, Lk, H, E, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(B, Lq, H, E), (B, Lk, H, E), (B, Lk, H, E)]
  return tuple(jnp.asarray(rng.normal(size=s) * 2, jnp.float32) for s in shapes)


@pytest.mark.parametrize(
  "B,Lq,Lk,H,E", [(2, 40, 46, 3, 32), (1, 130, 138, 2, 16), (2, 64, 64, 2, 64), (1, 7, 5, 1, 48)]
)
def test_values_and_gradients_match_xla(B, Lq, Lk, H, E):
  q, k, v = _qkv(B, Lq, Lk, H, E)
  np.testing.assert_allclose(kernels.attention(q, k, v), jax.nn.dot_product_attention(q, k, v), atol=2e-5)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))  # noqa: E731
  ours = jax.grad(loss(kernels.attention), argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", ours, ref):
    np.testing.assert_allclose(a, b, atol=5e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("path", ["float32", "amx"])
def test_bfloat16_operands_keep_their_dtype(path, monkeypatch):
  """bf16 operands: widened to the f32 kernel, or (AMX hosts) bf16 products on AMX tiles with an f32 softmax."""
  if path == "amx" and not kernels.amx():
    pytest.skip("this CPU has no AMX (or the process may not use it)")
  if path == "float32":
    monkeypatch.setattr(kernels, "amx", lambda: False)
  for B, Lq, Lk, H, E in [(2, 40, 46, 3, 32), (1, 130, 138, 2, 64), (1, 7, 5, 1, 32)]:
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(B, Lq, Lk, H, E))
    call = jax.jit(lambda q, k, v: kernels.attention(q, k, v)).lower(q, k, v).as_text()  # a fresh trace per path
    assert ("wm_attention_fwd_bf16" in call) == (path == "amx")
    out = kernels.attention(q, k, v)
    assert out.dtype == jnp.bfloat16
    wide = [x.astype(jnp.float32) for x in (q, k, v)]  # the same rounded inputs, computed in float32
    np.testing.assert_allclose(out.astype(jnp.float32), jax.nn.dot_product_attention(*wide), atol=3e-2)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v).astype(jnp.float32)))  # noqa: E731
    ours = jax.grad(loss(kernels.attention), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(*wide)
    for name, a, b in zip("qkv", ours, ref):
      assert a.dtype == jnp.bfloat16, name
      np.testing.assert_allclose(a.astype(jnp.float32), b, atol=8e-2, rtol=2e-2, err_msg=f"d{name} {B, Lq, Lk, H, E}")


def test_routing_uses_the_kernel_only_where_it_can():
  ab.configure("cpu", None)
  q, k, v = _qkv(1, 16, 16, 2, 32)
  text = jax.jit(lambda q, k, v: dot_product_attention(q, k, v)).lower(q, k, v).as_text()
  assert "wm_attention_fwd" in text
  masked = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, causal=True)).lower(q, k, v).as_text()
  assert "wm_attention" not in masked  # masks stay on the XLA-composed kernel
  assert kernels.supports(q.astype(jnp.int8), k) and "float32" in kernels.supports(q.astype(jnp.int8), k)
  q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
  assert "wm_attention_fwd" in jax.jit(lambda q, k, v: dot_product_attention(q, k, v)).lower(q16, k16, v16).as_text()
  assert "multiple of 16" in kernels.supports(jnp.zeros((1, 4, 1, 24)), jnp.zeros((1, 4, 1, 24)))
  ab.configure("xla", None)
  assert "wm_attention" not in jax.jit(lambda q, k, v: dot_product_attention(q, k, v)).lower(q, k, v).as_text()
  ab.configure("auto", None)


def test_flops_of_the_custom_calls_are_counted():
  q, k, v = _qkv(2, 64, 48, 2, 32)
  step = jax.jit(jax.grad(lambda q, k, v: kernels.attention(q, k, v).sum(), argnums=(0, 1, 2))).lower(q, k, v)
  text = step.compile().as_text()
  padded = 48  # already a multiple of 16
  assert kernels.custom_call_flops(text) == (4 + 10) * 2 * 2 * 64 * padded * 32
  assert perf.compiled_flops(step.compile()) >= 0.99 * kernels.custom_call_flops(text)  # plus XLA's own ops
  q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))  # the AMX kernel's calls (bf16 operands) count too
  text16 = (
    jax.jit(jax.grad(lambda q: kernels.attention(q, k16, v16).sum().astype(jnp.float32))).lower(q16).compile().as_text()
  )
  assert kernels.custom_call_flops(text16) == (4 + 10) * 2 * 2 * 64 * padded * 32


def test_build_is_cached_and_switch_off_falls_back(tmp_path):
  code = (
    "from worldmodel import kernels; import jax.numpy as jnp; from worldmodel.models.attention import "
    "dot_product_attention as a; x = jnp.ones((1, 16, 1, 16)); print(kernels.unavailable()); print(a(x, x, x).sum())"
  )
  env = cli_env({"WORLDMODEL_KERNEL_CACHE": str(tmp_path)})
  first = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0 and first.stdout.splitlines()[0] == "None", first.stderr[-2000:]
  built = sorted(tmp_path.glob("cpu_attention-*.so"))
  assert len(built) == 1
  stamp = built[0].stat().st_mtime_ns
  subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
  assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
  off = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env={**env, "WORLDMODEL_CPU_KERNELS": "0"}, capture_output=True, text=True
  )
  assert off.returncode == 0 and off.stdout.splitlines() == ["WORLDMODEL_CPU_KERNELS=0", first.stdout.splitlines()[1]]


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_num_cpu_devices", 4)
from worldmodel.models import attention_backends as ab
from worldmodel.models.attention import dot_product_attention
from worldmodel.parallel import mesh as mesh_lib
mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 2})
ab.configure("cpu", mesh)
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.normal(size=(4, 20, 4, 16)), jnp.float32) for _ in range(3))
f = jax.jit(lambda q, k, v: dot_product_attention(q, k, v))
assert "wm_attention_fwd" in f.lower(q, k, v).as_text()
np.testing.assert_allclose(f(q, k, v), jax.nn.dot_product_attention(q, k, v), atol=2e-5)
g = jax.grad(lambda q: f(q, k, v).sum())(q)
np.testing.assert_allclose(g, jax.grad(lambda q: jax.nn.dot_product_attention(q, k, v).sum())(q), atol=5e-5)
print("ok")
"""


def test_kernel_under_shard_map_on_four_devices():
  r = subprocess.run(
    [sys.executable, "-c", SHARDED], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.startswith("ok")
