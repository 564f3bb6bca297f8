"""Two-Room: dynamics, rendering, the dataset source, the planning env (LeWM's protocol) and a tiny wm train + plan."""

import json
import os

import ml_collections
import numpy as np
import pytest
from conftest import run_cli

from worldmodel.data import generate, records
from worldmodel.data.sources import tworoom
from worldmodel.envs import registry, tworoom_goal

WALL, DOOR = 30.0, 40.0


def test_wall_blocks_outside_the_door_and_slides():
  pos = np.array([[WALL - 3.0, 20.0]])  # left of the wall, far from the door
  nxt = tworoom.move(pos, np.array([[2.4, 0.3]]), WALL, DOOR)
  assert nxt[0, 0] < WALL - tworoom.WALL_HALF and nxt[0, 0] > WALL - tworoom.WALL_HALF - 0.01
  assert nxt[0, 1] == pytest.approx(20.3)  # slides along the wall
  # Many pushes never get through.
  far = tworoom.step(pos, np.array([[2.4, 0.0]]), WALL, DOOR, repeat=20)
  assert far[0, 0] < WALL - tworoom.WALL_HALF


def test_door_lets_the_agent_through_and_border_stops_it():
  pos = np.array([[WALL - 3.0, DOOR]])
  through = tworoom.step(pos, np.array([[2.0, 0.0]]), WALL, DOOR, repeat=4)
  assert through[0, 0] == pytest.approx(WALL + 5.0)
  edge = tworoom.step(np.array([[50.0, 50.0]]), np.array([[2.4, 2.4]]), WALL, DOOR, repeat=10)
  np.testing.assert_allclose(edge, [[tworoom.HIGH, tworoom.HIGH]])
  # Displacements longer than MAX_STEP keep their direction.
  moved = tworoom.move(np.array([[10.0, 20.0]]), np.array([[30.0, 0.0]]), WALL, DOOR)
  np.testing.assert_allclose(moved, [[10.0 + tworoom.MAX_STEP, 20.0]])


def test_random_walks_never_end_inside_the_wall():
  rng = np.random.default_rng(0)
  pos = np.stack([tworoom.sample_position(rng, WALL) for _ in range(256)])
  for _ in range(40):
    pos = tworoom.move(pos, rng.uniform(-2.45, 2.45, (256, 2)), WALL, DOOR)
    inside = np.abs(pos[:, 0] - WALL) < tworoom.WALL_HALF
    assert not np.any(inside & (np.abs(pos[:, 1] - DOOR) > tworoom.DOOR_HALF))


def test_render_shape_position_and_determinism():
  frames = tworoom.render(np.array([[12.0, 40.0], [50.0, 9.0]]), WALL, DOOR, size=64)
  assert frames.shape == (2, 64, 64, 3) and frames.dtype == np.uint8
  row, col = np.unravel_index(np.argmax(frames[0, ..., 0]), (64, 64))
  assert (col, row) == (12, 40)
  assert frames[0, 20, 30, 1] == 255 and frames[0, int(DOOR), 30, 1] == 0  # wall, and the door's gap
  small = tworoom.render(np.array([[12.0, 40.0]]), WALL, DOOR, size=32)
  assert small.shape == (1, 32, 32, 3) and np.unravel_index(np.argmax(small[0, ..., 0]), (32, 32)) == (20, 6)
  a, b = tworoom.generate_episode(7, 6, 32, 5), tworoom.generate_episode(7, 6, 32, 5)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["state"], tworoom.generate_episode(8, 6, 32, 5)["state"])


def test_generate_writes_records_with_actions_and_state(tmp_path):
  out = str(tmp_path / "tr")
  cfg = generate.Config(frames=5, size=32, action_repeat=5)
  counts = generate.generate("tworoom", out, 6, cfg, seed=3)
  assert counts == {"train": 4, "val": 1, "test": 1}
  meta = records.read_meta(out)
  assert meta["action_dim"] == 2 and meta["action_repeat"] == 5 and meta["state_groups"]["agent_pos"] == [0, 1]
  ep = records.open_split(out, "train")[0]
  assert ep["video"].shape == (5, 32, 32, 3) and ep["action"].shape == (5, 2) and ep["state"].shape == (5, 4)
  # The state is the dynamics' own: each recorded step moves the agent by at most repeat * MAX_STEP.
  assert np.all(np.linalg.norm(np.diff(ep["state"][:, :2], axis=0), axis=-1) <= 5 * tworoom.MAX_STEP + 1e-4)
  with pytest.raises(generate.UserError, match="no ':' argument"):
    generate.make_source("tworoom:x", cfg)


