"""LeWM's goal-reaching protocol (`plan --protocol=lewm`): start / goal selection on held-out trajectories, the
qpos success criterion, the true-physics oracle, Wilson intervals, and the settings refused at start-up.

MuJoCo tests are skipped when dm_control is not installed (`make install-dmc`).
"""

import json
import math
import os

import jax
import numpy as np
import pytest
from conftest import experiment_config, run_cli

from worldmodel import planning
from worldmodel.envs.goal_protocol import Protocol, planner_settings, rate, wilson_interval

LEWM = Protocol(goal_offset=30, budget=50, trajectory_steps=200)  # about half LeWM's distances and budget: quicker
LEWM_DATA = Protocol(goal_offset=25, budget=50, trajectory_steps=200, trajectory_policy="data")


def test_wilson_interval():
  z2 = 1.959963984540054**2
  lo, hi = wilson_interval(0, 10)
  assert lo == 0 and hi == pytest.approx(z2 / (10 + z2))  # closed forms at 0 / n and n / n
  lo, hi = wilson_interval(10, 10)
  assert lo == pytest.approx(10 / (10 + z2)) and hi == pytest.approx(1)
  lo, hi = wilson_interval(43, 50)  # 86 %, LeWM's reacher rate over its 50 episodes
  assert lo < 0.86 < hi and (round(lo, 3), round(hi, 3)) == (0.738, 0.930)
  lo2, hi2 = wilson_interval(430, 500)  # ten times the episodes: about sqrt(10) times narrower
  assert 2.8 < (hi - lo) / (hi2 - lo2) < 3.4
  assert wilson_interval(7, 20) == pytest.approx(tuple(1 - x for x in wilson_interval(13, 20)[::-1]))
  r = rate([True, False, True, True])
  assert r["rate"] == 0.75 and r["successes"] == 3 and r["episodes"] == 4 and len(r["ci95"]) == 2


@pytest.mark.parametrize(
  "kwargs,flag",
  [
    (dict(budget=0), "--budget=0"),
    (dict(budget=-5), "--budget=-5"),
    (dict(goal_offset=450), "--goal_offset=450 control steps is beyond"),
    (dict(goal_offset=0), "--goal_offset=0"),
    (dict(qpos_tolerance=0.0), "--qpos_tolerance"),
    (dict(goal_offset=45), "must be whole LeWM env steps"),
    (dict(trajectory_policy="expert"), "--trajectory_policy='expert'"),
  ],
)
def test_settings_that_cannot_work_are_refused(kwargs, flag):
  with pytest.raises(ValueError, match=flag):
    Protocol(**kwargs).check()


def test_settings_must_be_whole_model_frames():
  Protocol().check(action_repeat=5)
  assert Protocol().frames(10) == (5, 10, 41)  # LeWM's frame: 5 env steps of 2 control steps
  assert Protocol().frames(5) == (10, 20, 81)
  s = planner_settings("lewm", Protocol().frames(5)[0])  # LeWM's CEM; its horizon spans the goal offset
  assert [s[k] for k in ("horizon", "replan_every", "samples", "iterations", "elites", "episodes")] == [
    10,
    1,
    300,
    30,
    30,
    50,
  ]
  # capped at what the predictor was trained to predict; a given horizon wins
  assert planner_settings("lewm", 10, 3)["horizon"] == 3 and planner_settings("lewm", 10, 3, horizon=6)["horizon"] == 6
  assert planner_settings("reach", None, 3)["horizon"] == 3 and planner_settings("reach", None, 6)["horizon"] == 4
  with pytest.raises(ValueError, match=r"--goal_offset=50 control steps is not a whole number.*multiple of 4"):
    Protocol().check(action_repeat=4)


@pytest.fixture(scope="module")
def case_env():
  pytest.importorskip("dm_control")
  from worldmodel.envs import dmc_goal, goal_protocol

  env = dmc_goal.GoalEnv("reacher-easy", size=32, action_repeat=5)  # one env (and renderer) for this module
  return goal_protocol.CaseEnv(env, LEWM)


