"""Plan functions through a world model (worldmodel.plan's search step): CEM / MPPI over action sequences whose cost is
the distance of the model's latent rollout to the goal's features, or, to find where a failure comes from, the same
search through the true simulator (encoder and cost kept) or the true state (the planner's ceiling)."""

from __future__ import annotations

import functools

import numpy as np


def make_planner(
  model,
  env,
  *,
  horizon: int,
  planner: str,
  samples: int,
  iterations: int,
  elites: int,
  dynamics: str = "model",
  cost: str = "l1",
  cost_steps: str = "last",
):
  """plan_fn(obs_CHWC, goal_HWC, key, warm_HA, past_KA) -> actions_HA (see `planning.run_mpc`); one jitted function
  for the whole search, except with dynamics='simulator', whose search runs on the host (rendering cannot run inside
  a jax callback's thread). The simulator and the oracle read the true state, not the observed frames.
  cost_steps: compare the last imagined frame with the goal, or sum the distance over all of them (EB-JEPA)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from worldmodel import planning

  graphdef, weights = nnx.split(model)
  low_A, high_A = env.low_A, env.high_A
  if cost not in ("l1", "l2"):
    raise ValueError(f"cost={cost!r}: choose l1 or l2")
  if cost_steps == "sum" and dynamics == "simulator":
    raise ValueError("--cost_steps=sum needs --dynamics=model or oracle (the simulator renders only the last frame)")

  def distance(z_NPD, goal_PD):  # per candidate (and imagined frame), over tokens and features
    err = z_NPD - goal_PD
    return jnp.mean(jnp.abs(err) if cost == "l1" else err * err, axis=(-2, -1))

  def search(cost_fn, key, warm_HA):
    common = dict(horizon=horizon, low_A=low_A, high_A=high_A, samples=samples, iterations=iterations)
    if planner == "cem":
      return planning.cem(cost_fn, key, elites=elites, init_mean_HA=warm_HA, **common)[0]
    return planning.mppi(cost_fn, key, init_mean_HA=warm_HA, **common)[0]

  if dynamics == "simulator":
    encode = jax.jit(lambda w, frames_1FHWC: nnx.merge(graphdef, w).encode(frames_1FHWC)[0])  # [F, P, D]

    def plan_on_host(obs_CHWC, goal_HWC, key, warm_HA, past_KA):
      goal_PD = encode(weights, jnp.asarray(goal_HWC)[None, None])[0]

      def cost_fn(actions_NHA):
        with jax.disable_jit(False):  # the encoder stays compiled inside the eager search
          z_NPD = encode(weights, jnp.asarray(env.rollout_last_frames(np.asarray(actions_NHA)))[None])
          return distance(z_NPD, goal_PD)

      with jax.disable_jit():  # the search's loop runs eagerly, so cost_fn gets concrete actions
        return search(cost_fn, key, warm_HA)

    return plan_on_host

  @jax.jit
  def plan(weights, obs_CHWC, goal_HWC, key, warm_HA, past_KA):
    if dynamics == "oracle":
      return search(env.oracle_cost_fn(), key, warm_HA)
    m = nnx.merge(graphdef, weights)
    C = obs_CHWC.shape[0]
    z = m.encode(jnp.concatenate([obs_CHWC, goal_HWC[None]])[None])[0]  # [C + 1, P, D]
    z_1CPD, goal_PD = z[None, :C], z[C]

    def cost_fn(actions_NHA):
      n = actions_NHA.shape[0]
      a_NKA = jnp.concatenate([jnp.broadcast_to(past_KA, (n,) + past_KA.shape), actions_NHA], axis=1)
      preds_NHPD = m.rollout(jnp.broadcast_to(z_1CPD, (n,) + z_1CPD.shape[1:]), a_NKA, horizon)
      return distance(preds_NHPD[:, -1], goal_PD) if cost_steps == "last" else distance(preds_NHPD, goal_PD).sum(1)

    return search(cost_fn, key, warm_HA)

  return functools.partial(plan, weights)
