"""LeWM's goal-reaching protocol on dm_control reacher, for `python -m worldmodel.plan --protocol=lewm`.

As stable-worldmodel evaluates LeWM, DINO-WM and PLDM on reacher: the start is a state of a held-out random-policy
trajectory, the goal image is the same trajectory's observation `goal_offset` control steps later, the agent has
`budget` control steps, and an episode succeeds when every joint is within `qpos_tolerance` rad of the goal's qpos
at any control step (the episode would terminate there). Units are control steps (one dm_control step, 0.02 s on
reacher); a model frame spans the data's action repeat (LeWM: 5 env steps of 2 control steps each). Differences
from LeWM: BUILD_NOTES.md.

The held-out trajectories come from seeds no dataset uses, rendered like the model's data (camera, size, target
sphere shown or not). Their policy (`Protocol.trajectory_policy`): `uniform`, LeWM's (stable-worldmodel's
RandomPolicy: an i.i.d. uniform action every env step of 2 control steps, the start at any env step), or `data`,
our dataset generator's episodes (`dmc.rollout`: AR(1) actions held for a model frame, the start at a frame),
which travel further in the 50 control steps to the goal (BUILD_NOTES: the shoulder turns more than π in 6 of 50).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from worldmodel.data.sources import dmc

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
START_STREAM = 25  # the start index's random stream: np.random.default_rng([trajectory seed, START_STREAM])
ACTION_STREAM = 26  # the uniform policy's actions: np.random.default_rng([trajectory seed, ACTION_STREAM])
LEWM_ENV_STEP = 2  # control steps per env step of stable-worldmodel's DMControl wrapper (its action repeat)
POLICIES = ("uniform", "data")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """LeWM's reacher settings (scripts/plan/config/reacher.yaml, custom_tasks/reacher.py) in dm_control control
  steps: its env steps hold each action for 2 of them (DMControlWrapper.action_repeat), so its goal offset of 25
  env steps is 50 control steps, its budget of 50 is 100, and its 200-step episodes are 400."""

  goal_offset: int = 50
  budget: int = 100
  trajectory_steps: int = 400
  qpos_tolerance: float = 0.05
  trajectory_policy: str = "uniform"  # the held-out trajectories' policy: LeWM's (uniform) or our generator's (data)

  def check(self, action_repeat: int | None = None) -> None:
    """ValueError naming the flag for settings that cannot work (before anything is built)."""
    if self.trajectory_policy not in POLICIES:
      raise ValueError(f"--trajectory_policy={self.trajectory_policy!r}: choose one of {', '.join(POLICIES)}")
    if self.trajectory_policy == "uniform" and (
      self.goal_offset % LEWM_ENV_STEP or self.trajectory_steps % LEWM_ENV_STEP
    ):
      raise ValueError(
        f"--goal_offset={self.goal_offset} and --trajectory_steps={self.trajectory_steps} must be whole LeWM env "
        f"steps ({LEWM_ENV_STEP} control steps) with --trajectory_policy=uniform"
      )
    if self.budget <= 0:
      raise ValueError(f"--budget={self.budget}: the agent needs at least one control step to reach its goal")
    if self.goal_offset <= 0:
      raise ValueError(f"--goal_offset={self.goal_offset}: the goal must lie at least one control step after the start")
    if self.goal_offset > self.trajectory_steps:
      raise ValueError(
        f"--goal_offset={self.goal_offset} control steps is beyond the end of the held-out trajectories "
        f"(--trajectory_steps={self.trajectory_steps})"
      )
    if not self.qpos_tolerance > 0:
      raise ValueError(f"--qpos_tolerance={self.qpos_tolerance}: must be > 0 rad")
    for name in ("goal_offset", "budget", "trajectory_steps") if action_repeat else ():
      value = getattr(self, name)
      if value % action_repeat:
        raise ValueError(
          f"--{name}={value} control steps is not a whole number of the model's frames ({action_repeat} control "
          f"steps each: its data's action_repeat); use a multiple of {action_repeat}"
        )

  def frames(self, action_repeat: int) -> tuple[int, int, int]:
    """(goal offset, budget, trajectory length) in model frames; the trajectory includes its first observation."""
    return self.goal_offset // action_repeat, self.budget // action_repeat, self.trajectory_steps // action_repeat + 1


# Planner settings a flag left unset takes, per protocol: ours, and LeWM's search (solver/cem.yaml: CEM 300
# samples, 30 iterations, top 30; reacher.yaml: 50 episodes). Horizon None: the goal offset, known once the model's
# frame skip is (capped in `planner_settings`); both replan after every frame (LeWM executes its whole horizon).
DEFAULTS = {
  "reach": dict(episodes=10, horizon=4, samples=64, iterations=4, elites=8, replan_every=1),
  "lewm": dict(episodes=50, horizon=None, samples=300, iterations=30, elites=30, replan_every=1),
}


def planner_settings(
  protocol: str, frames_to_goal: int | None = None, trained_horizon: int | None = None, **given
) -> dict:
  """Each given setting, else the protocol's default, replanning after every frame (MPC). The default horizon (reach:
  4; lewm: `frames_to_goal`, the goal offset in model frames) is capped at `trained_horizon`, the frames the
  predictor learnt to predict from its context (beyond them its positions were never trained). On the 5000-step
  reacher model, LeWM's own choice (a horizon spanning the goal, all executed) reached 24 %, horizon 3 with MPC
  60 % (BUILD_NOTES.md). ValueError for settings that cannot work; call it before `frames_to_goal` is known to
  check the rest early."""
  s = {k: v if given.get(k) is None else given[k] for k, v in DEFAULTS[protocol].items()}
  if given.get("horizon") is None:
    cap = [n for n in (s["horizon"], frames_to_goal, trained_horizon) if n]
    s["horizon"] = min(cap) if cap else None
  s["replan_every"] = s["replan_every"] or s["horizon"]
  for key, value in s.items():
    if value is not None and value <= 0:
      raise ValueError(f"--{key}={value}: must be at least 1")
  if s["elites"] > s["samples"]:
    raise ValueError(f"--elites={s['elites']} must not exceed --samples={s['samples']}")
  if s["horizon"] and s["replan_every"] > s["horizon"]:
    raise ValueError(f"--replan_every={s['replan_every']} must not exceed --horizon={s['horizon']}")
  return s


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval of a binomial rate (sane at 0 / n and n / n, unlike the normal approximation)."""
  if n <= 0:
    return 0.0, 1.0
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: list[bool]) -> dict:
  k, n = int(sum(successes)), len(successes)
  lo, hi = wilson_interval(k, n)
  return {"rate": k / n if n else float("nan"), "successes": k, "episodes": n, "ci95": [lo, hi]}


