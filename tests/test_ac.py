"""Action-conditioned predictor: cached rollout == full recompute; JEPA → AC → evaluate → plan through the CLIs."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import experiment_config, run_cli
from flax import nnx

from worldmodel.common import layer_norm
from worldmodel.models.ac_predictor import ACPredictor, block_causal_mask


def _predictor(width=32, depth=2, frames=6):
  m = ml_collections.ConfigDict(
    dict(
      predictor=dict(width=width, depth=depth, heads=2, mlp_ratio=2.0),
      dtype="float32",
      remat="none",
      max_frames=frames,
      action_dim=3,
      residual=False,
    )
  )
  return ACPredictor(m, enc_dim=16, grid_hw=(2, 2), rngs=nnx.Rngs(0))


def test_residual_predictor_starts_as_copy_last_and_learns():
  m = ml_collections.ConfigDict(
    dict(
      predictor=dict(width=32, depth=2, heads=2, mlp_ratio=2.0),
      dtype="float32",
      remat="none",
      max_frames=6,
      action_dim=3,
      residual=True,
    )
  )
  pred = ACPredictor(m, enc_dim=16, grid_hw=(2, 2), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(2, 4, 4, 16)), jnp.float32)
  a = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
  np.testing.assert_array_equal(pred(z, a), z)  # untrained: exactly "nothing moves"
  grads = nnx.grad(lambda p: jnp.mean(jnp.abs(p(z[:, :-1], a[:, :-1]) - z[:, 1:])))(pred)
  assert float(jnp.abs(grads.proj.kernel[...]).sum()) > 0  # the zero readout still gets a gradient


def test_loss_exponent_is_checked_and_2_gives_half_the_squared_error():
  from worldmodel.objectives import ac

  c = experiment_config("ac", "tiny")
  c.model.update(action_dim=2, size=32, loss_exp=3.0)
  with pytest.raises(ValueError, match="model.loss_exp"):
    ac.check_config(c)
  c.model.loss_exp = 2.0
  ac.check_config(c)
  c.model.encoder_model = dict(
    frames=2,
    size=32,
    tubelet=(2, 16, 16),
    pos="sincos",
    dtype="float32",
    remat="none",
    scan_layers=False,
    encoder=dict(width=16, depth=1, heads=2, mlp_ratio=2.0),
  )
  model = ac.create_model(c, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {
    "video": jnp.asarray(rng.integers(0, 255, size=(2, 4, 32, 32, 3)), jnp.uint8),
    "action": jnp.asarray(rng.normal(size=(2, 4, 2)), jnp.float32),
  }
  loss, logs = ac.loss_fn(model, batch, rng=None, train=True)
  z = model.encode(batch["video"])  # untrained residual predictor = copy-last: half the squared frame change
  want = jnp.mean((z[:, :-1] - z[:, 1:]) ** 2) / 2
  np.testing.assert_allclose(logs["loss/teacher_forcing"], want, rtol=1e-5)
  # Evaluation reports L1 and MSE per horizon; the untrained predictor's rollout is copy-last under both.
  out = ac.eval_step(model, batch)
  want_mse_BH = np.mean((np.asarray(z[:, :1]) - np.asarray(z[:, 1:])) ** 2, axis=(2, 3))
  np.testing.assert_allclose(out["copy_last_mse_BH"], want_mse_BH, rtol=1e-5)
  np.testing.assert_allclose(out["rollout_mse_BH"], want_mse_BH, rtol=1e-3)
  np.testing.assert_allclose(out["rollout_BH"], out["copy_last_BH"], rtol=1e-3)
  model.context_frames = 2  # rollouts from frames 0-1: horizons 1..T-2, copy-last is frame 1
  out = ac.eval_step(model, batch)
  want_BH = np.mean(np.abs(np.asarray(z[:, 1:2]) - np.asarray(z[:, 2:])), axis=(2, 3))
  np.testing.assert_allclose(out["copy_last_BH"], want_BH, rtol=1e-5)
  np.testing.assert_allclose(out["rollout_BH"], want_BH, rtol=1e-3)
  c.model.context_frames = 4  # = model.frames: nothing left to predict
  with pytest.raises(ValueError, match="model.context_frames"):
    ac.check_config(c)


def test_block_causal_mask():
  m = block_causal_mask(3, 2)
  assert m.shape == (6, 6)
  assert m[0, 1] and m[1, 0] and not m[1, 2] and m[5, 0] and not m[2, 4]


def test_cached_step_by_step_equals_full_recompute():
  pred = _predictor()
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(2, 5, 4, 16)), jnp.float32)
  a = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
  full = pred(z, a)
  cache = pred.init_cache(2, 5)
  step = jax.jit(lambda c, t, zt, at: pred.step(c, t, zt, at))
  static_cache = pred.init_cache(2, 5)
  for t in range(5):
    out, cache = step(cache, jnp.int32(t), z[:, t], a[:, t])  # traced t: the empty cache slots are masked
    np.testing.assert_allclose(out, full[:, t], atol=2e-5, err_msg=f"frame {t}")
    out, static_cache = pred.step(static_cache, t, z[:, t], a[:, t])  # int t: only the filled prefix is read
    np.testing.assert_allclose(out, full[:, t], atol=2e-5, err_msg=f"frame {t}, static t")
  np.testing.assert_allclose(static_cache["k"], cache["k"], atol=1e-5)
  # Later frames never change earlier outputs (block-causal): perturb the last frame only.
  full2 = pred(z.at[:, -1].add(1.0), a)
  np.testing.assert_allclose(full2[:, :-1], full[:, :-1], atol=1e-6)


def test_model_rollout_matches_recomputed_autoregression():
  from worldmodel.models.ac import ACModel

  m = ml_collections.ConfigDict(
    dict(
      encoder_model=dict(
        frames=2,
        size=32,
        tubelet=(2, 16, 16),
        pos="sincos",
        dtype="float32",
        remat="none",
        scan_layers=False,
        encoder=dict(width=16, depth=1, heads=2, mlp_ratio=2.0),
      ),
      predictor=dict(width=32, depth=2, heads=2, mlp_ratio=2.0),
      dtype="float32",
      remat="none",
      max_frames=8,
      action_dim=3,
      rollout_steps=2,
      residual=False,
      loss_exp=1.0,
      context_frames=1,
    )
  )
  model = ACModel(m, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(1)
  frames = jnp.asarray(rng.integers(0, 255, size=(2, 2, 32, 32, 3)), jnp.uint8)
  a = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
  z = model.encode(frames)
  assert z.shape == (2, 2, 4, 16)
  got = model.rollout(z, a, 3)  # 2 context frames, 3 predicted
  seq = z
  for h in range(3):
    nxt = layer_norm(model.predictor(seq, a[:, : seq.shape[1]])[:, -1])
    np.testing.assert_allclose(got[:, h], nxt, atol=5e-5, err_msg=f"horizon {h + 1}")
    seq = jnp.concatenate([seq, nxt[:, None]], axis=1)


@pytest.mark.slow
def test_jepa_then_ac_train_evaluate_and_clear_errors(tmp_path, dataset, jepa_tiny):
  jepa, ac = jepa_tiny, tmp_path / "ac"
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/ac.py:tiny",
    f"--workdir={tmp_path / 'noenc'}",
    f"--config.data.dir={dataset}",
  )
  assert r.returncode != 0 and "model.encoder_source" in r.stderr, r.stderr[-2000:]
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/ac.py:tiny",
    f"--workdir={ac}",
    f"--config.data.dir={dataset}",
    f"--config.model.encoder_source={jepa}",
    "--config.total_steps=20",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "frozen encoder: target encoder of" in r.stdout
  rows = [json.loads(x) for x in open(ac / "metrics.jsonl")]
  assert rows and all(np.isfinite(r["loss"]) for r in rows)
  saved = json.load(open(ac / "config.json"))
  assert saved["model"]["encoder_model"]["encoder"]["width"] == 128 and saved["model"]["action_dim"] == 2

  r = run_cli("worldmodel.evaluate", f"--workdir={ac}", "--split=test")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(ac / "eval" / "20" / "metrics.json"))
  assert len(m["rollout_l1"]) == len(m["copy_last_l1"]) == 3 and np.isfinite(m["rollout_vs_copy_last_h1"])
  assert len(m["rollout_mse"]) == len(m["copy_last_mse"]) == 3 and np.isfinite(m["rollout_mse_vs_copy_last_h1"])
  # The residual predictor starts at exactly copy-last (zero readout): 20 steps may improve on it, not drift away.
  assert m["rollout_vs_copy_last_h1"] < 1.1, m["rollout_vs_copy_last_h1"]
  assert os.path.getsize(m["media"]["rollout_error_png"]) > 1000
  r = run_cli("worldmodel.evaluate", f"--workdir={ac}", "--context=2", f"--out={tmp_path / 'ctx2'}")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(tmp_path / "ctx2" / "metrics.json"))
  assert m["context_frames"] == 2 and len(m["rollout_l1"]) == 2  # 4-frame clips: 2 observed, 2 predicted
  r = run_cli("worldmodel.evaluate", f"--workdir={ac}", "--context=4")
  assert r.returncode != 0 and "model.context_frames" in r.stderr, r.stderr[-2000:]

  r = run_cli("worldmodel.plan", f"--workdir={jepa}", "--episodes=1")
  assert r.returncode != 0 and "needs an action-conditioned model" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_plan_cli_in_mujoco_end_to_end(tmp_path):
  pytest.importorskip("dm_control")
  data, jepa, ac = tmp_path / "reacher", tmp_path / "jepa", tmp_path / "ac"
  r = run_cli(
    "worldmodel.data.generate",
    "--source=dmc:reacher-easy",
    f"--out={data}",
    "--episodes=16",
    "--frames=8",
    "--size=64",
    "--seed=0",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/jepa.py:tiny",
    f"--workdir={jepa}",
    f"--config.data.dir={data}",
    "--config.total_steps=4",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/ac.py:tiny",
    f"--workdir={ac}",
    f"--config.data.dir={data}",
    f"--config.model.encoder_source={jepa}",
    "--config.total_steps=4",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  # Rollouts from the last 2 frames (and the action between them), squared-distance cost.
  r = run_cli(
    "worldmodel.plan",
    f"--workdir={ac}",
    "--env=dmc:reacher-easy",
    "--episodes=2",
    "--env_steps=4",
    "--horizon=3",
    "--samples=8",
    "--iterations=2",
    "--elites=2",
    "--context=2",
    "--cost=l2",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(ac / "plan" / "4" / "metrics.json"))
  assert m["context"] == 2 and m["cost"] == "l2"
  for key in ("success_rate", "final_distance", "random_success_rate", "random_final_distance", "plan_seconds_median"):
    assert np.isfinite(m[key]), key
  assert os.path.getsize(m["media"]["episode_mp4"]) > 1000 and os.path.getsize(m["media"]["distance_png"]) > 1000
  # The diagnostic modes: true physics with the learned cost (on the host), and the planner's ceiling.
  for dynamics in ("simulator", "oracle"):
    r = run_cli(
      "worldmodel.plan",
      f"--workdir={ac}",
      "--env=dmc:reacher-easy",
      "--episodes=1",
      "--env_steps=2",
      "--horizon=3",
      "--samples=8",
      "--iterations=2",
      "--elites=2",
      f"--dynamics={dynamics}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.load(open(ac / "plan" / f"4-{dynamics}" / "metrics.json"))
    assert m["dynamics"] == dynamics and np.isfinite(m["final_distance"])
  r = run_cli("worldmodel.plan", f"--workdir={ac}", "--env=dmc:reacher-easy", "--episodes=1", "--context=16")
  assert r.returncode != 0 and "max_frames" in r.stderr, r.stderr[-2000:]
