"""Planners (CEM, MPPI) on a known optimum; GoalEnv seeding, goal image, IK; oracle MPC vs random.

GoalEnv tests are skipped when dm_control is not installed (`make install-dmc`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodel import planning

LOW_A, HIGH_A = -np.ones(2, np.float32), np.ones(2, np.float32)
TARGET_HA = np.asarray(jax.random.uniform(jax.random.key(1), (8, 2), minval=-0.9, maxval=0.9))


def _quadratic(actions_NHA):
  return jnp.sum(jnp.square(actions_NHA - TARGET_HA), axis=(1, 2))


@pytest.mark.parametrize("name,kwargs,tol", [("cem", {"elites": 16}, 0.1), ("mppi", {"temperature": 0.1}, 0.5)])
def test_planner_minimises_quadratic(name, kwargs, tol):
  planner = getattr(planning, name)
  plan = jax.jit(
    lambda key: planner(_quadratic, key, horizon=8, low_A=LOW_A, high_A=HIGH_A, samples=128, iterations=10, **kwargs)
  )
  mean_HA, info = plan(jax.random.key(0))
  start, final = float(_quadratic(jnp.zeros((1, 8, 2)))[0]), float(_quadratic(mean_HA[None])[0])
  assert final < start / 10, (start, final)
  assert np.abs(np.asarray(mean_HA) - TARGET_HA).max() < tol
  assert float(info["best_cost"]) <= start  # the initial mean is among the candidates (CEM)
  assert np.all(np.asarray(mean_HA) >= LOW_A) and np.all(np.asarray(mean_HA) <= HIGH_A)


def test_cem_respects_bounds_and_warm_start():
  far_HA = np.full((8, 2), 3.0, np.float32)  # optimum outside the box: the plan sits on the bound
  mean_HA, info = planning.cem(
    lambda a: jnp.sum(jnp.square(a - far_HA), (1, 2)),
    jax.random.key(0),
    horizon=8,
    low_A=LOW_A,
    high_A=HIGH_A,
    iterations=8,
    init_mean_HA=TARGET_HA,
  )
  assert np.all(np.asarray(mean_HA) <= HIGH_A) and np.asarray(mean_HA).min() > 0.5
  assert np.all(np.asarray(info["best_HA"]) <= HIGH_A)
  assert info["elite_cost_I"].shape == (8,) and np.all(np.diff(info["elite_cost_I"]) <= 1e-4)


def test_shift_plan():
  plan_HA = np.arange(8, dtype=np.float32).reshape(4, 2)
  np.testing.assert_array_equal(planning.shift_plan(plan_HA), [[2, 3], [4, 5], [6, 7], [6, 7]])
  np.testing.assert_array_equal(planning.shift_plan(plan_HA, 3), [[6, 7]] * 4)


@pytest.fixture(scope="module")
def env():
  pytest.importorskip("dm_control")
  from worldmodel.envs import dmc_goal

  return dmc_goal.GoalEnv("reacher-easy", size=64)  # one env (and renderer) for this module


def test_unknown_task_lists_supported():
  pytest.importorskip("dm_control")
  from worldmodel.envs import dmc_goal

  with pytest.raises(ValueError, match="reacher-easy"):
    dmc_goal.GoalEnv("walker-walk")


def test_reset_is_a_function_of_the_seed_and_matches_the_dataset(env):
  from worldmodel.data.sources import dmc

  a, state_a, goal_a = env.reset(5), env.state(), env.goal_frame()
  other = env.reset(6)
  b, state_b, goal_b = env.reset(5), env.state(), env.goal_frame()
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(goal_a, goal_b)
  np.testing.assert_array_equal(state_a, state_b)
  assert not np.array_equal(a, other)
  ep = dmc.rollout(env.env, dmc.Spec("reacher", "easy", frames=1, size=64), 5)  # dataset episode 5
  np.testing.assert_array_equal(ep["video"][0], a)
  np.testing.assert_array_equal(ep["state"][0], state_a)
  assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and env.low_A.shape == (2,)


def test_goal_frame_leaves_the_episode_untouched(env):
  action_A = np.array([0.7, -0.4], np.float32)

  def run(peek: bool):
    env.reset(3)
    for _ in range(5):
      env.step(action_A)
    goal_HWC = env.goal_frame() if peek else None
    frames = [env.step(action_A) for _ in range(3)]
    return np.stack(frames), env.state(), env.distance(), goal_HWC

  frames, state, dist, _ = run(False)
  frames_peek, state_peek, dist_peek, goal_HWC = run(True)
  np.testing.assert_array_equal(frames, frames_peek)
  np.testing.assert_array_equal(state, state_peek)
  assert dist == dist_peek
  assert np.abs(goal_HWC.astype(int) - frames[0]).sum() > 0  # the arm is drawn elsewhere


def test_ik_puts_the_fingertip_on_the_target(env):
  physics = env.physics
  for seed in range(10):
    env.reset(seed)
    with physics.reset_context():
      physics.data.qpos[:] = env.goal_state()
    assert env.distance() < 1e-6 and env.success(), seed
    assert env.env.task.get_reward(physics) == 1.0  # success == the task's own reward condition
    xy = physics.named.data.geom_xpos["finger", :2]
    np.testing.assert_allclose(env.task.fingertip_xy(physics.data.qpos), xy, atol=1e-9)


def test_oracle_mpc_reaches_the_goal_random_does_not(env):
  cost_fn, horizon = env.oracle_cost_fn(), 10

  @jax.jit
  def plan(obs_CHWC, goal_HWC, key, warm_HA, past_KA):  # frames unused: the oracle reads the true state
    mean_HA, info = planning.cem(
      cost_fn,
      key,
      horizon=horizon,
      low_A=env.low_A,
      high_A=env.high_A,
      samples=32,
      elites=4,
      iterations=3,
      init_mean_HA=warm_HA,
    )
    return info["best_HA"]

  mpc, rand = [], []
  for seed in range(3):
    mpc.append(planning.run_mpc(env, plan, steps=60, horizon=horizon, seed=seed))
    rand.append(planning.random_policy_episode(env, steps=60, seed=seed))
    assert not mpc[-1]["success_T"][0]  # these seeds start away from the target
    assert mpc[-1]["frames_THWC"].shape == (61, 64, 64, 3)
  assert sum(r["final_success"] for r in mpc) >= 2, [r["distance_T"][-1] for r in mpc]
  assert sum(r["success"] for r in rand) <= 1
  for r in mpc:
    assert r["final_distance"] < r["distance_T"][0] / 3


def test_simulated_end_frames_are_what_executing_the_actions_shows(env):
  # `plan --dynamics=simulator` encodes these frames in place of the AC model's predictions.
  env.reset(5)
  start_frame, start_state = env.frame(), env.state()
  actions_NHA = np.random.default_rng(0).uniform(-1, 1, (3, 4, 2)).astype(np.float32)
  frames_NHWC = env.rollout_last_frames(actions_NHA)
  np.testing.assert_array_equal(env.frame(), start_frame)  # the episode is not advanced
  np.testing.assert_array_equal(env.state(), start_state)
  for actions_HA, predicted in zip(actions_NHA, frames_NHWC):
    env.reset(5)
    for a in actions_HA:
      shown = env.step(a)
    np.testing.assert_array_equal(shown, predicted)
  assert not np.array_equal(frames_NHWC[0], frames_NHWC[1])


def test_mpc_hands_the_planner_the_last_frames_and_the_actions_between_them(env):
  seen = []

  def plan(obs_CHWC, goal_HWC, key, warm_HA, past_KA):  # a distinct constant plan per call
    seen.append((obs_CHWC, past_KA))
    return np.full((4, 2), 0.1 * len(seen), np.float32)

  ep = planning.run_mpc(env, plan, steps=5, horizon=4, seed=3, context=3)
  frames, actions = ep["frames_THWC"], ep["actions_TA"]
  np.testing.assert_allclose(actions[:, 0], [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)
  obs, past = seen[0]  # before any step: the start frame, at rest
  assert obs.shape == (3, 64, 64, 3) and past.shape == (2, 2)
  np.testing.assert_array_equal(obs, np.stack([frames[0]] * 3))
  np.testing.assert_array_equal(past, 0)
  obs, past = seen[1]
  np.testing.assert_array_equal(obs, np.stack([frames[0], frames[0], frames[1]]))
  np.testing.assert_array_equal(past, np.stack([np.zeros(2), actions[0]]))
  obs, past = seen[4]  # frames 2, 3, 4 and the actions that led from 2 to 3 and from 3 to 4
  np.testing.assert_array_equal(obs, frames[2:5])
  np.testing.assert_array_equal(past, actions[2:4])
  planning.run_mpc(env, plan, steps=1, horizon=4, seed=3)  # context 1: the current frame, no actions
  assert seen[-1][0].shape == (1, 64, 64, 3) and seen[-1][1].shape == (0, 2)
