"""Two-Room goal reaching for `python -m worldmodel.plan --env=tworoom`, with LeWM's evaluation protocol.

LeWM (stable-worldmodel `scripts/plan/config/tworoom.yaml`) starts each episode at a state of a held-out trajectory
and takes as goal the observation `goal_offset` = 25 env steps later on that trajectory; the planner then has a budget
of 50 env steps (frame skip 5: 10 recorded steps) and succeeds once the agent is within 16 px of a 224-px frame of the
goal (4.57 units of our 64-unit world; EB-JEPA's and DINO-WM's wall threshold is 4.5, which we use). Our held-out
trajectories come from the data policy itself: `reset(seed)` draws a layout and a start as the generator does and
rolls the random walk forward, so the goal is reachable by construction. Plan seeds (>= 1,000,000) never coincide
with a dataset's per-episode seeds (64-bit hashes).
"""

from __future__ import annotations

import numpy as np

from worldmodel.data.sources import tworoom

SUCCESS_RADIUS = 4.5
GOAL_OFFSET = 25  # env steps between start and goal (LeWM eval.goal_offset_steps)
BUDGET = 50  # env steps the planner may take (LeWM eval.eval_budget)


class GoalEnv:
  """Pixel observations, goal image and distance / success of one Two-Room episode at a time."""

  def __init__(self, size: int = 64, action_repeat: int = 1, goal_offset: int = GOAL_OFFSET, seed: int = 0):
    if goal_offset % action_repeat:
      raise ValueError(f"goal offset {goal_offset} env steps is not a whole number of {action_repeat}-step actions")
    self.size, self.action_repeat = size, action_repeat
    self.goal_steps = goal_offset // action_repeat  # recorded steps between start and goal
    self.low_A = np.full(2, -tworoom.MAX_STEP, np.float32)
    self.high_A = np.full(2, tworoom.MAX_STEP, np.float32)
    self.reset(seed)

  @staticmethod
  def budget_steps(action_repeat: int) -> int:
    """The protocol's step budget in recorded (planner) steps."""
    return BUDGET // action_repeat

  def reset(self, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    (self.wall_x, self.door_y), pos_T2, _ = tworoom.trajectory(rng, self.goal_steps + 1, self.action_repeat)
    self.pos, self.goal_pos = pos_T2[0].copy(), pos_T2[-1].copy()
    return self.frame()

  def frame(self) -> np.ndarray:
    return tworoom.render(self.pos[None], self.wall_x, self.door_y, self.size)[0]

  def goal_frame(self) -> np.ndarray:
    return tworoom.render(self.goal_pos[None], self.wall_x, self.door_y, self.size)[0]

  def step(self, action_A) -> np.ndarray:
    """Holds the action (length clipped to MAX_STEP) for `action_repeat` env steps, like one dataset step."""
    self.pos = tworoom.step(self.pos, np.asarray(action_A, np.float64), self.wall_x, self.door_y, self.action_repeat)
    return self.frame()

  def state(self) -> np.ndarray:
    return np.array([*self.pos, self.wall_x, self.door_y], np.float32)

  def distance(self) -> float:
    return float(np.linalg.norm(self.pos - self.goal_pos))

  def success(self) -> bool:
    return self.distance() < SUCCESS_RADIUS

  def _simulate(self, actions_NHA) -> np.ndarray:
    """Positions [N, H, 2] after each step of each action sequence, from the current state; the env is not moved."""
    actions_NHA = np.asarray(actions_NHA, np.float64)
    pos_N2 = np.broadcast_to(self.pos, (actions_NHA.shape[0], 2))
    out = []
    for h in range(actions_NHA.shape[1]):
      pos_N2 = tworoom.step(pos_N2, actions_NHA[:, h], self.wall_x, self.door_y, self.action_repeat)
      out.append(pos_N2)
    return np.stack(out, 1)

  def rollout_cost(self, actions_NHA) -> np.ndarray:
    """Oracle cost [N]: mean goal distance along each action sequence under the true dynamics."""
    return np.linalg.norm(self._simulate(actions_NHA) - self.goal_pos, axis=-1).mean(-1).astype(np.float32)

  def rollout_last_frames(self, actions_NHA) -> np.ndarray:
    """[N, H, W, C] renders of where each action sequence ends under the true dynamics."""
    return tworoom.render(self._simulate(actions_NHA)[:, -1], self.wall_x, self.door_y, self.size)

  def oracle_cost_fn(self):
    """`rollout_cost` as a jittable cost_fn(actions_NHA) -> cost_N (host callback)."""
    import jax
    import jax.numpy as jnp

    def cost_fn(actions_NHA):
      out = jax.ShapeDtypeStruct(actions_NHA.shape[:1], jnp.float32)
      return jax.pure_callback(self.rollout_cost, out, actions_NHA)

    return cost_fn
