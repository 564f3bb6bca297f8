"""JEPA: masks, positions, EMA target, collapse monitors, and train → evaluate (probes) through the CLIs."""

import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, experiment_config, first_batch, run_cli
from flax import nnx

from worldmodel import metrics, runtime
from worldmodel.data import masks, pipeline
from worldmodel.models import positions
from worldmodel.objectives import jepa as jepa_obj

TINY = "experiments/jepa.py:tiny"


def _config(**model):
  c = experiment_config("jepa", "tiny")
  c.model.update(model)
  return c


def test_masks_have_fixed_counts_cover_all_tokens_and_are_reproducible():
  grid = (4, 8, 8)
  sets = {
    "short": masks.MaskSet(8, 0.15, (0.75, 1.5), 1.0, 0.25),
    "long": masks.MaskSet(2, 0.7, (0.75, 1.5), 1.0, 0.09),
  }
  t = masks.MaskTransform(grid, sets, seed=3)
  n = 4 * 8 * 8
  for g in range(20):
    clip = t({}, g)
    for name, ms in sets.items():
      ctx, tgt = clip[f"{name}_ctx"], clip[f"{name}_tgt"]
      assert len(ctx) == masks.context_count(ms, grid) and len(ctx) + len(tgt) == n
      assert np.array_equal(np.sort(np.concatenate([ctx, tgt])), np.arange(n))
  a, b = t({}, 5), t({}, 5)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert all(not np.array_equal(t({}, 6)[f"{name}_ctx"], a[f"{name}_ctx"]) for name in sets)
  # Tubes span the whole clip: before the top-up to a fixed count, masked tokens repeat in every time slot.
  rng = np.random.default_rng(0)
  for ms in sets.values():
    blocks = masks._blocks_mask(rng, grid, ms)
    assert blocks.any() and (blocks == blocks[:1]).all()


def test_mask_settings_that_cannot_give_the_counts_fail_at_config_time():
  with pytest.raises(ValueError, match="keep=0.6 asks for"):
    masks.check_mask_sets((4, 8, 8), [masks.MaskSet(8, 0.15, (0.75, 1.5), 1.0, 0.6)])
  with pytest.raises(ValueError, match="context tokens"):
    masks.check_mask_sets((4, 8, 8), [masks.MaskSet(2, 0.7, (0.75, 1.5), 1.0, 0.0)])


def test_rope_matches_vjepa2_layout_tiled_frequencies_and_adjacent_pairs():
  head_dim = 32  # rope_dims = 10 per axis, 2 channels left unrotated
  d = positions.rope_dims(head_dim)
  assert d == 10
  coords = np.array([[1, 2, 3], [0, 5, 7]])
  x = np.random.default_rng(0).normal(size=(1, 2, 1, head_dim)).astype(np.float32)
  sin, cos = positions.rope_angles(jnp.asarray(coords)[None], head_dim)
  got = np.asarray(positions.apply_rope(jnp.asarray(x), sin, cos))
  # Reference written from the description: per axis, freq tiled [f0..f4, f0..f4], pairs (2i, 2i+1) rotated.
  want = x.copy()
  omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
  for n in range(2):
    for a in range(3):
      seg = x[0, n, 0, a * d : (a + 1) * d]
      f = np.tile(coords[n, a] * omega, 2)
      rot = np.stack([-seg[1::2], seg[0::2]], axis=-1).reshape(-1)
      want[0, n, 0, a * d : (a + 1) * d] = seg * np.cos(f) + rot * np.sin(f)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_sincos_table_shape_and_uniqueness():
  table = positions.sincos_3d((2, 4, 4), 48)
  assert table.shape == (32, 48)
  assert len(np.unique(table.round(5), axis=0)) == 32