@pytest.mark.parametrize("protocol", [LEWM, LEWM_DATA], ids=["uniform", "data"])
def test_start_and_goal_come_from_one_held_out_trajectory(case_env, protocol):
  from worldmodel.data.sources import dmc
  from worldmodel.envs import goal_protocol

  starts = set()
  for seed in (1_000_000, 1_000_001, 1_000_002):
    case = goal_protocol.make_case(case_env.env, seed, protocol)
    ep = case.episode
    if protocol.trajectory_policy == "data":
      # The dataset generator's episode for that seed (same policy and rendering as the training data), in frames.
      assert ep["video"].shape == (41, 32, 32, 3) and 0 <= case.start <= 41 - 5 - 1 and case.offset == 5
      again = dmc.rollout(case_env.env.env, dmc.Spec("reacher", "easy", frames=41, size=32, action_repeat=5), seed)
      np.testing.assert_array_equal(again["video"], ep["video"])
    else:
      # LeWM's: an i.i.d. uniform action per env step of 2 control steps, any env step a start.
      assert ep["video"].shape == (101, 32, 32, 3) and 0 <= case.start <= 101 - 15 - 1 and case.offset == 15
      assert (
        case.repeat == 2
        and np.abs(ep["action"]).max() <= 1
        and abs(np.corrcoef(ep["action"][1:, 0], ep["action"][:-1, 0])[0, 1]) < 0.3
      )
    assert goal_protocol.make_case(case_env.env, seed, protocol).start == case.start  # a pure function of the seed
    case_env.load(case)
    frame = case_env.reset(seed)
    np.testing.assert_array_equal(frame, ep["video"][case.start])  # the exact start state, velocity included
    np.testing.assert_array_equal(case_env.state(), ep["state"][case.start])
    # Replaying the recorded actions up to the goal lands exactly on it: it is the state goal_offset steps later.
    for t in range(case.start, case.start + case.offset):
      for _ in range(case.repeat):
        case_env.env.env.step(ep["action"][t])
    np.testing.assert_array_equal(case_env.frame(), case_env.goal_frame())
    np.testing.assert_array_equal(case_env.state()[:2], case_env.goal_qpos)
    assert case_env.distance() < 1e-6  # the goal qpos is the dataset's float32 state
    starts.add(case.start)
  assert len(starts) > 1


def test_success_is_every_joint_within_the_tolerance_at_any_control_step(case_env):
  from worldmodel.envs import goal_protocol

  case_env.load(goal_protocol.make_case(case_env.env, 1_000_003, LEWM))
  case_env.reset()
  physics, goal_Q = case_env.physics, case_env.goal_qpos
  for delta_Q, reached in (([0.04, -0.049], True), ([0.0, 0.051], False), ([0.06, 0.0], False)):
    with physics.reset_context():
      physics.data.qpos[:] = goal_Q + delta_Q
    assert case_env.distance() == pytest.approx(np.abs(delta_Q).max()) and case_env._reached() == reached
  # A goal passed inside a frame counts: the goal pose 3 control steps into a 5-step frame, a tolerance only an
  # exact hit meets; at the frame's end the arm is past it.
  exact = goal_protocol.CaseEnv(case_env.env, Protocol(qpos_tolerance=1e-9))
  exact.load(case_env.case)
  exact.reset()
  action_A = np.array([0.8, -0.6])
  for _ in range(3):
    exact.env.env.step(action_A)
  goal_Q = exact.physics.data.qpos.copy()
  exact.reset()
  exact.goal_qpos = goal_Q
  assert not exact.success()
  exact.step(action_A)
  assert exact.success() and exact.distance() > 1e-3


def test_oracle_reaches_the_goals_random_actions_do_not(case_env):
  from worldmodel.envs import goal_protocol

  cost_fn = case_env.oracle_cost_fn()

  @jax.jit
  def oracle(obs_CHWC, goal_HWC, key, warm_HA, past_KA):  # frames unused: the oracle reads the true state
    kw = dict(horizon=5, low_A=case_env.low_A, high_A=case_env.high_A, samples=64, elites=8, iterations=6)
    return planning.cem(cost_fn, key, init_mean_HA=warm_HA, **kw)[0]

  runs = goal_protocol.evaluate(
    case_env, {"oracle": oracle}, LEWM, episodes=4, seed=1_000_000, horizon=5, replan_every=5, context=1, log=print
  )
  assert [len(e["plan_seconds"]) for e in runs["oracle"]] == [2] * 4  # 50 control steps = 10 frames, 5 per plan
  assert all(e["frames_THWC"].shape == (11, 32, 32, 3) for e in runs["oracle"])
  s = goal_protocol.summary(runs)
  assert s["oracle_successes"] >= 3, s
  assert s["random_successes"] <= 1, s
  lo, hi = s["oracle_success_ci95"]
  assert lo < s["oracle_success_rate"] <= hi and "oracle_plan_seconds_median" in s
  rows = goal_protocol.per_episode(runs)
  assert (
    [r["trajectory"] for r in rows["oracle"]]
    == [r["trajectory"] for r in rows["random"]]
    == list(range(1_000_000, 1_000_004))
  )
  for r in rows["oracle"] + rows["random"]:
    assert r["min_joint_error"] <= r["final_joint_error"] + 1e-6 and (r["first_success"] >= 0) == r["success"]