def test_goal_env_protocol_and_success_rule():
  env = tworoom_goal.GoalEnv(size=64, action_repeat=5)
  assert env.goal_steps == 5 and env.budget_steps(5) == 10
  start = env.reset(1_000_003)
  assert np.array_equal(start, env.reset(1_000_003)) and start.shape == (64, 64, 3)
  # The goal is where the data policy's trajectory is 25 env steps later: replaying its actions succeeds.
  _, pos_T2, action_TA = tworoom.trajectory(np.random.default_rng(1_000_003), 6, 5)
  np.testing.assert_allclose(env.goal_pos, pos_T2[-1])
  for a in action_TA[:5]:
    env.step(a)
  assert env.distance() < 1e-9 and env.success()
  env.pos = env.goal_pos + [tworoom_goal.SUCCESS_RADIUS + 0.01, 0.0]
  assert not env.success()
  env.pos = env.goal_pos + [tworoom_goal.SUCCESS_RADIUS - 0.01, 0.0]
  assert env.success()
  goal = env.goal_frame()
  assert np.unravel_index(np.argmax(goal[..., 0]), (64, 64))[::-1] == tuple(np.round(env.goal_pos).astype(int))
  with pytest.raises(ValueError, match="whole number"):
    tworoom_goal.GoalEnv(action_repeat=4)


def test_oracle_planner_reaches_the_goal():
  import jax

  from worldmodel import planning

  env = tworoom_goal.GoalEnv(size=32, action_repeat=5)
  cost_fn = env.oracle_cost_fn()

  @jax.jit
  def plan(obs, goal, key, warm_HA, past_KA):
    return planning.cem(cost_fn, key, horizon=3, low_A=env.low_A, high_A=env.high_A, samples=64, iterations=4)[0]

  ep = planning.run_mpc(env, plan, steps=8, horizon=3, seed=1_000_000)
  assert ep["success"], ep["distance_T"]


def _config(action_dim: int, size: int):
  return ml_collections.ConfigDict(dict(model=dict(action_dim=action_dim, size=size)))


def test_env_and_model_must_agree_on_actions_and_frames():
  registry.check_name("tworoom")
  with pytest.raises(ValueError, match="unknown environment"):
    registry.check_name("maze")
  env = registry.make("tworoom", _config(2, 64), {"size": 64, "action_repeat": 5})
  registry.check_matches(env, _config(2, 64), "tworoom", "W")
  with pytest.raises(ValueError, match=r"tworoom has 2-D actions but the model in W was trained on 6-D actions"):
    registry.check_matches(env, _config(6, 64), "tworoom", "W")
  with pytest.raises(ValueError, match=r"tworoom renders 64x64 frames .* the model in W takes 32x32"):
    registry.check_matches(env, _config(2, 32), "tworoom", "W")


@pytest.mark.slow
def test_tiny_wm_trains_and_plans_in_tworoom(tmp_path):
  data, w = str(tmp_path / "tr"), str(tmp_path / "wm")
  r = run_cli(
    "worldmodel.data.generate", "--source=tworoom", f"--out={data}", "--episodes=24", "--frames=6", "--size=64",
    "--action_repeat=5",
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-2000:]
  r = run_cli("worldmodel.train", "--config=experiments/wm.py:tiny", f"--workdir={w}", f"--config.data.dir={data}")
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_cli("worldmodel.plan", f"--workdir={w}", "--env=tworoom", "--episodes=1", "--env_steps=2", "--horizon=2")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(os.path.join(w, "plan", "20", "metrics.json")))
  assert m["env"] == "tworoom" and m["steps"] == 2 and 0 <= m["success_rate"] <= 1
  r = run_cli("worldmodel.plan", f"--workdir={w}", "--env=maze")
  assert r.returncode == 2 and "error: --env='maze': unknown environment" in r.stderr