def test_ema_target_gets_no_gradient_or_optimizer_state_and_follows_the_encoder(dataset):
  config = _config()
  config.data.dir = dataset
  rt = runtime.build(config)
  state = rt.init_fn()
  assert "target_encoder" not in state["params"] and "target_encoder" in state["extra"]
  assert "target_encoder" not in str(jax.tree_util.tree_structure(state["opt"]))
  np.testing.assert_array_equal(
    state["extra"]["target_encoder"]["norm"]["scale"], state["params"]["encoder"]["norm"]["scale"]
  )
  batch = first_batch(config)
  batch = pipeline.to_global(batch, rt.mesh)
  state, _ = rt.train_step(state, batch)  # step 0 has lr 0 (warmup from 0): take the second step
  before = jax.tree.map(np.asarray, state)
  new, logs = rt.train_step(state, batch)
  m = float(logs["ema_momentum"])
  k = ("blocks", "blocks", 0, "mlp", "up", "kernel")
  pick = lambda tree: tree[k[0]][k[1]][k[2]][k[3]][k[4]][k[5]]  # noqa: E731
  want = m * pick(before["extra"]["target_encoder"]) + (1 - m) * pick(jax.device_get(new["params"]["encoder"]))
  np.testing.assert_allclose(pick(jax.device_get(new["extra"]["target_encoder"])), want, rtol=1e-6, atol=1e-7)
  assert not np.allclose(pick(jax.device_get(new["params"]["encoder"])), pick(before["params"]["encoder"]))
  for key in (
    "monitor/target_std",
    "monitor/pred_std",
    "monitor/rankme",
    "monitor/cross_cosine",
    "monitor/ema_distance",
  ):
    assert np.isfinite(float(logs[key])), key


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_patch_embed_keeps_the_random_projection(dataset, freeze):
  """model.freeze_patch_embed: the encoder's (and so its EMA target's) patch projection stays at its init while the
  blocks train; off, it trains like every other weight."""
  config = _config(freeze_patch_embed=freeze)
  config.data.dir = dataset
  rt = runtime.build(config)
  state = rt.init_fn()
  start = jax.tree.map(np.asarray, jax.device_get(state))
  batch = pipeline.to_global(first_batch(config), rt.mesh)
  for _ in range(3):  # step 0 has lr 0 (warmup from 0)
    state, _ = rt.train_step(state, batch)
  end = jax.device_get(state)
  for tree in ("params", "extra"):
    enc = "encoder" if tree == "params" else "target_encoder"
    same = np.array_equal(end[tree][enc]["patch_embed"]["kernel"], start[tree][enc]["patch_embed"]["kernel"])
    assert same == freeze, (tree, freeze)
  block = lambda t: t["params"]["encoder"]["blocks"]["blocks"][0]["mlp"]["up"]["kernel"]  # noqa: E731
  assert not np.allclose(block(end), block(start))


def test_collapse_monitors_flag_a_collapsed_encoder(dataset):
  config = _config()
  config.data.dir = dataset
  rt = runtime.build(config)
  state = rt.init_fn()
  batch = first_batch(config)
  batch = pipeline.to_global(batch, rt.mesh)
  healthy = {k: float(v) for k, v in rt.eval_step(state, batch).items() if k.startswith("monitor/")}
  assert metrics.collapse_warnings(healthy) == [], healthy
  # Deliberate collapse: the target encoder's final LayerNorm maps every token to its bias.
  state["extra"]["target_encoder"]["norm"]["scale"] = jnp.zeros_like(state["extra"]["target_encoder"]["norm"]["scale"])
  state["extra"]["target_encoder"]["norm"]["bias"] = jnp.linspace(-1, 1, config.model.encoder.width)
  collapsed = {k: float(v) for k, v in rt.eval_step(state, batch).items() if k.startswith("monitor/")}
  warnings = metrics.collapse_warnings(collapsed)
  assert any("target_std" in w for w in warnings) and any("rankme" in w for w in warnings), collapsed
  assert collapsed["monitor/rankme"] < 1.5 < healthy["monitor/rankme"]