@dataclasses.dataclass
class Case:
  """One evaluation episode: a held-out trajectory and where on it start and goal lie."""

  seed: int
  start: int  # trajectory step of the start; the goal is step start + offset
  offset: int
  episode: dict  # video [T,H,W,C], action [T,A], state [T, nq+nv] as in the dataset, one row per trajectory step
  repeat: int  # control steps per trajectory step (each action held that long)

  @property
  def goal_HWC(self) -> np.ndarray:
    return self.episode["video"][self.start + self.offset]

  def goal_qpos(self, nq: int) -> np.ndarray:
    return self.episode["state"][self.start + self.offset, :nq].astype(np.float64)


def make_case(env, seed: int, protocol: Protocol) -> Case:
  """The trajectory with this seed and a start drawn uniformly among those whose goal lies inside it
  (eval_wm.py: start <= length - offset - 1), a pure function of the seed."""
  repeat = LEWM_ENV_STEP if protocol.trajectory_policy == "uniform" else env.spec.action_repeat
  offset, steps = protocol.goal_offset // repeat, protocol.trajectory_steps // repeat + 1
  spec = dataclasses.replace(env.spec, frames=steps, action_repeat=repeat)
  actions = uniform_actions(env, seed, steps) if protocol.trajectory_policy == "uniform" else None
  episode = dmc.rollout(env.env, spec, seed, actions)
  start = int(np.random.default_rng([seed, START_STREAM]).integers(0, steps - offset))
  return Case(seed=seed, start=start, offset=offset, episode=episode, repeat=repeat)


def uniform_actions(env, seed: int, steps: int) -> np.ndarray:
  """LeWM's held-out policy, [steps, A]: an i.i.d. uniform action per trajectory step (stable-worldmodel's
  RandomPolicy samples the action space at every env step), a pure function of the seed."""
  rng = np.random.default_rng([seed, ACTION_STREAM])
  return rng.uniform(env.low_A, env.high_A, size=(steps, len(env.low_A))).astype(np.float32)


