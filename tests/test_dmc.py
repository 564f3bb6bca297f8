"""dm_control source: CLI -> TFDS dataset, alignment convention, determinism, errors.

Skipped when dm_control is not installed (`make install-dmc`).
"""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("dm_control")

from conftest import run_cli  # noqa: E402

from worldmodel.data import generate  # noqa: E402
from worldmodel.data.sources import dmc  # noqa: E402

SPEC = dmc.Spec("reacher", "easy", frames=8, size=64)


@pytest.fixture(scope="module")
def env():
  return dmc.load_env(SPEC)  # one env (and renderer) for this test process


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("dmc") / "reacher")
  # 3 episodes: the fewest that give train, val and test one each. --workers=2 runs the pool.
  proc = run_cli(
    "worldmodel.data.generate",
    "--source=dmc:reacher-easy",
    f"--out={out}",
    "--episodes=3",
    "--frames=8",
    "--size=64",
    "--seed=5",
    "--workers=2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def test_cli_writes_tfds_dataset(written):
  import tensorflow_datasets as tfds

  from worldmodel.data import records

  builder = tfds.builder_from_directory(written)
  assert set(builder.info.splits.keys()) == {"train", "val", "test"}
  ep = builder.as_data_source("train")[0]
  assert ep["video"].dtype == np.uint8 and ep["video"].shape == (8, 64, 64, 3)
  assert ep["video"].std() > 5, "frames look blank"
  assert ep["action"].shape == (8, 2) and ep["action"].dtype == np.float32
  assert ep["state"].shape == (8, 4) and ep["reward"].shape == (8,)
  assert np.all(np.abs(ep["action"]) <= 1)
  meta = records.read_meta(written)
  assert meta["state_groups"] == {"qpos": [0, 1], "qvel": [2, 3]}
  assert meta["periodic_state"] == [0]  # reacher's shoulder winds freely; its wrist is limited
  assert (meta["domain"], meta["task"], meta["camera"], meta["action_dim"]) == ("reacher", "easy", 0, 2)
  assert meta["control_timestep"] == pytest.approx(0.02)


def test_pool_matches_serial_rollout(written, env):
  """An episode is a pure function of its seed, whichever process made it."""
  from worldmodel.data import records

  got = records.open_split(written, "test")[0]  # global episode index 2
  want = dmc.rollout(env, SPEC, generate.episode_seed(5, 2))
  for key in ("video", "action", "state", "reward"):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_deterministic_with_env_reuse(env):
  a = dmc.rollout(env, SPEC, 123)
  b = dmc.rollout(env, SPEC, 456)
  again = dmc.rollout(env, SPEC, 123)
  for key in a:
    np.testing.assert_array_equal(a[key], again[key], err_msg=key)
  assert not np.array_equal(a["state"], b["state"])


def _step_from(env, state_S, action_A):
  """Sets qpos/qvel, holds one action for a control step; returns the new qpos+qvel."""
  physics, nq = env.physics, env.physics.model.nq
  with physics.reset_context():
    physics.data.qpos[:] = state_S[:nq]
    physics.data.qvel[:] = state_S[nq:]
  env.task.before_step(action_A, physics)
  physics.step(env._n_sub_steps)
  return np.concatenate([physics.data.qpos, physics.data.qvel])


def test_action_t_leads_from_state_t_to_state_t_plus_1(env):
  ep = dmc.rollout(env, dmc.Spec("reacher", "easy", frames=12, size=16), 7)
  state_TS, action_TA = ep["state"].astype(np.float64), ep["action"]
  for t in range(len(state_TS) - 1):
    err_now = np.abs(_step_from(env, state_TS[t], action_TA[t]) - state_TS[t + 1]).max()
    assert err_now < 1e-4, (t, err_now)
    # The neighbouring actions must not explain the transition (no off-by-one).
    for other in {max(t - 1, 0), t + 1} - {t}:
      err = np.abs(_step_from(env, state_TS[t], action_TA[other]) - state_TS[t + 1]).max()
      assert err > 100 * err_now + 1e-6, (t, other, err, err_now)


def test_frame_t_shows_state_t(env):
  ep = dmc.rollout(env, SPEC, 9)
  physics, nq = env.physics, env.physics.model.nq
  for t in (0, len(ep["state"]) - 1):
    with physics.reset_context():
      physics.data.qpos[:] = ep["state"][t, :nq]
      physics.data.qvel[:] = ep["state"][t, nq:]
    frame_HWC = physics.render(SPEC.size, SPEC.size, camera_id=SPEC.camera)
    np.testing.assert_array_equal(frame_HWC, ep["video"][t])  # rendering is deterministic
    assert not np.array_equal(frame_HWC, ep["video"][1 if t == 0 else t - 1])


def test_unknown_task_lists_tasks():
  with pytest.raises(ValueError, match="cartpole-swingup.*walker-walk"):
    dmc.parse_task("walker-fly")
  proc = run_cli("worldmodel.data.generate", "--source=dmc:nope", "--out=/tmp/unused-dmc-out")
  assert proc.returncode == 2
  err_lines = proc.stderr.strip().splitlines()
  assert err_lines[-1].startswith("error:") and "reacher-easy" in err_lines[-1]


def test_render_target_off_hides_the_target_only(env):
  hidden = dataclasses.replace(SPEC, render_target=False)
  env_hidden = dmc.load_env(hidden)
  shown, ep = dmc.rollout(env, SPEC, 3), dmc.rollout(env_hidden, hidden, 3)
  np.testing.assert_array_equal(shown["state"], ep["state"])  # same physics, rewards too
  np.testing.assert_array_equal(shown["reward"], ep["reward"])
  changed = np.any(shown["video"][0] != ep["video"][0], axis=-1).mean()
  assert 0 < changed < 0.05, changed  # the small target sphere, nothing else
  assert dmc.meta(env_hidden, hidden)["render_target"] is False
  with pytest.raises(ValueError, match="no geom named 'target'"):
    dmc.load_env(dmc.Spec("cartpole", "swingup", frames=2, size=16, render_target=False))
