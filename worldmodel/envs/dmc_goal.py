"""Closed-loop goal reaching on dm_control, for evaluating planners against a world model.

`GoalEnv` renders exactly like the dataset generator (`dmc.load_env`, same size/camera/fast-render
settings) and reseeds like `dmc.rollout`, so `reset(seed)` gives the start frame and state of the
dataset episode with that seed, and the target is a pure function of the seed. The goal is given
as an image: the arm posed (analytic IK) with its fingertip on the target.

Tasks plug in as a small `_GoalTask` subclass (goal pose, distance, success); see `TASKS`.
"""

from __future__ import annotations

import mujoco
import numpy as np
from mujoco import rollout

from worldmodel.data.sources import dmc


class _GoalTask:
  """Per-task geometry: where the goal is and when it counts as reached."""

  def __init__(self, physics):
    self.physics = physics

  def goal_qpos(self) -> np.ndarray:
    raise NotImplementedError

  def distance(self) -> float:
    raise NotImplementedError

  def success(self) -> bool:
    raise NotImplementedError

  def rollout_distance(self, qpos_NTQ: np.ndarray) -> np.ndarray:
    """Goal distance [N,T] of a batch of qpos trajectories (oracle planning cost)."""
    raise NotImplementedError


class _Reacher(_GoalTask):
  """Two-link planar arm (shoulder, wrist hinges about z); target is a world-fixed sphere."""

  def __init__(self, physics):
    super().__init__(physics)
    named = physics.named.model
    # Links are the parent->child body offsets (0.12 and 0.12 m; the hand capsule is only 0.1 long).
    hand_xy, finger_xy = named.body_pos["hand", :2], named.body_pos["finger", :2]
    self.l1, self.l2 = float(np.linalg.norm(hand_xy)), float(np.linalg.norm(finger_xy))
    self.a1, self.a2 = float(np.arctan2(*hand_xy[::-1])), float(np.arctan2(*finger_xy[::-1]))
    self.base_xy = named.body_pos["arm", :2].copy()
    self.wrist_range = named.jnt_range["wrist"].copy()

  def _target_xy(self) -> np.ndarray:
    return self.physics.named.data.geom_xpos["target", :2].copy()

  def fingertip_xy(self, qpos_NQ: np.ndarray) -> np.ndarray:
    """Forward kinematics (matches physics.forward to float precision)."""
    th1 = qpos_NQ[..., 0] + self.a1
    th2 = qpos_NQ[..., 0] + qpos_NQ[..., 1] + self.a2
    x = self.l1 * np.cos(th1) + self.l2 * np.cos(th2)
    y = self.l1 * np.sin(th1) + self.l2 * np.sin(th2)
    return self.base_xy + np.stack([x, y], -1)

  def goal_qpos(self) -> np.ndarray:
    """Elbow-up/down IK solution nearer the current pose, shoulder unwrapped to the nearest turn."""
    dx, dy = self._target_xy() - self.base_xy
    l1, l2 = self.l1, self.l2
    cos_phi = (dx * dx + dy * dy - l1 * l1 - l2 * l2) / (2 * l1 * l2)
    qpos = self.physics.data.qpos.copy()
    best = None
    for sign in (1.0, -1.0):
      phi = sign * np.arccos(np.clip(cos_phi, -1.0, 1.0))  # angle of link 2 relative to link 1
      th1 = np.arctan2(dy, dx) - np.arctan2(l2 * np.sin(phi), l1 + l2 * np.cos(phi))
      q1, q2 = th1 - self.a1, phi + self.a1 - self.a2
      q2 = np.clip(q2, *self.wrist_range)
      q1 += 2 * np.pi * np.round((qpos[0] - q1) / (2 * np.pi))
      cand = np.array([q1, q2])
      if best is None or np.abs(cand - qpos[:2]).sum() < np.abs(best - qpos[:2]).sum():
        best = cand
    qpos[:2] = best
    return qpos

  def distance(self) -> float:
    return float(self.physics.finger_to_target_dist())

  def success(self) -> bool:
    # The task's reward is 1 exactly when the centres are within the two radii (0.05 + 0.01 easy).
    radii = self.physics.named.model.geom_size[["target", "finger"], 0].sum()
    return self.distance() <= radii

  def rollout_distance(self, qpos_NTQ: np.ndarray) -> np.ndarray:
    return np.linalg.norm(self.fingertip_xy(qpos_NTQ) - self._target_xy(), axis=-1)


TASKS = {"reacher-easy": _Reacher, "reacher-hard": _Reacher}


