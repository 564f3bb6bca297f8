"""Two-Room: a point agent in a square arena split by a wall with one door (PLDM / EB-JEPA's "two rooms"), numpy only.

World (units of a 64-pixel frame; x = column, y = row, pixel centres at integers):
  * border lines at 4 and 59: the agent moves in [5, 58]^2;
  * a vertical wall 3 units thick centred on column `wall_x` in [20, 44), with a door of half-height 4 centred on
    row `door_y` in [10, 54); both drawn per episode (EB-JEPA: random layouts, `fix_wall: false`);
  * action = a 2-D displacement per env step, its length clipped to MAX_STEP (2.45); a move that would cross the
    wall outside the door stops at the wall's face (sliding along it), one that would leave the arena stops at the border.
Frames (uint8 RGB): red = the agent, a Gaussian blob of std 1.3 units; green = walls and border; blue = 0 (EB-JEPA's
two channels, dot and walls, in an RGB frame). Rendering at another --size rescales the world, not the dynamics.

Data policy (EB-JEPA): a random walk whose direction turns by von Mises noise (concentration 1 / 0.2) each step and
whose length is a truncated normal (mean 1, std 0.4, in [0.2, 1.8]). With action_repeat R, one recorded step holds
one action for R env steps (the frame skip; LeWM: 5).

ALIGNMENT CONVENTION (as the other sources): video[t] and state[t] are instant t; action[t] leads from frame t to
t+1; the last action is sampled but never applied. state = (x, y, wall_x, door_y), float32; see STATE_GROUPS.
An episode is a pure function of its seed.
"""

from __future__ import annotations

import numpy as np

WORLD = 64.0  # world units across the frame
BORDER = 4  # border lines at BORDER and WORLD - 1 - BORDER
LOW, HIGH = BORDER + 1.0, WORLD - 2.0 - BORDER  # the agent's reachable box
WALL_HALF = 1.5  # the wall covers wall_x +- 1.5 (3 pixel columns)
WALL_RANGE = (20, 44)  # wall_x drawn uniformly from these integers (EB-JEPA wall_padding 20 at 65 px)
DOOR_HALF = 4.0  # the door is open where |y - door_y| <= 4 (EB-JEPA door_space)
DOOR_RANGE = (10, 54)  # door_y (EB-JEPA door_padding 10)
MAX_STEP = 2.45  # longest displacement per env step (EB-JEPA max_step_norm)
DOT_STD = 1.3
ANGLE_NOISE = 0.2  # von Mises concentration = 1 / ANGLE_NOISE
STEP_MEAN, STEP_STD, STEP_LOW, STEP_HIGH = 1.0, 0.4, 0.2, 1.8
START_MARGIN = 2 * DOT_STD  # starts keep this far from walls and border (EB-JEPA padding)
STATE_GROUPS = {"agent_pos": [0, 1], "wall_x": [2], "door_y": [3]}


def sample_layout(rng: np.random.Generator) -> tuple[float, float]:
  """(wall_x, door_y) of one episode."""
  return float(rng.integers(*WALL_RANGE)), float(rng.integers(*DOOR_RANGE))


def sample_position(rng: np.random.Generator, wall_x: float, room: int | None = None) -> np.ndarray:
  """A free position [2], START_MARGIN away from the border and the wall; room 0 = left, 1 = right, None = either."""
  if room is None:
    room = int(rng.integers(2))
  lo_x, hi_x = (LOW + START_MARGIN, wall_x - WALL_HALF - START_MARGIN)
  if room == 1:
    lo_x, hi_x = wall_x + WALL_HALF + START_MARGIN, HIGH - START_MARGIN
  return np.array([rng.uniform(lo_x, hi_x), rng.uniform(LOW + START_MARGIN, HIGH - START_MARGIN)])


def clip_norm(action_NA: np.ndarray) -> np.ndarray:
  """Displacements with length <= MAX_STEP (direction kept)."""
  action_NA = np.asarray(action_NA, np.float64)
  norm_N1 = np.linalg.norm(action_NA, axis=-1, keepdims=True)
  return action_NA * np.minimum(1.0, MAX_STEP / np.maximum(norm_N1, 1e-12))