class CaseEnv:
  """A `GoalEnv` set up for one `Case` at a time (`load`), with the interface `planning.run_mpc` and
  `latent_planner.make_planner` use: reset() restores the start state (the trajectory's own actions replayed from its reset:
  exact, velocities included), goal_frame() is the goal observation, success() is LeWM's qpos criterion checked
  after every control step, distance() the largest joint error in rad, oracle_cost_fn() plans with the true
  physics toward the goal's qpos. One object for all cases, so a planner compiled once reads the current one."""

  def __init__(self, env, protocol: Protocol, cost_steps: str = "last"):
    self.env, self.protocol, self.cost_steps = env, protocol, cost_steps
    self.low_A, self.high_A, self.spec, self.physics = env.low_A, env.high_A, env.spec, env.physics
    self.case, self.goal_qpos, self._hit = None, None, False

  def load(self, case: Case) -> None:
    self.case, self.goal_qpos = case, case.goal_qpos(self.physics.model.nq)

  def reset(self, seed: int | None = None) -> np.ndarray:
    if seed is not None and seed != self.case.seed:
      raise ValueError(f"this CaseEnv replays trajectory {self.case.seed}, not {seed}")
    self.env.reset(self.case.seed)
    for action_A in self.case.episode["action"][: self.case.start]:
      for _ in range(self.case.repeat):
        self.env.env.step(action_A)
    self._hit = self._reached()
    return self.env.frame()

  def _reached(self) -> bool:
    return self.distance() < self.protocol.qpos_tolerance

  def step(self, action_A) -> np.ndarray:
    """One model frame: the clipped action held for action_repeat control steps, the criterion after each."""
    action_A = np.clip(np.asarray(action_A, np.float64), self.low_A, self.high_A)
    self._hit = False
    for _ in range(self.spec.action_repeat):
      self.env.env.step(action_A)
      self._hit |= self._reached()
    return self.env.frame()

  def frame(self) -> np.ndarray:
    return self.env.frame()

  def state(self) -> np.ndarray:
    return self.env.state()

  def goal_frame(self) -> np.ndarray:
    return self.case.goal_HWC

  def distance(self) -> float:
    return float(np.abs(self.physics.data.qpos - self.goal_qpos).max())

  def success(self) -> bool:
    return bool(self._hit)

  def rollout_last_frames(self, actions_NHA) -> np.ndarray:
    return self.env.rollout_last_frames(actions_NHA)

  def rollout_cost(self, actions_NHA) -> np.ndarray:
    """Oracle cost [N]: joint-space distance to the goal qpos under the true physics, at the last imagined
    frame or summed over all of them (the same choice as the model's --cost_steps)."""
    err_NH = np.linalg.norm(self.env._simulate(actions_NHA) - self.goal_qpos, axis=-1)
    return (err_NH[:, -1] if self.cost_steps == "last" else err_NH.sum(-1)).astype(np.float32)

  def oracle_cost_fn(self):
    import jax
    import jax.numpy as jnp

    def cost_fn(actions_NHA):
      return jax.pure_callback(self.rollout_cost, jax.ShapeDtypeStruct(actions_NHA.shape[:1], jnp.float32), actions_NHA)

    return cost_fn


def evaluate(
  case_env: CaseEnv,
  plan_fns: dict,
  protocol: Protocol,
  *,
  episodes: int,
  seed: int,
  horizon: int,
  replan_every: int,
  context: int,
  log=print,
) -> dict:
  """Runs every planner in `plan_fns` ({name: plan_fn} made for `case_env`, e.g. planned / oracle) and random
  actions on the same `episodes` cases (trajectory seeds seed, seed + 1, ...). Returns {name: [episode dicts]} (see `planning._episode`)."""
  from worldmodel import planning

  _, budget, _ = protocol.frames(case_env.spec.action_repeat)
  runs = {name: [] for name in (*plan_fns, "random")}
  for i in range(episodes):
    case = make_case(case_env.env, seed + i, protocol)
    case_env.load(case)
    for name, plan_fn in plan_fns.items():
      ep = planning.run_mpc(
        case_env, plan_fn, steps=budget, horizon=horizon, replan_every=replan_every, seed=case.seed, context=context
      )
      runs[name].append(ep)
    runs["random"].append(planning.random_policy_episode(case_env, budget, seed=case.seed))
    for eps in runs.values():
      eps[-1].update(trajectory=case.seed, start=case.start)
    parts = " | ".join(f"{k} {'reached' if v[-1]['success'] else 'missed'}" for k, v in runs.items())
    log(f"episode {i + 1}/{episodes} (trajectory {case.seed}, start step {case.start}): {parts}", flush=True)
  return runs


def per_episode(runs: dict) -> dict:
  """{policy: [one row per episode]}: which held-out trajectory and start step, whether it succeeded (checked every
  control step) and in which frame first (-1: never), and the largest joint error (rad) at its closest frame and
  at the end: how near the failures came."""
  keys = ("trajectory", "start", "success", "first_success")
  return {
    name: [
      {
        **{k: e[k] for k in keys},
        "min_joint_error": float(np.min(e["distance_T"])),
        "final_joint_error": e["final_distance"],
      }
      for e in eps
    ]
    for name, eps in runs.items()
  }


def summary(runs: dict) -> dict:
  """Per policy (keys prefixed by its name, none for `planned`): success rate with its 95 % Wilson interval, the
  mean largest joint error at the end, and the median seconds per plan (the first call, which compiles, left out)."""
  out = {}
  for name, eps in runs.items():
    p = "" if name == "planned" else f"{name}_"
    r = rate([e["success"] for e in eps])
    out.update({f"{p}success_rate": r["rate"], f"{p}success_ci95": r["ci95"], f"{p}successes": r["successes"]})
    out[f"{p}final_joint_error"] = float(np.mean([e["final_distance"] for e in eps]))
    seconds = np.concatenate([e["plan_seconds"] for e in eps if "plan_seconds" in e] or [[]])[1:]
    if seconds.size:
      out[f"{p}plan_seconds_median"] = float(np.median(seconds))
  return out