class GoalEnv:
  """Pixel observations, goal image, distance/success for one dm_control task."""

  def __init__(
    self,
    task: str = "reacher-easy",
    size: int = 64,
    camera: int = 0,
    action_repeat: int = 1,
    seed: int = 0,
    render_target: bool = True,
  ):
    if task not in TASKS:
      raise ValueError(f"GoalEnv does not support {task!r}; supported tasks: {', '.join(sorted(TASKS))}")
    domain, _, name = task.partition("-")
    self.spec = dmc.Spec(domain, name, 1, size, camera, action_repeat, render_target)
    self.env = dmc.load_env(self.spec)
    self.physics = self.env.physics
    self.task = TASKS[task](self.physics)
    spec = self.env.action_spec()
    self.low_A = spec.minimum.astype(np.float32)
    self.high_A = spec.maximum.astype(np.float32)
    self.control_timestep = float(self.env.control_timestep()) * action_repeat
    self._goal_qpos = None
    self._rollout_data = mujoco.MjData(self.physics.model.ptr)  # scratch for oracle rollouts
    self.reset(seed)

  def reset(self, seed: int) -> np.ndarray:
    """Same seeding as `dmc.rollout`: start state and target depend on the seed only."""
    env_ss, _ = np.random.SeedSequence(seed).spawn(2)
    self.env.task.random.seed(env_ss.generate_state(4))
    self.env.reset()
    self._goal_qpos = self.task.goal_qpos()  # fixed per episode: IK branch chosen at the start pose
    return self.frame()

  def frame(self) -> np.ndarray:
    return self.physics.render(self.spec.size, self.spec.size, camera_id=self.spec.camera)

  def step(self, action_A) -> np.ndarray:
    """Holds the (clipped) action for `action_repeat` env steps, like one dataset step."""
    action_A = np.clip(np.asarray(action_A, np.float64), self.low_A, self.high_A)
    for _ in range(self.spec.action_repeat):
      self.env.step(action_A)
    return self.frame()

  def state(self) -> np.ndarray:
    """concat(qpos, qvel) float32, as in the dataset's `state`."""
    return np.concatenate([self.physics.data.qpos, self.physics.data.qvel]).astype(np.float32)

  def distance(self) -> float:
    return self.task.distance()

  def success(self) -> bool:
    return self.task.success()

  def goal_state(self) -> np.ndarray:
    return self._goal_qpos.copy()

  def _save(self) -> np.ndarray:
    # INTEGRATION = time, qpos, qvel, act, ctrl, warmstart, ...: everything the next step reads.
    m, d = self.physics.model.ptr, self.physics.data.ptr
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(m, spec))
    mujoco.mj_getState(m, d, state, spec)
    return state

  def _restore(self, state: np.ndarray) -> None:
    m, d = self.physics.model.ptr, self.physics.data.ptr
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(m, d, state, spec)
    self.physics.forward()  # derived quantities (xpos, render); leaves the integration state as is

  def _render_poses(self, qpos_NQ: np.ndarray) -> np.ndarray:
    """[N, H, W, C] renders of the given poses (zero velocity: the picture shows the pose only); the episode's
    physics state is left untouched. Rendering must run on the thread that owns the GL context."""
    saved = self._save()
    try:
      frames = []
      for qpos_Q in qpos_NQ:
        with self.physics.reset_context():
          self.physics.data.qpos[:] = qpos_Q
          self.physics.data.qvel[:] = 0
        frames.append(self.frame())
      return np.stack(frames)
    finally:
      self._restore(saved)

  def goal_frame(self) -> np.ndarray:
    """Render of the goal pose; the episode's physics state is left untouched."""
    return self._render_poses(self._goal_qpos[None])[0]

  def _simulate(self, actions_NHA) -> np.ndarray:
    """qpos [N, H, Q] after each step of each action sequence, simulated from the current state with the true
    physics (mujoco.rollout); the env itself is not advanced."""
    actions_NHA = np.clip(np.asarray(actions_NHA, np.float64), self.low_A, self.high_A)
    control_NTA = np.repeat(actions_NHA, self.spec.action_repeat, axis=1)
    m, d = self.physics.model.ptr, self.physics.data.ptr
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    init = np.empty(mujoco.mj_stateSize(m, spec))
    mujoco.mj_getState(m, d, init, spec)
    state_NTS, _ = rollout.rollout(m, self._rollout_data, init[None], control_NTA)
    state_NTS = state_NTS[:, self.spec.action_repeat - 1 :: self.spec.action_repeat]
    return state_NTS[..., 1 : 1 + m.nq]  # FULLPHYSICS layout: time, qpos, qvel, act, ...

  def rollout_cost(self, actions_NHA) -> np.ndarray:
    """Oracle cost [N]: mean goal distance along each action sequence under the true physics."""
    return self.task.rollout_distance(self._simulate(actions_NHA)).mean(-1).astype(np.float32)

  def rollout_last_frames(self, actions_NHA) -> np.ndarray:
    """[N, H, W, C] renders of where each action sequence ends under the true physics; call it from the host,
    not from a jax callback (rendering needs the GL context's thread)."""
    return self._render_poses(self._simulate(actions_NHA)[:, -1])

  def oracle_cost_fn(self):
    """`rollout_cost` as a jittable cost_fn(actions_NHA) -> cost_N (host callback), for an
    upper-bound planner over the real simulator. Reads the env's state when it runs."""
    import jax
    import jax.numpy as jnp

    def cost_fn(actions_NHA):
      out = jax.ShapeDtypeStruct(actions_NHA.shape[:1], jnp.float32)
      return jax.pure_callback(self.rollout_cost, out, actions_NHA)

    return cost_fn