def move(pos_N2: np.ndarray, action_N2: np.ndarray, wall_x, door_y) -> np.ndarray:
  """One env step for N agents (layouts broadcast): the clipped displacement, stopped by the wall and border."""
  pos_N2 = np.asarray(pos_N2, np.float64)
  wall_x, door_y = np.asarray(wall_x, np.float64), np.asarray(door_y, np.float64)
  target_N2 = pos_N2 + clip_norm(action_N2)
  x0, y0 = pos_N2[..., 0], pos_N2[..., 1]
  dx, dy = target_N2[..., 0] - x0, target_N2[..., 1] - y0
  left, right = wall_x - WALL_HALF, wall_x + WALL_HALF
  # The face the move enters the wall through (the agent is never inside the wall outside the door).
  face = np.where(dx > 0, left, right)
  outside = np.where(dx > 0, x0 <= left, x0 >= right)
  safe_dx = np.where(dx == 0, 1.0, dx)
  t = (face - x0) / safe_dx
  enters = outside & (dx != 0) & (t >= 0) & (t <= 1)
  y_hit = y0 + t * dy
  in_door = np.abs(y_hit - door_y) <= DOOR_HALF
  blocked = enters & ~in_door
  # Blocked: x stops just before the face, y keeps its move (the agent slides along the wall).
  x = np.where(blocked, face - np.sign(dx) * 1e-3, target_N2[..., 0])
  y = target_N2[..., 1]
  # Inside the doorway the door's jambs bound y.
  in_slab = (x > left) & (x < right)
  y = np.where(in_slab, np.clip(y, door_y - DOOR_HALF, door_y + DOOR_HALF), y)
  return np.stack([np.clip(x, LOW, HIGH), np.clip(y, LOW, HIGH)], -1)


def step(pos_N2, action_N2, wall_x, door_y, repeat: int = 1) -> np.ndarray:
  """`repeat` env steps holding the same action (one recorded step with frame skip `repeat`)."""
  for _ in range(repeat):
    pos_N2 = move(pos_N2, action_N2, wall_x, door_y)
  return pos_N2


def wall_mask(size: int, wall_x: float, door_y: float) -> np.ndarray:
  """bool [size, size]: walls and border at pixel centres (world = pixel * WORLD / size)."""
  c = np.arange(size) * (WORLD / size)
  edge = (np.abs(c - BORDER) < 0.5) | (np.abs(c - (WORLD - 1 - BORDER)) < 0.5)
  wall_col = np.abs(c - wall_x) <= WALL_HALF
  door_row = np.abs(c - door_y) <= DOOR_HALF
  return edge[:, None] | edge[None, :] | (wall_col[None, :] & ~door_row[:, None])


def render(pos_N2: np.ndarray, wall_x: float, door_y: float, size: int = 64) -> np.ndarray:
  """uint8 [N, size, size, 3] frames of agents at pos_N2 in one layout."""
  pos_N2 = np.asarray(pos_N2, np.float64).reshape(-1, 2)
  c = np.arange(size) * (WORLD / size)
  gx_NW = np.exp(-((c[None, :] - pos_N2[:, :1]) ** 2) / (2 * DOT_STD**2))
  gy_NH = np.exp(-((c[None, :] - pos_N2[:, 1:]) ** 2) / (2 * DOT_STD**2))
  frames = np.zeros((len(pos_N2), size, size, 3), np.uint8)
  frames[..., 0] = np.clip(gy_NH[:, :, None] * gx_NW[:, None, :] * 255.0, 0, 255).astype(np.uint8)
  frames[..., 1] = wall_mask(size, wall_x, door_y).astype(np.uint8) * 255
  return frames


def sample_actions(rng: np.random.Generator, n: int) -> np.ndarray:
  """float32 [n, 2]: EB-JEPA's random walk (von Mises turning, truncated-normal step length)."""
  angle = rng.uniform(0, 2 * np.pi) + np.concatenate([[0.0], np.cumsum(rng.vonmises(0.0, 1 / ANGLE_NOISE, n - 1))])
  length = np.empty(n)
  for i in range(n):  # rejection sampling of the truncated normal (accepts ~95 %)
    while True:
      v = rng.normal(STEP_MEAN, STEP_STD)
      if STEP_LOW <= v <= STEP_HIGH:
        length[i] = v
        break
  return (np.stack([np.cos(angle), np.sin(angle)], -1) * length[:, None]).astype(np.float32)


def trajectory(rng: np.random.Generator, frames: int, action_repeat: int = 1):
  """(layout, positions [frames, 2], actions [frames, 2]) of one random-policy trajectory."""
  wall_x, door_y = sample_layout(rng)
  pos = sample_position(rng, wall_x)
  action_TA = sample_actions(rng, frames)
  pos_T2 = np.empty((frames, 2))
  for t in range(frames):
    pos_T2[t] = pos
    pos = step(pos, action_TA[t], wall_x, door_y, action_repeat)
  return (wall_x, door_y), pos_T2, action_TA


def generate_episode(seed: int, frames: int, size: int = 64, action_repeat: int = 1) -> dict[str, np.ndarray]:
  """One episode record: video uint8 [T, size, size, 3], action float32 [T, 2], state float32 [T, 4]."""
  (wall_x, door_y), pos_T2, action_TA = trajectory(np.random.default_rng(seed), frames, action_repeat)
  state_TS = np.concatenate([pos_T2, np.tile([wall_x, door_y], (frames, 1))], -1).astype(np.float32)
  return {"video": render(pos_T2, wall_x, door_y, size), "action": action_TA, "state": state_TS}
