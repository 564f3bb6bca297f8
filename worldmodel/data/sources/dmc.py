"""Pixel rollouts of DeepMind Control Suite tasks (dm_control + MuJoCo), rendered headless.

Source spec `dmc:DOMAIN-TASK`, e.g. `dmc:cartpole-swingup`, `dmc:walker-walk`.
Needs the `dmc` extra (`make install-dmc`): mujoco==3.17.0 (4.0 crashes dm_control's
first render) and dm-control==1.0.50, plus Debian EGL or OSMesa libraries.

ALIGNMENT CONVENTION (same as the bouncing source)
  * `video[t]` and `state[t]` are the observation at instant t (frame 0 = after reset).
  * `action[t]` is applied after observing frame t and leads to frame t+1: one recorded
    step = `action_repeat` env steps holding action[t]. The last action, action[T-1], is
    sampled but never applied.
  * `reward[t]` is the task reward evaluated at instant t, i.e. dm_control's reward of the
    step that produced frame t (reward[0] is evaluated right after reset, with zero control).

State (float32 [T, nq+nv]) = concat(physics qpos, qvel); `state_groups` names the slices.
An episode is a pure function of its seed: the seed reseeds the task's initial-state
randomness and the exploratory policy (AR(1)-smoothed Gaussian noise inside the
action bounds), so it does not matter which process or reused env produced it.
"""

from __future__ import annotations

import atexit
import dataclasses
import multiprocessing
import os
import subprocess
import sys
from typing import Iterable, Iterator

import numpy as np

