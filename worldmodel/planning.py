"""Model-agnostic sampling planners (CEM, MPPI) in JAX, and closed-loop MPC / random baselines.

A planner only sees `cost_fn(actions_NHA) -> cost_N`, so the same code plans through a world model
or, as an upper bound, through the true simulator (`GoalEnv.oracle_cost_fn`). The planners are pure
functions with a `fori_loop` inside; jit the whole plan step once, closing over per-step inputs:

  @jax.jit
  def plan(obs_CHWC, goal_HWC, key, warm_HA, past_KA):
    cost_fn = lambda a_NHA: model_cost(params, obs_CHWC, past_KA, goal_HWC, a_NHA)
    return cem(cost_fn, key, horizon=H, low_A=lo, high_A=hi, init_mean_HA=warm_HA)[0]
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

CostFn = Callable[[jax.Array], jax.Array]


def _init(horizon, low_A, high_A, init_mean_HA, init_std):
  low_A, high_A = jnp.asarray(low_A, jnp.float32), jnp.asarray(high_A, jnp.float32)
  half_A = (high_A - low_A) / 2
  if init_mean_HA is None:
    mean_HA = jnp.broadcast_to((low_A + high_A) / 2, (horizon,) + low_A.shape)
  else:
    mean_HA = jnp.clip(jnp.asarray(init_mean_HA, jnp.float32), low_A, high_A)
  std = half_A if init_std is None else jnp.asarray(init_std, jnp.float32)
  std_HA = jnp.broadcast_to(std, mean_HA.shape)
  return low_A, high_A, mean_HA, std_HA


def _sample(key, mean_HA, std_HA, low_A, high_A, samples, keep_mean=True):
  eps_NHA = jax.random.normal(key, (samples,) + mean_HA.shape)
  actions_NHA = jnp.clip(mean_HA + std_HA * eps_NHA, low_A, high_A)
  # With the incumbent mean as a candidate, the best cost never gets worse than it.
  return actions_NHA.at[0].set(mean_HA) if keep_mean else actions_NHA


def _costs(cost_fn, actions_NHA):
  cost_N = jnp.asarray(cost_fn(actions_NHA), jnp.float32)
  return jnp.where(jnp.isnan(cost_N), jnp.inf, cost_N)  # a diverging rollout must not win


def cem(
  cost_fn: CostFn,
  key,
  *,
  horizon: int,
  low_A,
  high_A,
  samples: int = 64,
  elites: int = 8,
  iterations: int = 5,
  momentum: float = 0.1,
  init_mean_HA=None,
  init_std=None,
  min_std: float = 0.05,
) -> tuple[jax.Array, dict]:
  """Cross-entropy method over action sequences [H,A] clipped to [low_A, high_A].

  Each iteration samples `samples` Gaussian sequences (sample 0 = current mean), refits mean/std
  to the `elites` cheapest, blended with the old values by `momentum`. `init_std` (scalar or [A])
  defaults to the half action range; `min_std` keeps the search from collapsing early.
  Returns (final mean [H,A], info: best_HA / best_cost over all samples, elite_cost_I per iteration).
  """
  low_A, high_A, mean_HA, std_HA = _init(horizon, low_A, high_A, init_mean_HA, init_std)

  def body(i, carry):
    key, mean_HA, std_HA, best_HA, best_cost, elite_cost_I = carry
    key, sub = jax.random.split(key)
    actions_NHA = _sample(sub, mean_HA, std_HA, low_A, high_A, samples)
    cost_N = _costs(cost_fn, actions_NHA)
    neg_cost_E, idx_E = jax.lax.top_k(-cost_N, elites)
    elite_EHA = actions_NHA[idx_E]
    mean_HA = momentum * mean_HA + (1 - momentum) * elite_EHA.mean(0)
    std_HA = jnp.maximum(momentum * std_HA + (1 - momentum) * elite_EHA.std(0), min_std)
    better = -neg_cost_E[0] < best_cost
    best_HA = jnp.where(better, elite_EHA[0], best_HA)
    best_cost = jnp.where(better, -neg_cost_E[0], best_cost)
    elite_cost_I = elite_cost_I.at[i].set(-neg_cost_E.mean())
    return key, mean_HA, std_HA, best_HA, best_cost, elite_cost_I

  carry = (key, mean_HA, std_HA, mean_HA, jnp.float32(jnp.inf), jnp.zeros(iterations, jnp.float32))
  _, mean_HA, _, best_HA, best_cost, elite_cost_I = jax.lax.fori_loop(0, iterations, body, carry)
  return mean_HA, {"best_HA": best_HA, "best_cost": best_cost, "elite_cost_I": elite_cost_I}


def mppi(
  cost_fn: CostFn,
  key,
  *,
  horizon: int,
  low_A,
  high_A,
  samples: int = 64,
  iterations: int = 3,
  temperature: float = 0.1,
  init_mean_HA=None,
  init_std=None,
) -> tuple[jax.Array, dict]:
  """MPPI: mean <- softmax(-cost / T)-weighted average of the samples, std fixed. T is
  `temperature` times the batch's cost range, so it needs no tuning to a model's cost scale."""
  low_A, high_A, mean_HA, std_HA = _init(horizon, low_A, high_A, init_mean_HA, init_std)

  def body(i, carry):
    key, mean_HA, best_HA, best_cost = carry
    key, sub = jax.random.split(key)
    # No mean among the samples: being cheapest, it would take all the weight and stall.
    actions_NHA = _sample(sub, mean_HA, std_HA, low_A, high_A, samples, keep_mean=False)
    cost_N = _costs(cost_fn, actions_NHA)
    finite_N = jnp.isfinite(cost_N)
    lo, hi = cost_N.min(), jnp.where(finite_N, cost_N, -jnp.inf).max()
    w_N = jax.nn.softmax(-(cost_N - lo) / (temperature * (hi - lo) + 1e-8))
    mean_HA = jnp.einsum("n,nha->ha", w_N, actions_NHA)
    j = jnp.argmin(cost_N)
    better = cost_N[j] < best_cost
    return (key, mean_HA, jnp.where(better, actions_NHA[j], best_HA), jnp.where(better, cost_N[j], best_cost))

  carry = (key, mean_HA, mean_HA, jnp.float32(jnp.inf))
  _, mean_HA, best_HA, best_cost = jax.lax.fori_loop(0, iterations, body, carry)
  return mean_HA, {"best_HA": best_HA, "best_cost": best_cost}


def shift_plan(plan_HA, steps: int = 1):
  """Warm start for the next MPC step: drop the executed actions, repeat the last one."""
  plan_HA = jnp.asarray(plan_HA)
  tail_HA = jnp.repeat(plan_HA[-1:], steps, axis=0)
  return jnp.concatenate([plan_HA[steps:], tail_HA], axis=0)


def _episode(env, seed: int, steps: int, act: Callable[..., np.ndarray]) -> dict:
  """Shared loop: reset, then `act(t, frame_HWC, goal_HWC) -> action_A` per step, logging goal metrics."""
  frame_HWC = env.reset(seed)
  goal_HWC = env.goal_frame()
  frames, actions, dist, succ = [frame_HWC], [], [env.distance()], [env.success()]
  for t in range(steps):
    action_A = np.asarray(act(t, frame_HWC, goal_HWC), np.float32)
    frame_HWC = env.step(action_A)
    frames.append(frame_HWC)
    actions.append(action_A)
    dist.append(env.distance())
    succ.append(env.success())
  success_T = np.array(succ)
  return {
    "frames_THWC": np.stack(frames),
    "goal_HWC": goal_HWC,
    "actions_TA": np.stack(actions),
    "distance_T": np.array(dist, np.float32),
    "success_T": success_T,
    "success": bool(success_T.any()),
    "final_success": bool(success_T[-1]),
    "first_success": int(np.argmax(success_T)) if success_T.any() else -1,
    "final_distance": float(dist[-1]),
  }


def run_mpc(env, plan_fn, *, steps: int, horizon: int, replan_every: int = 1, seed: int = 0, context: int = 1) -> dict:
  """Receding-horizon control from `env.reset(seed)` toward `env.goal_frame()`.

  `plan_fn(obs_CHWC, goal_HWC, key, warm_start_HA, past_KA) -> actions_HA` sees the last `context` frames and the
  K = context - 1 actions executed between them (a single frame shows no velocity); before the episode has that
  many, the start frame is repeated with zero actions (the episode starts at rest). The first `replan_every`
  actions are executed, the plan is shifted to warm-start the next call. Returns the episode
  (frames_THWC with the start frame, distance_T, success_T, success = reached at any step, ...)
  and plan_seconds (wall time per plan call, the first one includes compilation).
  """
  if not 1 <= replan_every <= horizon:
    raise ValueError(f"replan_every={replan_every} must be in 1..horizon={horizon}")
  if context < 1:
    raise ValueError(f"context={context} must be >= 1 frame")
  low_A, high_A = np.asarray(env.low_A), np.asarray(env.high_A)
  state = {
    "key": jax.random.key(seed),
    "warm_HA": np.tile((low_A + high_A) / 2, (horizon, 1)),
    "plan_HA": None,
    "frames": [],
    "actions": [],
  }
  plan_seconds = []

  def act(t, frame_HWC, goal_HWC):
    frames, actions = state["frames"], state["actions"]
    if not frames:  # the start frame stands in for the frames before it, at rest
      frames += [frame_HWC] * (context - 1)
      actions += [np.zeros_like(low_A)] * (context - 1)
    frames.append(frame_HWC)
    k = t % replan_every
    if k == 0:
      state["key"], sub = jax.random.split(state["key"])
      past_KA = np.asarray(actions[len(actions) - context + 1 :], np.float32).reshape(context - 1, len(low_A))
      start = time.perf_counter()
      plan_HA = np.asarray(plan_fn(np.stack(frames[-context:]), goal_HWC, sub, state["warm_HA"], past_KA))
      plan_seconds.append(time.perf_counter() - start)
      state["plan_HA"], state["warm_HA"] = plan_HA, np.asarray(shift_plan(plan_HA, replan_every))
    actions.append(np.asarray(state["plan_HA"][k], np.float32))
    del frames[:-context], actions[:-context]  # only the recent history is ever read
    return state["plan_HA"][k]

  out = _episode(env, seed, steps, act)
  out["plan_seconds"] = np.array(plan_seconds)
  return out


def random_policy_episode(env, steps: int, seed: int) -> dict:
  """Baseline: i.i.d. uniform actions within the bounds, same reset/goal as `run_mpc(seed=seed)`."""
  rng = np.random.default_rng(seed)
  return _episode(env, seed, steps, lambda t, f, g: rng.uniform(env.low_A, env.high_A))