def test_predictor_runs_mask_sets_of_equal_length_as_one_batch():
  config = _config()
  model = jepa_obj.create_model(config, nnx.Rngs(0))
  video = jnp.zeros((2, 4, 64, 64, 3))
  ids = jnp.tile(jnp.arange(128, dtype=jnp.int32), (2, 1))
  sets = [(model.encoder(video, ids[:, :k]), ids[:, :k], ids[:, k:]) for k in (32, 12)]
  together = model.predictor(sets)
  apart = [model.predictor([s])[0] for s in sets]
  width = config.model.encoder.width  # predictions come back in the encoder's feature width
  assert together[0].shape == (2, 96, width) and together[1].shape == (2, 116, width)
  for joint, alone in zip(together, apart, strict=True):
    np.testing.assert_allclose(joint, alone, atol=1e-5)


def test_small_scale_options_sigreg_and_dense_context_loss(dataset):
  """model.reg: the dense loss regresses the context positions too (their predictions come first), SIGReg adds
  its statistic of the context tokens; both are logged, change the loss, and bad weights are refused."""
  config = _config(reg=dict(sigreg=0.0, sigreg_projections=256, dense_context=0.0))  # both off (tiny: dense on)
  config.data.dir = dataset
  batch = {k: jnp.asarray(v) for k, v in first_batch(config).items()}
  model = jepa_obj.create_model(config, nnx.Rngs(0))
  ctx_ids, tgt_ids = batch["short_ctx"], batch["short_tgt"]
  ctx = model.encoder(batch["video"].astype(jnp.float32) / 255.0, ctx_ids)
  dense = model.predictor([(ctx, ctx_ids, tgt_ids)], dense=True)[0]
  plain = model.predictor([(ctx, ctx_ids, tgt_ids)])[0]
  np.testing.assert_allclose(dense[:, ctx_ids.shape[1] :], plain, atol=1e-5)
  rng = jax.random.key(0)
  base, logs0 = jepa_obj.loss_fn(model, batch, rng=rng, train=True)
  assert "loss/dense_context" not in logs0 and "loss/sigreg" not in logs0
  for key in ("dense_context", "sigreg"):
    c = _config(reg=dict(config.model.reg, **{key: 0.5}))
    c.data.dir = dataset
    jepa_obj.check_config(c)
    m = jepa_obj.create_model(c, nnx.Rngs(0))
    loss, logs = jepa_obj.loss_fn(m, batch, rng=rng, train=True)
    assert float(logs[f"loss/{key}"]) > 0
    np.testing.assert_allclose(float(loss), float(base) + 0.5 * float(logs[f"loss/{key}"]), rtol=1e-5)
    np.testing.assert_allclose(float(logs["loss/short"]), float(logs0["loss/short"]), rtol=1e-5)
  for bad, match in (({"sigreg": -1.0}, "model.reg.sigreg"), ({"dense": 1.0}, "unknown options")):
    c = _config(reg=dict(config.model.reg, **bad))
    with pytest.raises(ValueError, match=match):
      jepa_obj.check_config(c)


@pytest.mark.slow
def test_jepa_train_evaluate_probes_and_bad_mask_config(tmp_path, dataset, jepa_tiny):
  w = pathlib.Path(jepa_tiny)
  rows = [json.loads(x) for x in open(w / "metrics.jsonl")]
  assert rows[-1]["loss"] < rows[0]["loss"] and "monitor/rankme" in rows[-1]
  out = tmp_path / "eval"
  r = run_cli("worldmodel.evaluate", f"--workdir={w}", "--split=test", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(out / "metrics.json"))
  assert np.isfinite(m["masked_loss"]) and m["num_clips"] == 12
  for kind in ("linear", "attentive"):
    for enc in ("trained", "random_init", "pixels"):
      assert set(m["probe_r2"][kind][enc]) >= {"agent_pos", "ball_pos", "all"}
  assert os.path.getsize(m["media"]["probe_r2_linear_png"]) > 1000

  r = run_cli(
    "worldmodel.train",
    f"--config={TINY}",
    f"--workdir={tmp_path / 'bad'}",
    f"--config.data.dir={dataset}",
    "--config.model.masks.long.keep=0.8",
  )
  assert r.returncode != 0 and "keep=0.8 asks for" in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "bad" / "checkpoints").exists()