ACTION_SMOOTHING = 0.8  # AR(1) coefficient: actions drift over ~5 steps, not white noise
ACTION_NOISE = 0.6  # stationary std before clipping, in units of the half action range
GL_BACKENDS = ("egl", "osmesa")
_PROBE = (
  "from dm_control import _render\n"
  "c = _render.Renderer(max_width=8, max_height=8)\n"
  "with c.make_current(): pass\n"
  "c.free()\n"
)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything a (worker) process needs to build its env and roll out episodes."""

  domain: str
  task: str
  frames: int
  size: int = 64
  camera: int = 0
  action_repeat: int = 1
  render_target: bool = True  # False: the task's `target` geom is not drawn (LeWM's reacher; a static distractor)


def require_installed() -> None:
  """mujoco + dm_control importable, else the one-line fix (checked before any GL probe, which would blame OpenGL)."""
  import importlib.util

  missing = [m for m in ("mujoco", "dm_control") if importlib.util.find_spec(m) is None]
  if missing:
    raise ValueError(f"{' and '.join(missing)} not installed: run `make install-dmc` (pip install -e '.[dmc]')")


def select_gl_backend() -> str:
  """Sets MUJOCO_GL (before dm_control is imported): keeps a user's choice, else the
  first of egl/osmesa that can create a context, probed in a subprocess because the
  OpenGL platform cannot change once PyOpenGL is imported."""
  require_installed()
  if os.environ.get("MUJOCO_GL"):
    return os.environ["MUJOCO_GL"]
  errors = []
  for backend in GL_BACKENDS:
    proc = subprocess.run(
      [sys.executable, "-c", _PROBE],
      capture_output=True,
      text=True,
      env={**os.environ, "MUJOCO_GL": backend},
      timeout=120,
    )
    if proc.returncode == 0:
      if errors:
        print(
          f"dmc: {errors[0]}; falling back to MUJOCO_GL={backend} (software rendering, same frames)", file=sys.stderr
        )
      os.environ["MUJOCO_GL"] = backend
      return backend
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    errors.append(f"MUJOCO_GL={backend} cannot start ({last})")
  raise ValueError(
    "no headless OpenGL for MuJoCo: " + "; ".join(errors) + ". Install the "
    "libraries with `make install-dmc` (libegl1 libegl-mesa0 libgl1-mesa-dri "
    "libgl1, or libosmesa6), or set MUJOCO_GL yourself"
  )


def _suite():
  select_gl_backend()
  try:
    from dm_control import suite
  except ImportError as e:
    raise ValueError(f"dm_control is not installed ({e}); run `make install-dmc`") from None
  return suite


def parse_task(arg: str) -> tuple[str, str]:
  """'DOMAIN-TASK' -> (domain, task); ValueError listing all suite tasks if unknown."""
  suite = _suite()
  domain, _, task = arg.partition("-")  # domain names use '_', never '-'
  if (domain, task) not in suite.ALL_TASKS:
    known = ", ".join(sorted(f"{d}-{t}" for d, t in suite.ALL_TASKS))
    raise ValueError(f"unknown dm_control task {arg!r}; use dmc:DOMAIN-TASK, one of: {known}")
  return domain, task


def load_env(spec: Spec):
  """One env per process, reused across episodes; fast-render settings (BUILD_NOTES.md)."""
  suite = _suite()
  # No time limit: dm_control would silently reset mid-episode after 1000 steps.
  env = suite.load(spec.domain, spec.task, task_kwargs={"time_limit": float("inf")})
  model = env.physics.model
  if not -1 <= spec.camera < model.ncam:
    raise ValueError(
      f"--camera={spec.camera} out of range for {spec.domain}-{spec.task}: "
      f"it has cameras 0..{model.ncam - 1} (-1 = free camera)"
    )
  # Default visuals render 64x64 at 25-45 fps on llvmpipe; these give 170-330 fps and
  # frames that look the same. Must happen before the first render creates the context.
  model.vis.quality.offsamples = 0
  model.vis.global_.offwidth = spec.size
  model.vis.global_.offheight = spec.size
  model.light_castshadow[:] = 0
  model.mat_reflectance[:] = 0
  if not spec.render_target:
    hide_target(model)
  return env


def hide_target(model) -> None:
  """Moves geoms named `target` to group 3, which the default scene option does not draw; physics and rewards are
  unchanged (reacher's target still defines the reward)."""
  ids = [g for g in range(model.ngeom) if model.id2name(g, "geom") == "target"]
  if not ids:
    raise ValueError("--render_target=0: this task has no geom named 'target' to hide")
  model.geom_group[ids] = 3


def meta(env, spec: Spec) -> dict:
  """Sidecar metadata for worldmodel.json."""
  model = env.physics.model
  nq, nv = model.nq, model.nv
  # Unlimited hinge joints (reacher's shoulder, ...) wind past ±π: the same picture has many qpos values, so
  # probes regress (sin, cos) of these dimensions instead (worldmodel.probes.state_targets).
  periodic = [
    int(model.jnt_qposadr[j]) for j in range(model.njnt) if model.jnt_type[j] == 3 and not model.jnt_limited[j]
  ]
  return {
    "periodic_state": periodic,
    "domain": spec.domain,
    "task": spec.task,
    "camera": spec.camera,
    "action_repeat": spec.action_repeat,
    "render_target": spec.render_target,
    "action_dim": int(env.action_spec().shape[0]),
    "control_timestep": float(env.control_timestep()) * spec.action_repeat,
    "gl_backend": os.environ.get("MUJOCO_GL"),
    "state_groups": {"qpos": list(range(nq)), "qvel": list(range(nq, nq + nv))},
  }


def sample_actions(rng: np.random.Generator, action_spec, frames: int) -> np.ndarray:
  """AR(1) noise scaled into the action bounds and clipped: float32 [T,A]."""
  lo, hi = action_spec.minimum.astype(np.float64), action_spec.maximum.astype(np.float64)
  finite = np.isfinite(lo) & np.isfinite(hi)
  mid_A = np.where(finite, (lo + hi) / 2, 0.0)
  half_A = np.where(finite, (hi - lo) / 2, 1.0)
  a = ACTION_SMOOTHING
  z_A = rng.normal(size=lo.shape) * ACTION_NOISE
  eps_TA = rng.normal(size=(frames,) + lo.shape) * ACTION_NOISE * np.sqrt(1 - a * a)
  z_TA = np.empty_like(eps_TA)
  for t in range(frames):
    z_A = a * z_A + eps_TA[t]
    z_TA[t] = z_A
  return np.clip(mid_A + half_A * z_TA, lo, hi).astype(np.float32)


def rollout(env, spec: Spec, seed: int, action_TA: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """One episode from `seed` (see the alignment convention in the module docstring); `action_TA` [frames, A]
  replaces the dataset policy's actions (each still held for `spec.action_repeat` control steps)."""
  env_ss, policy_ss = np.random.SeedSequence(seed).spawn(2)
  env.task.random.seed(env_ss.generate_state(4))  # reseeds the task's RandomState in place
  env.reset()
  physics, T = env.physics, spec.frames
  if action_TA is None:
    action_TA = sample_actions(np.random.default_rng(policy_ss), env.action_spec(), T)
  video_THWC = np.empty((T, spec.size, spec.size, 3), np.uint8)
  state_TS = np.empty((T, physics.model.nq + physics.model.nv), np.float32)
  reward_T = np.empty(T, np.float32)
  for t in range(T):
    video_THWC[t] = physics.render(spec.size, spec.size, camera_id=spec.camera)
    state_TS[t] = np.concatenate([physics.data.qpos, physics.data.qvel])
    reward_T[t] = env.task.get_reward(physics)
    if t == T - 1:
      break  # action[T-1] would only lead to a frame outside the episode
    for _ in range(spec.action_repeat):
      if env.step(action_TA[t]).last():
        raise RuntimeError(
          f"{spec.domain}-{spec.task} terminated at frame {t + 1}; use fewer --frames or a smaller --action_repeat"
        )
  return {"video": video_THWC, "action": action_TA, "state": state_TS, "reward": reward_T}


# Per-process state of pool workers: the spec from the initializer, the env built lazily.
_WORKER: dict = {}


def _init_worker(spec: Spec) -> None:
  _WORKER.update(spec=spec, env=None)


def _worker_episode(seed: int) -> dict[str, np.ndarray]:
  if _WORKER["env"] is None:
    _WORKER["env"] = load_env(_WORKER["spec"])
  return rollout(_WORKER["env"], _WORKER["spec"], seed)


class Generator:
  """Episodes from seeds, serially in this process (workers <= 1) or on a spawn pool."""

  def __init__(self, spec: Spec, workers: int):
    self.spec, self.workers = spec, workers
    self.env = load_env(spec)  # validates the camera; renders only when serial
    self.meta = meta(self.env, spec)
    self._pool = None

  def make_episode(self, seed: int) -> dict[str, np.ndarray]:
    return rollout(self.env, self.spec, seed)

  def make_episodes(self, seeds: Iterable[int]) -> Iterator[dict[str, np.ndarray]]:
    """Yields episodes in the order of `seeds`; the pool persists across calls (splits)."""
    if self.workers <= 1:
      yield from map(self.make_episode, seeds)
      return
    if self._pool is None:
      # spawn, not fork: a forked GL/MuJoCo state is unsafe; MUJOCO_GL is inherited.
      ctx = multiprocessing.get_context("spawn")
      self._pool = ctx.Pool(self.workers, _init_worker, (self.spec,))
      atexit.register(self.close)
    yield from self._pool.imap(_worker_episode, seeds, chunksize=1)

  def close(self) -> None:
    if self._pool is not None:  # workers are idle once all episodes were consumed
      self._pool.terminate()
      self._pool.join()
      self._pool = None
