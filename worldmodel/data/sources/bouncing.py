"""Procedural action-conditioned 2-D physics world ("bouncing"), numpy only.

World: an agent (a white disc, heavier and slightly larger) and `num_balls`
coloured balls move in the unit square [0,1]^2 on a dark background. Balls
bounce elastically off the walls and off each other and the agent. The agent
is pushed by a continuous 2-D action (an acceleration, clipped to [-1,1]^2) and
feels mild friction; balls feel none. Each frame is `SUBSTEPS` physics steps.

Actions come from an exploratory policy: AR(1)-smoothed Gaussian noise
(a discretised Ornstein-Uhlenbeck process), seeded, then clipped.

ALIGNMENT CONVENTION
  * `state[t]` and `video[t]` describe the same instant t.
  * `action[t]` is applied after observing frame t and leads to frame t+1.
    (The last action, action[T-1], is sampled but has no visible effect.)
  * `reward[t]` is a function of state[t] only:
    reward[t] = -|agent_pos[t] - GOAL|_2, with GOAL = (0.75, 0.25).

State layout (float32, S = 4 + 4 * num_balls), see `state_groups`:
  agent_pos (x, y), agent_vel (vx, vy), ball_pos (x0, y0, x1, y1, ...),
  ball_vel (vx0, vy0, ...). Velocities are in units per frame. Image x grows
  to the right (columns), y grows downward (rows).

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

SUBSTEPS = 4
AGENT_RADIUS = 0.11
BALL_RADIUS = 0.085
AGENT_MASS = 3.0  # heavier than balls so pushing them looks plausible
AGENT_ACCEL = 0.012  # velocity change per frame for |action| = 1
AGENT_FRICTION = 0.85  # velocity kept per frame (mild drag; top speed ~0.07)
BALL_SPEED = (0.015, 0.035)  # initial ball speed range, units per frame
ACTION_SMOOTHING = 0.8  # AR(1) coefficient of the exploratory policy
ACTION_NOISE = 0.6  # stationary std of the AR(1) policy before clipping
GOAL = np.array([0.75, 0.25])
EDGE_PX = 1.0  # soft-edge width in pixels (analytic anti-aliasing)

BACKGROUND_RGB = np.array([18, 18, 28], np.float32)
AGENT_RGB = np.array([240, 240, 235], np.float32)
BALL_PALETTE_RGB = np.array(
  [[230, 70, 60], [70, 190, 90], [70, 120, 235], [235, 200, 60], [200, 90, 220], [60, 210, 210]], np.float32
)


def state_groups(num_balls: int = 3) -> dict[str, list[int]]:
  """Names -> indices into the state vector (JSON-serialisable)."""
  n2 = 2 * num_balls
  return {
    "agent_pos": [0, 1],
    "agent_vel": [2, 3],
    "ball_pos": list(range(4, 4 + n2)),
    "ball_vel": list(range(4 + n2, 4 + 2 * n2)),
  }


STATE_GROUPS = state_groups(3)


def state_dim(num_balls: int = 3) -> int:
  return 4 + 4 * num_balls


def sample_actions(rng: np.random.Generator, frames: int) -> np.ndarray:
  """AR(1) noise with stationary std ACTION_NOISE, clipped: float32 [T,2]."""
  a = ACTION_SMOOTHING
  eps_T2 = rng.normal(size=(frames, 2)) * ACTION_NOISE * np.sqrt(1 - a * a)
  act_T2 = np.empty((frames, 2))
  prev = rng.normal(size=2) * ACTION_NOISE
  for t in range(frames):
    prev = a * prev + eps_T2[t]
    act_T2[t] = prev
  return np.clip(act_T2, -1.0, 1.0).astype(np.float32)


def _initial_bodies(rng: np.random.Generator, num_balls: int):
  """Non-overlapping start positions (rejection sampling) and velocities."""
  radius_N = np.array([AGENT_RADIUS] + [BALL_RADIUS] * num_balls)
  pos_N2 = np.zeros((len(radius_N), 2))
  for i, r in enumerate(radius_N):
    for _ in range(1000):
      p = rng.uniform(r, 1 - r, size=2)
      gap = np.linalg.norm(pos_N2[:i] - p, axis=1) - radius_N[:i] - r
      if np.all(gap > 0.01):
        break
    pos_N2[i] = p  # after 1000 tries accept an overlap; physics separates it
  speed = rng.uniform(*BALL_SPEED, size=num_balls)
  angle = rng.uniform(0, 2 * np.pi, size=num_balls)
  vel_N2 = np.zeros_like(pos_N2)
  vel_N2[1:] = np.stack([np.cos(angle), np.sin(angle)], -1) * speed[:, None]
  return pos_N2, vel_N2, radius_N


def _collide_pairs(pos_N2, vel_N2, radius_N, mass_N) -> None:
  """Elastic collisions between overlapping, approaching bodies (in place)."""
  delta_NN2 = pos_N2[None, :] - pos_N2[:, None]  # j - i
  dist_NN = np.linalg.norm(delta_NN2, axis=-1)
  overlap_NN = radius_N[:, None] + radius_N[None, :] - dist_NN
  ii, jj = np.nonzero(np.triu(overlap_NN > 0, k=1))
  for i, j in zip(ii, jj):  # rare: loop only over actual contacts
    d = pos_N2[j] - pos_N2[i]
    dist = max(np.hypot(*d), 1e-9)
    n = d / dist
    mi, mj = mass_N[i], mass_N[j]
    # Push apart along the normal, split by inverse mass.
    sep = radius_N[i] + radius_N[j] - dist
    pos_N2[i] -= n * sep * mj / (mi + mj)
    pos_N2[j] += n * sep * mi / (mi + mj)
    u = np.dot(vel_N2[i] - vel_N2[j], n)
    if u > 0:  # approaching
      vel_N2[i] -= 2 * mj / (mi + mj) * u * n
      vel_N2[j] += 2 * mi / (mi + mj) * u * n


def _bounce_walls(pos_N2, vel_N2, radius_N) -> None:
  lo, hi = radius_N[:, None], 1 - radius_N[:, None]
  below, above = pos_N2 < lo, pos_N2 > hi
  pos_N2[:] = np.where(below, 2 * lo - pos_N2, np.where(above, 2 * hi - pos_N2, pos_N2))
  vel_N2[:] = np.where(below | above, -vel_N2, vel_N2)


def simulate(pos_N2, vel_N2, radius_N, action_T2):
  """Roll the physics; returns pos, vel [T,N,2] with row t = instant t."""
  mass_N = np.ones(len(radius_N))
  mass_N[0] = AGENT_MASS
  frames = len(action_T2)
  pos_TN2 = np.empty((frames, len(radius_N), 2))
  vel_TN2 = np.empty_like(pos_TN2)
  h = 1.0 / SUBSTEPS
  keep = AGENT_FRICTION**h
  for t in range(frames):
    pos_TN2[t], vel_TN2[t] = pos_N2, vel_N2  # observe, then act
    for _ in range(SUBSTEPS):
      vel_N2[0] = vel_N2[0] * keep + AGENT_ACCEL * h * action_T2[t]
      pos_N2 += vel_N2 * h
      _bounce_walls(pos_N2, vel_N2, radius_N)
      _collide_pairs(pos_N2, vel_N2, radius_N, mass_N)
  return pos_TN2, vel_TN2


def render(pos_TN2: np.ndarray, radius_N: np.ndarray, size: int) -> np.ndarray:
  """Anti-aliased discs via analytic soft edges: uint8 [T,size,size,3].

  Coverage = clip(radius - distance + 0.5px, 0, 1) in pixel units, which
  approximates the exact pixel-area coverage of a disc edge. Balls are
  painted in index order, the agent (index 0) last so it stays on top.
  """
  centers = (np.arange(size, dtype=np.float32) + 0.5) / size
  p_TN2 = pos_TN2.astype(np.float32)
  dx_TNW = centers[None, None, :] - p_TN2[..., 0:1]
  dy_TNH = centers[None, None, :] - p_TN2[..., 1:2]
  # Coverage in pixel units: (r - dist) * size / EDGE_PX + 0.5, all float32.
  scale = np.float32(size / EDGE_PX)
  num = pos_TN2.shape[1]
  colors_N3 = np.concatenate([AGENT_RGB[None], BALL_PALETTE_RGB[np.arange(num - 1) % len(BALL_PALETTE_RGB)]])
  img_THW3 = np.broadcast_to(BACKGROUND_RGB, (len(pos_TN2), size, size, 3)).copy()
  for i in list(range(1, num)) + [0]:
    dist_THW = np.sqrt(dy_TNH[:, i, :, None] ** 2 + dx_TNW[:, i, None, :] ** 2)
    cover_THW = np.clip((np.float32(radius_N[i]) - dist_THW) * scale + 0.5, 0, 1)
    hit = np.flatnonzero(cover_THW)  # blend only covered pixels (~5% of the frame)
    c_P1 = cover_THW.reshape(-1)[hit, None]
    flat_P3 = img_THW3.reshape(-1, 3)
    flat_P3[hit] += c_P1 * (colors_N3[i] - flat_P3[hit])
  return (img_THW3 + 0.5).astype(np.uint8)  # values stay in [0, 255]: round half up


def generate_episode(
  seed: int | np.random.SeedSequence, frames: int, size: int, num_balls: int = 3
) -> dict[str, np.ndarray]:
  """One episode: video uint8 [T,H,W,3], action f32 [T,2], state f32 [T,S], reward f32 [T]."""
  rng = np.random.default_rng(seed)
  pos_N2, vel_N2, radius_N = _initial_bodies(rng, num_balls)
  action_T2 = sample_actions(rng, frames)
  pos_TN2, vel_TN2 = simulate(pos_N2, vel_N2, radius_N, action_T2)
  state_TS = np.concatenate(
    [pos_TN2[:, 0], vel_TN2[:, 0], pos_TN2[:, 1:].reshape(frames, -1), vel_TN2[:, 1:].reshape(frames, -1)], axis=1
  )
  reward_T = -np.linalg.norm(pos_TN2[:, 0] - GOAL, axis=-1)
  return {
    "video": render(pos_TN2, radius_N, size),
    "action": action_T2,
    "state": state_TS.astype(np.float32),
    "reward": reward_T.astype(np.float32),
  }


def write_dataset(out_dir: str, episodes: int, frames: int, size: int, eval_episodes: int = 2) -> str:
  """A small bouncing dataset (train / val / test) written directly, for benchmarks and tests."""
  from worldmodel.data import records

  def make(lo: int, hi: int):
    for i in range(lo, hi):
      yield {**generate_episode(i, frames, size), "episode_id": np.int64(i)}

  train = episodes - 2 * eval_episodes
  records.write_dataset(
    out_dir,
    {"train": make(0, train), "val": make(train, train + eval_episodes), "test": make(train + eval_episodes, episodes)},
    {"source": "bouncing", "frames": frames, "size": size, "seed": 0, "state_groups": STATE_GROUPS},
  )
  return out_dir
