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

--protocol=lewm evaluates as LeWM / stable-worldmodel do on reacher (worldmodel/envs/goal_protocol.py): start and
goal image from held-out random-policy trajectories, goal 50 control steps (1 s) after the start, 100 control steps
to reach it, success = every joint within 0.05 rad at any control step; CEM 300 samples x 30 iterations, top 30,
a horizon spanning the goal offset (capped at the frames the predictor was trained to predict; LeWM's model
predicts the whole offset) and replanning after every frame (MPC; LeWM executes the whole plan); 50 episodes.
It reports success with a 95 % Wilson interval for the model, random actions and a true-physics oracle (same CEM
toward the goal's qpos), and seconds per plan:

  python -m worldmodel.plan --workdir=WM_WORKDIR --env=dmc:reacher-easy --protocol=lewm   # -> plan/<step>-lewm/
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports: restart under tcmalloc (worldmodel/allocator.py)
  from worldmodel import allocator

  allocator.use_tcmalloc()

import dataclasses
import functools
import json
import os
import time

import numpy as np
from absl import app, flags

from worldmodel import config as config_lib
from worldmodel import latent_planner, storage
from worldmodel.envs import goal_protocol

if __name__ == "__main__":  # flags only for the CLI: importing several CLI modules must not redefine them
  _WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of an action-conditioned run (experiments/ac.py).")
  _ENV = flags.DEFINE_string(
    "env",
    "dmc:reacher-easy",
    "Environment: dmc:DOMAIN-TASK with a goal definition, or tworoom (LeWM's protocol: "
    "--env_steps=10 --horizon=5 with frame skip 5).",
  )
  _PROTOCOL = flags.DEFINE_enum(
    "protocol",
    "reach",
    ["reach", "lewm"],
    "reach: from a dataset-like reset to a goal image of the arm on the target (IK), success = fingertip in the "
    "target, at any step and at the end. lewm: LeWM's protocol (start and goal image from held-out random-policy "
    "trajectories, goal --goal_offset control steps later, --budget control steps, success = every joint within "
    "--qpos_tolerance rad), reported with 95 % intervals beside random actions and a true-physics oracle.",
  )
  _EPISODES = flags.DEFINE_integer(
    "episodes", None, "Episodes to plan (and to run with random actions); default 10 / 50."
  )
  # In dm_control control steps (0.02 s on reacher); LeWM's env step is 2 of them: its 25 / 50 / 200 steps.
  _GOAL_OFFSET = flags.DEFINE_integer("goal_offset", 50, "lewm: control steps from the start to the goal observation.")
  _BUDGET = flags.DEFINE_integer("budget", 100, "lewm: control steps the agent gets to reach the goal.")
  _TRAJECTORY = flags.DEFINE_integer("trajectory_steps", 400, "lewm: control steps of each held-out trajectory.")
  _TOLERANCE = flags.DEFINE_float("qpos_tolerance", 0.05, "lewm: success when every joint is this close (rad).")
  _TRAJ_POLICY = flags.DEFINE_enum(
    "trajectory_policy",
    "uniform",
    list(goal_protocol.POLICIES),
    "lewm: the held-out trajectories' policy: uniform (LeWM's: an i.i.d. uniform action every 2 control steps) or "
    "data (our dataset generator's AR(1) actions held for a frame; the default before 2026-12-02).",
  )
  _ORACLE = flags.DEFINE_bool("oracle", True, "lewm: also plan with the true physics and the goal's qpos (ceiling).")
  _COST_STEPS = flags.DEFINE_enum(
    "cost_steps",
    None,
    ["last", "sum"],
    "Which imagined frames the cost compares with the goal: the last one (LeWM, DINO-WM) or all, summed (EB-JEPA); "
    "default sum (with MPC's short horizons it beat last on reacher, model and oracle alike: BUILD_NOTES), last "
    "with --dynamics=simulator.",
  )
  _STEPS = flags.DEFINE_integer("env_steps", 60, "Environment steps per episode (--step picks the checkpoint).")
  _OLD_STEPS = flags.DEFINE_integer("steps", None, "Renamed --env_steps (kept to say so).")
  _HORIZON = flags.DEFINE_integer(
    "horizon",
    None,
    "Planning horizon (predicted frames); default 4 (reach), the goal offset in frames (lewm), either capped at the "
    "frames the model was trained to predict (model.frames - context).",
  )
  _CONTEXT = flags.DEFINE_integer(
    "context",
    None,
    "Observed frames each rollout starts from (the last ones, with the "
    "actions between them); default: the AC model's model.context_frames.",
  )
  _PLANNER = flags.DEFINE_enum("planner", "cem", ["cem", "mppi"], "Sampling planner.")
  _SAMPLES = flags.DEFINE_integer(
    "samples", None, "Candidate action sequences per planner iteration; default 64 / 300."
  )
  _ITERS = flags.DEFINE_integer("iterations", None, "Planner iterations per plan; default 4 (reach) / 30 (lewm).")
  _ELITES = flags.DEFINE_integer("elites", None, "CEM elites; default 8 (reach) / 30 (lewm).")
  _REPLAN = flags.DEFINE_integer(
    "replan_every", None, "Frames executed from each plan before replanning; default 1 (MPC)."
  )
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


def load_config(workdir: str):
  """A plannable workdir's config; a clear error for any other kind of run."""
  from worldmodel import objectives

  config = config_lib.load_workdir_config(workdir)
  if not objectives.get(config.objective).plannable:
    raise config_lib.ConfigError(
      f"{workdir} holds a {config.objective!r} model; planning needs an action-conditioned model. Train one on "
      f"its features: python -m worldmodel.train --config=experiments/ac.py:dmc --config.model.encoder_source="
      f"{'THIS_WORKDIR' if config.objective == 'jepa' else 'JEPA_WORKDIR'} --workdir=AC_WORKDIR"
    )
  return config


def load_world_model(workdir: str, step: int | None = None, config=None):
  """(step, config, model) of an AC / wm workdir."""
  from worldmodel import checkpoint as ckpt_lib
  from worldmodel import runtime as runtime_lib

  config = config or load_config(workdir)
  rt = runtime_lib.build(config)
  ckpt = ckpt_lib.Checkpointer(storage.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
  step, state, _ = ckpt.restore(rt.abstract_state, step)
  ckpt.close()
  return step, config, rt.model(state)


def build_env(env_name: str, config, workdir: str):
  """The planning env as the model's data showed it (frame size, camera, action repeat of its data); ValueError
  naming both sides when its actions or frames differ from the model's."""
  from worldmodel.data import pipeline, records
  from worldmodel.envs import registry

  registry.check_name(env_name)
  meta = records.read_meta(pipeline.data_dirs(config.data)[0], pipeline.feature_map(config.data))
  env = registry.make(env_name, config, meta)
  registry.check_matches(env, config, env_name, workdir)
  return env


def run(
  workdir: str,
  *,
  env_name: str = "dmc:reacher-easy",
  protocol: str = "reach",
  lewm=None,
  episodes: int | None = None,
  steps: int = 60,
  horizon: int | None = None,
  planner: str = "cem",
  samples: int | None = None,
  iterations: int | None = None,
  elites: int | None = None,
  replan_every: int | None = None,
  seed: int = 0,
  step: int | None = None,
  out_dir: str | None = None,
  dynamics: str = "model",
  context: int | None = None,
  cost: str | None = None,
  cost_steps: str | None = None,
  oracle: bool = True,
) -> dict:
  """Plans `episodes` episodes under `protocol` (reach, or lewm with `lewm`: a goal_protocol.Protocol), writes
  metrics.json and media to `out_dir` (default WORKDIR/plan/<step>[-lewm][-dynamics]) and returns the metrics."""
  cost_steps = cost_steps or ("last" if dynamics == "simulator" else "sum")
  asked = dict(
    episodes=episodes, horizon=horizon, samples=samples, iterations=iterations, elites=elites, replan_every=replan_every
  )
  goal_protocol.planner_settings(protocol, **asked)  # bad settings fail here, before anything is loaded
  lewm = lewm or goal_protocol.Protocol()
  if protocol == "lewm" and not env_name.startswith("dmc:"):
    raise ValueError(f"--protocol=lewm is defined for dm_control reacher (dmc:...), not --env={env_name}")
  if protocol == "lewm":
    lewm.check()
  elif steps <= 0:
    raise ValueError(f"--env_steps={steps}: must be at least 1")
  config = load_config(workdir)
  env = build_env(env_name, config, workdir)
  context = int(config.model.context_frames) if context is None else context
  if protocol == "lewm":
    lewm.check(env.spec.action_repeat)
  trained = max(config.model.get("frames", 0) - context, 1)  # the predictor learnt frames context+1 .. model.frames
  to_goal = lewm.frames(env.spec.action_repeat)[0] if protocol == "lewm" else None
  s = goal_protocol.planner_settings(protocol, to_goal, trained, **asked)
  cost = cost or ("l2" if config.model.loss_exp == 2 else "l1")  # the distance its predictions minimise
  if context < 1 or context + s["horizon"] > config.model.max_frames:
    raise ValueError(
      f"--context={context} with --horizon={s['horizon']} must fit the predictor's model.max_frames="
      f"{config.model.max_frames} (and context >= 1)"
    )
  step, config, model = load_world_model(workdir, step, config)
  plan_env = goal_protocol.CaseEnv(env, lewm, cost_steps) if protocol == "lewm" else env
  make = functools.partial(
    latent_planner.make_planner,
    model,
    plan_env,
    horizon=s["horizon"],
    planner=planner,
    samples=s["samples"],
    iterations=s["iterations"],
    elites=s["elites"],
    cost=cost,
    cost_steps=cost_steps,
  )
  head = {"step": step, "env": env_name, "protocol": protocol, **s, "context": context, "planner": planner}
  head.update(dynamics=dynamics, cost=cost, cost_steps=cost_steps)
  suffix = ("-lewm" if protocol == "lewm" else "") + ("" if dynamics == "model" else f"-{dynamics}")
  out_dir = out_dir or storage.join(workdir, "plan", f"{step}{suffix}")
  if protocol == "lewm":
    plan_fns = {"planned": make(dynamics=dynamics)}
    if oracle and dynamics != "oracle":
      plan_fns["oracle"] = make(dynamics="oracle")
    return _run_lewm(plan_env, plan_fns, lewm, s, head, seed, context, out_dir)
  return _run_reach(env, make(dynamics=dynamics), s, head, steps, seed, context, out_dir)


def _run_lewm(case_env, plan_fns, lewm, s, head, seed, context, out_dir) -> dict:
  t0 = time.time()
  kw = dict(episodes=s["episodes"], seed=SEED_OFFSET + seed, horizon=s["horizon"], replan_every=s["replan_every"])
  runs = goal_protocol.evaluate(case_env, plan_fns, lewm, context=context, **kw)
  result = {
    **head,
    **dataclasses.asdict(lewm),
    "action_repeat": case_env.spec.action_repeat,
    **goal_protocol.summary(runs),
  }
  result["wall_seconds"] = time.time() - t0
  result["per_episode"] = goal_protocol.per_episode(runs)
  curves = {name: np.mean([e["distance_T"] for e in eps], 0) for name, eps in runs.items()}
  return _write(result, out_dir, runs["planned"][0], curves, "largest joint error (rad)")


def _run_reach(env, plan_fn, s, head, steps, seed, context, out_dir) -> dict:
  from worldmodel import planning

  planned, random = [], []
  t0 = time.time()
  for i in range(s["episodes"]):
    ep_seed = SEED_OFFSET + seed + i
    kw = dict(steps=steps, horizon=s["horizon"], replan_every=s["replan_every"], seed=ep_seed, context=context)
    planned.append(planning.run_mpc(env, plan_fn, **kw))
    random.append(planning.random_policy_episode(env, steps, seed=ep_seed))
    p, r = planned[-1], random[-1]
    print(
      f"episode {i + 1}/{s['episodes']} (seed {ep_seed}): planned success {p['success']} final distance "
      f"{p['final_distance']:.3f} | random success {r['success']} final distance {r['final_distance']:.3f} "
      f"| {np.median(p['plan_seconds'][1:] if len(p['plan_seconds']) > 1 else p['plan_seconds']):.3f} s/plan",
      flush=True,
    )
  plan_s = np.concatenate([p["plan_seconds"][1:] for p in planned if len(p["plan_seconds"]) > 1] or [[np.nan]])
  result = {
    **head,
    "steps": steps,
    "success_rate": float(np.mean([p["success"] for p in planned])),
    "final_success_rate": float(np.mean([p["final_success"] for p in planned])),
    "final_distance": float(np.mean([p["final_distance"] for p in planned])),
    "random_success_rate": float(np.mean([r["success"] for r in random])),
    "random_final_success_rate": float(np.mean([r["final_success"] for r in random])),
    "random_final_distance": float(np.mean([r["final_distance"] for r in random])),
    "plan_seconds_median": float(np.median(plan_s)),
    "wall_seconds": time.time() - t0,
  }
  curves = {
    "planned": np.mean([p["distance_T"] for p in planned], 0),
    "random": np.mean([r["distance_T"] for r in random], 0),
  }
  return _write(result, out_dir, planned[0], curves, "fingertip-target distance")


def _write(result: dict, out_dir: str, first: dict, curves: dict, ylabel: str) -> dict:
  """metrics.json, a video of the first planned episode (observation | goal) and the mean distance curves."""
  from worldmodel import media

  mirror = storage.Mirror(out_dir)  # written locally, uploaded for a bucket
  goal = np.broadcast_to(first["goal_HWC"], first["frames_THWC"].shape)
  video = np.stack([media.side_by_side([f[None], g[None]])[0] for f, g in zip(first["frames_THWC"], goal)])
  video = media.caption(video, ["observed", "goal"])
  title = f"{result['env']} ({result['protocol']}): mean over {result['episodes']} episodes"
  result["media"] = {
    "episode_mp4": media.write_mp4(os.path.join(mirror.local, "episode0_obs_vs_goal.mp4"), video, fps=10, scale=3),
    "distance_png": media.plot_curves(os.path.join(mirror.local, "distance.png"), curves, "env step", ylabel, title),
  }
  result = json.loads(json.dumps(result).replace(mirror.local, out_dir))
  with open(os.path.join(mirror.local, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  mirror.close()
  print(json.dumps({k: v for k, v in result.items() if k not in ("media", "per_episode")}))
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
      protocol=_PROTOCOL.value,
      lewm=goal_protocol.Protocol(
        _GOAL_OFFSET.value, _BUDGET.value, _TRAJECTORY.value, _TOLERANCE.value, _TRAJ_POLICY.value
      ),
      episodes=_EPISODES.value,
      steps=_STEPS.value,
      horizon=_HORIZON.value,
      planner=_PLANNER.value,
      samples=_SAMPLES.value,
      iterations=_ITERS.value,
      elites=_ELITES.value,
      replan_every=_REPLAN.value,
      seed=_SEED.value,
      step=_STEP.value,
      out_dir=_OUT.value,
      dynamics=_DYNAMICS.value,
      context=_CONTEXT.value,
      cost=_COST.value,
      cost_steps=_COST_STEPS.value,
      oracle=_ORACLE.value,
    )
  except (config_lib.ConfigError, CheckpointError, DatasetError, ValueError) as e:
    config_lib.die(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
