"""The end-to-end world-model objective (objectives/wm.py): regularisers, config errors, joint training, and a
tiny train → evaluate → plan-ready → encoder-load run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import experiment_config, run_cli
from flax import nnx

from worldmodel import metrics
from worldmodel.objectives import _regularisers as reg
from worldmodel.objectives import wm, wm_eval


def test_epps_pulley_small_for_gaussian_large_for_collapsed():
  x = jax.random.normal(jax.random.PRNGKey(0), (512, 16))
  gauss = reg.epps_pulley(x)
  assert float(jnp.mean(gauss)) < 1.5  # O(1) for N(0, 1) samples, whatever N
  assert float(jnp.min(reg.epps_pulley(jnp.zeros_like(x)))) > 100  # a constant: grows with N
  assert float(jnp.min(reg.epps_pulley(0.1 * x))) > 50  # right shape, wrong scale
  assert float(jnp.min(reg.epps_pulley(x + 2.0))) > 100  # shifted


def test_sigreg_and_vicreg_on_per_step_embeddings():
  key = jax.random.PRNGKey(1)
  z = jax.random.normal(key, (256, 3, 32))
  z_TBD = jnp.swapaxes(z, 0, 1)  # sigreg's sample sets: one per time step, over the batch
  assert float(reg.sigreg(z_TBD, key, 64)) < 1.5
  rank1 = z_TBD[..., :1] * jnp.ones(32)  # every direction carries the same single variable
  assert float(reg.sigreg(rank1, key, 64)) > 5 * float(reg.sigreg(z_TBD, key, 64))
  var, cov = reg.vicreg_terms(z)
  assert float(var) < 0.1 and float(cov) < 0.2
  var0, _ = reg.vicreg_terms(jnp.zeros_like(z))
  assert float(var0) > 0.98


def _tiny_config(size: int = 64):
  c = experiment_config("wm", "tiny")
  c.model.action_dim, c.model.size = 2, size
  wm.resolve_config(c)
  return c


@pytest.mark.parametrize(
  "key,value,names",
  [
    ("model.reg.sigreg", 0.0, "model.reg.variance"),
    ("model.reg.variance", -1.0, "model.reg.variance"),
    ("data.frame_stride", 2, "data.frame_stride"),
    ("model.loss_exp", 3.0, "model.loss_exp"),
    ("model.rollout_steps", 4, "model.rollout_steps"),
  ],
)
def test_check_config_names_the_key(key, value, names):
  c = _tiny_config()
  c.model.reg.variance = c.model.reg.variance if key != "model.reg.variance" else value
  section, *rest = key.split(".")
  target = c[section]
  for part in rest[:-1]:
    target = target[part]
  target[rest[-1]] = value
  with pytest.raises(ValueError, match=names.replace(".", r"\.")):
    wm.check_config(c)


def test_loss_trains_encoder_and_predictor_jointly():
  c = _tiny_config(size=32)
  c.model.reg.update(variance=1.0, covariance=0.04, inverse_dynamics=1.0, smoothness=0.1)
  model = wm.create_model(c, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {
    "video": jnp.asarray(rng.integers(0, 255, (4, 4, 32, 32, 3)), jnp.uint8),
    "action": jnp.asarray(rng.uniform(-1, 1, (4, 4, 2)), jnp.float32),
  }
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p, b):
    return wm.loss_fn(nnx.merge(graphdef, p, rest, copy=True), b, rng=jax.random.PRNGKey(0), train=True)

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (value, logs), grads = grad_fn(params, batch)
  assert np.isfinite(float(value))
  for k in ("sigreg", "variance", "covariance", "inverse_dynamics", "smoothness", "teacher_forcing", "rollout"):
    assert f"loss/{k}" in logs
  g = nnx.to_pure_dict(grads)
  for part in ("encoder", "proj_out", "predictor", "inv_out"):
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g[part])) > 0, part
  assert not metrics.collapse_warnings({k: float(v) for k, v in logs.items()})
  # Every clip the same picture: embeddings no longer depend on the clip, and the monitors the trainer checks say so.
  same = {**batch, "video": jnp.broadcast_to(batch["video"][:1, :1], batch["video"].shape)}
  (_, logs), _ = grad_fn(params, same)
  warnings = metrics.collapse_warnings({k: float(v) for k, v in logs.items()})
  assert any(w.startswith("monitor/target_std=") for w in warnings), warnings


def test_dense_token_loss_trains_its_predictor_and_is_on_in_dmc_only():
  assert experiment_config("wm", "dmc").model.dense.weight > 0
  assert not experiment_config("wm", "tworoom").model.dense.weight
  c = _tiny_config(size=32)
  assert not c.model.dense.weight and not hasattr(wm.create_model(c, nnx.Rngs(0)), "dense_predictor")
  c.model.dense.update(weight=1.0, dim=8, predictor=dict(width=16, depth=1, heads=2, mlp_ratio=2.0))
  rng = np.random.default_rng(0)
  batch = {
    "video": jnp.asarray(rng.integers(0, 255, (4, 4, 32, 32, 3)), jnp.uint8),
    "action": jnp.asarray(rng.uniform(-1, 1, (4, 4, 2)), jnp.float32),
  }
  graphdef, params, rest = nnx.split(wm.create_model(c, nnx.Rngs(0)), nnx.Param, ...)

  def loss(p):
    return wm.loss_fn(nnx.merge(graphdef, p, rest, copy=True), batch, rng=jax.random.PRNGKey(0), train=True)

  (value, logs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert np.isfinite(float(value)) and float(logs["loss/dense"]) > 0 and float(logs["loss/dense_sigreg"]) > 0
  g = nnx.to_pure_dict(grads)
  for part in ("dense_proj", "dense_predictor", "encoder"):
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g[part])) > 0, part
  c.model.dense.predictor.heads = 3
  with pytest.raises(ValueError, match=r"model\.dense\.predictor\.width"):
    wm.check_config(c)


def test_probe_features_pixels_history_and_saturated_groups():
  video = np.zeros((2, 3, 64, 64, 3), np.uint8)
  video[0, 1, :4, :4, 0] = 255  # exactly one 4 x 4 block of the 16 x 16 grid, red
  px = wm_eval.pixel_features(video)
  assert px.shape == (2, 3, 16 * 16 * 3) and px[0, 1, 0] == 1.0 and px.sum() == 1.0
  x = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
  np.testing.assert_array_equal(wm_eval.with_history(x, 2)[0], [[0, 1], [1, 2]])  # frame t beside frame t-1
  r2 = {"trained": {"qpos": 0.99, "qvel": 0.5}, "pixels": {"qpos": 0.96, "qvel": 0.99}}
  assert wm_eval.saturated_groups(r2) == ["qpos"]


def test_config_error_at_start(tmp_path, dataset):
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/wm.py:tiny",
    f"--workdir={tmp_path / 'w'}",
    f"--config.data.dir={dataset}",
    "--config.model.reg.sigreg=0",
  )
  assert r.returncode == 2, r.stderr[-2000:]
  assert "error: " in r.stderr and "model.reg.sigreg" in r.stderr and "collapsing" in r.stderr


@pytest.mark.slow
def test_tiny_train_evaluate_and_load_encoder(tmp_path, dataset):
  from worldmodel import encoders

  w = tmp_path / "wm"
  r = run_cli("worldmodel.train", "--config=experiments/wm.py:tiny", f"--workdir={w}", f"--config.data.dir={dataset}")
  assert r.returncode == 0, r.stderr[-3000:]
  logged = [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
  assert logged[-1]["step"] == 20 and "monitor/rankme" in logged[-1] and "loss/sigreg" in logged[-1]
  r = run_cli("worldmodel.evaluate", f"--workdir={w}", "--max_clips=16")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(os.path.join(w, "eval", "20", "metrics.json")))
  assert len(m["rollout_mse"]) == 7 and 0 < m["num_clips"] <= 16  # eval.rollout_frames=8: h 1..7 from one frame
  assert "rollout_mse_vs_copy_last_h4" in m
  assert m["embedding_target_std"] > 0 and "rollout_mse_vs_copy_last_h1" in m
  assert set(m["probe_r2_linear"]) == {"trained", "random_init", "pixels"} and m["probe_history"] == 2
  assert "agent_pos" in m["probe_r2_linear"]["pixels"] and isinstance(m["probe_saturated_groups"], list)
  # attentive probes: the encoder's tokens (two frames side by side per token), random init's, raw patches
  assert set(m["probe_r2_attentive"]) == {"trained", "random_init", "pixels"}
  assert all(-10 < r < 1 for r in m["probe_r2_attentive"]["pixels"].values())
  assert isinstance(m["probe_saturated_groups_attentive"], list)
  enc, cfg = encoders.load_encoder(str(w))
  feats = encoders.encode(enc, np.zeros((2, 1, cfg.size, cfg.size, 3), np.uint8))
  assert feats.shape == (2, (cfg.size // cfg.tubelet[1]) ** 2, 64)


@pytest.mark.slow
def test_collapsing_run_warns_naming_monitor_and_step(tmp_path):
  from worldmodel.data import records

  # Every frame the same picture: the embeddings cannot depend on the clip, a collapse from the first step.
  rng = np.random.default_rng(0)
  ep = lambda: {"video": np.zeros((8, 32, 32, 3), np.uint8), "action": rng.uniform(-1, 1, (8, 2)).astype(np.float32)}  # noqa: E731
  out = str(tmp_path / "blank")
  records.write_dataset(out, {s: [ep() for _ in range(n)] for s, n in (("train", 4), ("val", 1), ("test", 1))}, {})
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/wm.py:tiny",
    f"--workdir={tmp_path / 'w'}",
    f"--config.data.dir={out}",
    "--config.total_steps=5",
    "--config.model.size=32",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "WARNING step 5: representation may be collapsing: monitor/target_std=" in r.stdout, r.stdout[-2000:]