def test_non_finite_loss_stops_with_a_diagnostic_and_keeps_the_last_checkpoint(tmp_path, dataset, jepa_tiny):
  w = tmp_path / "nan"
  shutil.copytree(jepa_tiny, w)  # a finished 20-step run (checkpoints 10 and 20), continued with a diverging lr
  r = run_cli(
    "worldmodel.train",
    f"--config={TINY}",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    "--config.checkpoint.every_steps=10",
    "--config.total_steps=30",
    "--config.optim.lr=1e30",
    "--config.optim.grad_clip=1e30",
    "--config.log_every_steps=1",
  )
  assert r.returncode != 0
  assert "non-finite" in r.stderr and "at step 21;" in r.stderr, r.stderr[-2000:]
  assert sorted(os.listdir(w / "checkpoints")) == ["10", "20"]
  r = run_cli("worldmodel.evaluate", f"--workdir={w}", "--max_clips=8", "--noprobes")  # the kept one restores
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.exists(w / "eval" / "20" / "metrics.json")


def test_init_source_warm_starts_from_a_workdir_and_refuses_other_shapes(tmp_path, dataset, jepa_tiny):
  src, dst, bad = jepa_tiny, tmp_path / "dst", tmp_path / "bad"
  common = (f"--config={TINY}", f"--config.data.dir={dataset}")
  # One step at lr 0 (warmup starts from 0) leaves the loaded weights as they were: compare with the source.
  rel = os.path.relpath(src, REPO)  # a relative source path works too (Orbax's reader needs absolute ones)
  r = run_cli("worldmodel.train", *common, f"--workdir={dst}", "--config.total_steps=1", f"--config.init.source={rel}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "initialised params/encoder, params/predictor, extra/target_encoder from" in r.stdout, r.stdout
  from worldmodel.checkpoint import read_newest

  (_, a), (_, b) = read_newest(str(src)), read_newest(str(dst))
  for x, y in zip(jax.tree.leaves(a["params"]["encoder"]), jax.tree.leaves(b["params"]["encoder"])):
    np.testing.assert_array_equal(x, y)
  r = run_cli(
    "worldmodel.train",
    *common,
    f"--workdir={bad}",
    "--config.total_steps=1",
    f"--config.init.source={src}",
    "--config.model.encoder.width=64",
    "--config.model.encoder.heads=2",
  )
  assert r.returncode != 0 and "does not match the model" in r.stderr and "checkpoint (128" in r.stderr, r.stderr[
    -2000:
  ]
  r = run_cli(
    "worldmodel.train",
    *common,
    f"--workdir={bad}",
    "--config.total_steps=1",
    f"--config.init.source={tmp_path / 'weights.bin'}",
  )
  assert r.returncode != 0 and "supported:" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_give_the_same_gradients(remat):
  from worldmodel.models.vit import VideoViT

  grads = {}
  for policy in ("none", remat):
    config = _config(remat=policy)
    enc = VideoViT(config.model, config.model.encoder, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(enc, nnx.Param)
    video = jnp.asarray(np.random.default_rng(0).random((2, 4, 64, 64, 3)), jnp.float32)
    loss = lambda p: jnp.sum(jnp.square(nnx.merge(graphdef, p)(video)))  # noqa: E731
    grads[policy] = jax.tree.leaves(jax.grad(loss)(params))
  for a, b in zip(grads["none"], grads[remat]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