def test_bad_settings_exit_2_before_anything_loads(tmp_path):
  r = run_cli("worldmodel.plan", f"--workdir={tmp_path}/none", "--protocol=lewm", "--budget=0")
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --budget=0"), r.stderr[-2000:]
  from worldmodel import plan

  for kwargs, msg in ((dict(episodes=0), "--episodes=0"), (dict(samples=16, elites=40), "--elites=40 must not exceed")):
    with pytest.raises(ValueError, match=msg):
      plan.run(str(tmp_path / "none"), protocol="lewm", **kwargs)
  with pytest.raises(ValueError, match="--goal_offset=60 control steps is beyond"):
    plan.run(str(tmp_path / "none"), protocol="lewm", lewm=Protocol(goal_offset=60, trajectory_steps=50))


@pytest.fixture(scope="module")
def reacher32(tmp_path_factory):
  pytest.importorskip("dm_control")
  from worldmodel.data import generate

  out = str(tmp_path_factory.mktemp("reacher32") / "data")
  generate.generate("dmc:reacher-easy", out, 3, generate.Config(frames=4, size=32, action_repeat=5), seed=0)
  return out


def _workdir(tmp_path, data, **model):
  from worldmodel import config as config_lib

  config = experiment_config("wm", "tiny")
  config.data.dir = data
  config.model.update({"action_dim": 2, **model})
  tmp_path.mkdir()
  config_lib.save_json(config, str(tmp_path))
  return str(tmp_path)


def test_env_whose_actions_or_frames_differ_from_the_model_is_refused(tmp_path, reacher32):
  from worldmodel import plan

  w = _workdir(tmp_path / "a3", reacher32, size=32, action_dim=3)
  r = run_cli("worldmodel.plan", f"--workdir={w}", "--protocol=lewm")  # no checkpoint: refused before any restore
  assert r.returncode == 2, r.stderr[-2000:]
  assert "error: dmc:reacher-easy has 2-D actions but the model in" in r.stderr and "3-D actions" in r.stderr
  w = _workdir(tmp_path / "s64", reacher32, size=64)
  with pytest.raises(ValueError, match=r"renders 32x32 frames .* takes 64x64 frames \(model.size\)"):
    plan.build_env("dmc:reacher-easy", plan.load_config(w), w)
  w = _workdir(tmp_path / "ok", reacher32, size=32)
  with pytest.raises(ValueError, match="--goal_offset=24 control steps is not a whole number"):
    plan.run(w, protocol="lewm", lewm=Protocol(goal_offset=24))


@pytest.mark.slow
def test_lewm_protocol_cli_end_to_end(tmp_path, reacher32):
  w = tmp_path / "wm"
  args = [f"--config.data.dir={reacher32}", "--config.model.size=32", "--config.total_steps=2"]
  r = run_cli("worldmodel.train", "--config=experiments/wm.py:tiny", f"--workdir={w}", *args)
  assert r.returncode == 0, r.stderr[-3000:]
  small = ["--episodes=1", "--samples=8", "--iterations=2", "--elites=2", "--trajectory_steps=50"]
  r = run_cli("worldmodel.plan", f"--workdir={w}", "--protocol=lewm", "--cost_steps=sum", *small)
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(w / "plan" / "2-lewm" / "metrics.json"))
  assert m["protocol"] == "lewm" and m["cost_steps"] == "sum" and m["horizon"] == 3 and m["replan_every"] == 1
  assert (m["goal_offset"], m["budget"], m["qpos_tolerance"], m["action_repeat"]) == (50, 100, 0.05, 5)
  for name in ("", "random_", "oracle_"):
    lo, hi = m[f"{name}success_ci95"]
    assert 0 <= lo <= m[f"{name}success_rate"] <= hi <= 1 and math.isfinite(m[f"{name}final_joint_error"])
  assert m["plan_seconds_median"] > 0 and m["oracle_plan_seconds_median"] > 0
  assert sorted(m["per_episode"]) == ["oracle", "planned", "random"] and len(m["per_episode"]["planned"]) == 1
  assert os.path.getsize(m["media"]["episode_mp4"]) > 1000 and os.path.getsize(m["media"]["distance_png"]) > 1000
