"""Plan with an action-conditioned world model: MPC toward a goal image in the real MuJoCo environment.

  python -m worldmodel.plan --workdir=AC_WORKDIR --env=dmc:reacher-easy --episodes=10

Each step: encode the current frame and the goal image with the frozen encoder, search action sequences with CEM
(or MPPI) for the one whose latent rollout ends closest (--cost: L1 or squared) to the goal's features, execute its first action,
replan. The same episodes run with random actions as a baseline. Writes WORKDIR/plan/<step>/metrics.json (success
rate, final fingertip distance, planning time) and a video of the first episode (observation | goal).
Episode seeds start at 1,000,000 so they never coincide with generated training episodes.

--dynamics tells where a failure comes from. `model` (default) plans with the AC predictor. `simulator` keeps the
encoder and the cost but predicts with the true MuJoCo physics (each candidate's end pose rendered and encoded):
if it also fails, the representation / cost is what limits planning, not the predictor. `oracle` uses the true
physics and the true fingertip distance: the planner's own ceiling at this horizon and sample budget.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports: restart under tcmalloc (worldmodel/allocator.py)
  from worldmodel import allocator

  allocator.use_tcmalloc()

import functools
import json
import os
import time

import numpy as np
from absl import app, flags

from worldmodel import config as config_lib
from worldmodel import storage

if __name__ == "__main__":  # flags only for the CLI: importing several CLI modules must not redefine them
  _WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of an action-conditioned run (experiments/ac.py).")
  _ENV = flags.DEFINE_string("env", "dmc:reacher-easy", "Environment: dmc:DOMAIN-TASK with a goal definition.")
  _EPISODES = flags.DEFINE_integer("episodes", 10, "Episodes to plan (and to run with random actions).")
  _STEPS = flags.DEFINE_integer("env_steps", 60, "Environment steps per episode (--step picks the checkpoint).")
  _OLD_STEPS = flags.DEFINE_integer("steps", None, "Renamed --env_steps (kept to say so).")
  _HORIZON = flags.DEFINE_integer("horizon", 4, "Planning horizon (predicted frames).")
  _CONTEXT = flags.DEFINE_integer(
    "context",
    None,
    "Observed frames each rollout starts from (the last ones, with the "
    "actions between them); default: the AC model's model.context_frames.",
  )
  _PLANNER = flags.DEFINE_enum("planner", "cem", ["cem", "mppi"], "Sampling planner.")
  _SAMPLES = flags.DEFINE_integer("samples", 64, "Candidate action sequences per planner iteration.")
  _ITERS = flags.DEFINE_integer("iterations", 4, "Planner iterations per step.")
  _ELITES = flags.DEFINE_integer("elites", 8, "CEM elites.")
  _DYNAMICS = flags.DEFINE_enum(
    "dynamics",
    "model",
    ["model", "simulator", "oracle"],
    "What predicts each candidate's outcome: the AC model (latent rollout, L1 to the goal's "
    "features); the true simulator with the same encoder and cost (isolates the predictor's "
    "error); or the simulator with the true distance (the planner's ceiling).",
  )
  _COST = flags.DEFINE_enum(
    "cost",
    None,
    ["l1", "l2"],
    "Distance of a rollout's last frame to the goal's features: "
    "l1 (V-JEPA 2-AC) or l2 (mean squared); default: the one the AC model was trained with "
    "(model.loss_exp 1 or 2).",
  )
  _SEED = flags.DEFINE_integer("seed", 0, "First episode seed (offset by 1,000,000).")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the newest.")
  _OUT = flags.DEFINE_string("out", None, "Output directory; default: WORKDIR/plan/<step>.")
  flags.mark_flag_as_required("workdir")

SEED_OFFSET = 1_000_000


def load_world_model(workdir: str, step: int | None = None):
  """(step, config, model) of an AC workdir; a clear error for any other kind of run."""
  from worldmodel import checkpoint as ckpt_lib
  from worldmodel import objectives
  from worldmodel import runtime as runtime_lib

  config = config_lib.load_workdir_config(workdir)
  if not objectives.get(config.objective).plannable:
    raise config_lib.ConfigError(
      f"{workdir} holds a {config.objective!r} model; planning needs an action-conditioned model. Train one on "
      f"its features: python -m worldmodel.train --config=experiments/ac.py:dmc --config.model.encoder_source="
      f"{'THIS_WORKDIR' if config.objective == 'jepa' else 'JEPA_WORKDIR'} --workdir=AC_WORKDIR"
    )
  rt = runtime_lib.build(config)
  ckpt = ckpt_lib.Checkpointer(storage.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
  step, state, _ = ckpt.restore(rt.abstract_state, step)
  ckpt.close()
  return step, config, rt.model(state)


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
):
  """plan_fn(obs_CHWC, goal_HWC, key, warm_HA, past_KA) -> actions_HA (see `planning.run_mpc`); one jitted function
  for the whole search, except with dynamics='simulator', whose search runs on the host (rendering cannot run inside
  a jax callback's thread). The simulator and the oracle read the true state, not the observed frames."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from worldmodel import planning

  graphdef, weights = nnx.split(model)
  low_A, high_A = env.low_A, env.high_A
  if cost not in ("l1", "l2"):
    raise ValueError(f"cost={cost!r}: choose l1 or l2")

  def distance(z_NPD, goal_PD):  # per candidate, over tokens and features
    err = z_NPD - goal_PD
    return jnp.mean(jnp.abs(err) if cost == "l1" else err * err, axis=(1, 2))

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
      preds = m.rollout(jnp.broadcast_to(z_1CPD, (n,) + z_1CPD.shape[1:]), a_NKA, horizon)
      return distance(preds[:, -1], goal_PD)

    return search(cost_fn, key, warm_HA)

  return functools.partial(plan, weights)


def run(
  workdir: str,
  *,
  env_name: str,
  episodes: int,
  steps: int,
  horizon: int,
  planner: str,
  samples: int,
  iterations: int,
  elites: int,
  seed: int = 0,
  step: int | None = None,
  out_dir: str | None = None,
  dynamics: str = "model",
  context: int | None = None,
  cost: str | None = None,
) -> dict:
  from worldmodel import media, planning
  from worldmodel.data import pipeline, records

  if not env_name.startswith("dmc:"):
    raise ValueError(f"--env={env_name!r}: only dmc:DOMAIN-TASK environments can be planned in")
  from worldmodel.data.sources import dmc

  dmc.require_installed()
  from worldmodel.envs import dmc_goal

  step, config, model = load_world_model(workdir, step)
  meta = records.read_meta(pipeline.data_dirs(config.data)[0], pipeline.feature_map(config.data))
  # The env must show what the model was trained on: same frame size, camera and action repeat as the data.
  env = dmc_goal.GoalEnv(
    env_name[4:],
    size=config.model.size,
    camera=int(meta.get("camera", 0)),
    action_repeat=int(meta.get("action_repeat", 1)),
    render_target=bool(meta.get("render_target", True)),
  )
  if len(env.low_A) != config.model.action_dim:
    raise ValueError(
      f"{env_name} has {len(env.low_A)}-D actions but the model in {workdir} was trained on "
      f"{config.model.action_dim}-D actions"
    )
  context = int(config.model.context_frames) if context is None else context
  cost = cost or ("l2" if config.model.loss_exp == 2 else "l1")  # the distance its predictions minimise
  if context < 1 or context + horizon > config.model.max_frames:
    raise ValueError(
      f"--context={context} with --horizon={horizon} must fit the predictor's model.max_frames="
      f"{config.model.max_frames} (and context >= 1)"
    )
  plan_fn = make_planner(
    model,
    env,
    horizon=horizon,
    planner=planner,
    samples=samples,
    iterations=iterations,
    elites=elites,
    dynamics=dynamics,
    cost=cost,
  )
  planned, random = [], []
  t0 = time.time()
  for i in range(episodes):
    s = SEED_OFFSET + seed + i
    planned.append(planning.run_mpc(env, plan_fn, steps=steps, horizon=horizon, seed=s, context=context))
    random.append(planning.random_policy_episode(env, steps, seed=s))
    p, r = planned[-1], random[-1]
    print(
      f"episode {i + 1}/{episodes} (seed {s}): planned success {p['success']} final distance "
      f"{p['final_distance']:.3f} | random success {r['success']} final distance {r['final_distance']:.3f} "
      f"| {np.median(p['plan_seconds'][1:] if len(p['plan_seconds']) > 1 else p['plan_seconds']):.3f} s/plan",
      flush=True,
    )

  out_dir = out_dir or storage.join(workdir, "plan", str(step) if dynamics == "model" else f"{step}-{dynamics}")
  mirror = storage.Mirror(out_dir)  # written locally, uploaded for a bucket
  plan_s = np.concatenate([p["plan_seconds"][1:] for p in planned if len(p["plan_seconds"]) > 1] or [[np.nan]])
  result = {
    "step": step,
    "env": env_name,
    "episodes": episodes,
    "steps": steps,
    "horizon": horizon,
    "context": context,
    "planner": planner,
    "samples": samples,
    "iterations": iterations,
    "dynamics": dynamics,
    "cost": cost,
    "success_rate": float(np.mean([p["success"] for p in planned])),
    "final_success_rate": float(np.mean([p["final_success"] for p in planned])),
    "final_distance": float(np.mean([p["final_distance"] for p in planned])),
    "random_success_rate": float(np.mean([r["success"] for r in random])),
    "random_final_success_rate": float(np.mean([r["final_success"] for r in random])),
    "random_final_distance": float(np.mean([r["final_distance"] for r in random])),
    "plan_seconds_median": float(np.median(plan_s)),
    "wall_seconds": time.time() - t0,
  }
  first = planned[0]
  goal = np.broadcast_to(first["goal_HWC"], first["frames_THWC"].shape)
  video = np.stack([media.side_by_side([f[None], g[None]])[0] for f, g in zip(first["frames_THWC"], goal)])
  video = media.caption(video, ["observed", "goal"])
  result["media"] = {
    "episode_mp4": media.write_mp4(os.path.join(mirror.local, "episode0_obs_vs_goal.mp4"), video, fps=10, scale=3),
    "distance_png": media.plot_curves(
      os.path.join(mirror.local, "distance.png"),
      {
        "planned": np.mean([p["distance_T"] for p in planned], 0),
        "random": np.mean([r["distance_T"] for r in random], 0),
      },
      "env step",
      "fingertip-target distance",
      f"{env_name}: mean over {episodes} episodes",
    ),
  }
  result = json.loads(json.dumps(result).replace(mirror.local, out_dir))
  with open(os.path.join(mirror.local, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  mirror.close()
  print(json.dumps({k: v for k, v in result.items() if k != "media"}))
  print(f"wrote {storage.join(out_dir, 'metrics.json')}")
  return result


def main(argv):
  if len(argv) > 1:
    config_lib.die(f"unexpected arguments {argv[1:]}")
  if _OLD_STEPS.value is not None:
    config_lib.die(
      f"--steps={_OLD_STEPS.value}: renamed --env_steps (environment steps per episode); --step=N picks the checkpoint"
    )
  from worldmodel.checkpoint import CheckpointError
  from worldmodel.data.records import DatasetError

  try:
    run(
      _WORKDIR.value,
      env_name=_ENV.value,
      episodes=_EPISODES.value,
      steps=_STEPS.value,
      horizon=_HORIZON.value,
      planner=_PLANNER.value,
      samples=_SAMPLES.value,
      iterations=_ITERS.value,
      elites=_ELITES.value,
      seed=_SEED.value,
      step=_STEP.value,
      out_dir=_OUT.value,
      dynamics=_DYNAMICS.value,
      context=_CONTEXT.value,
      cost=_COST.value,
    )
  except (config_lib.ConfigError, CheckpointError, DatasetError, ValueError) as e:
    config_lib.die(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
