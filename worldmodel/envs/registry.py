"""Planning environments by name (`--env=NAME[:ARG]`) and the check that an env fits a world model.

A factory gets the part after ':', the model's config and its dataset's worldmodel.json, so the env can show what
the model was trained on (frame size, camera, frame skip). A new environment is one entry in ENVS.
"""

from __future__ import annotations

from typing import Callable


def _dmc(arg: str, config, meta: dict):
  from worldmodel.data.sources import dmc

  dmc.require_installed()
  from worldmodel.envs import dmc_goal

  # The env must show what the model was trained on: same frame size, camera, action repeat and target drawing.
  return dmc_goal.GoalEnv(
    arg,
    size=int(meta.get("size", config.model.size)),  # the data's size: a model trained on resized frames is refused
    camera=int(meta.get("camera", 0)),
    action_repeat=int(meta.get("action_repeat", 1)),
    render_target=bool(meta.get("render_target", True)),
  )


def _tworoom(arg: str, config, meta: dict):
  from worldmodel.envs import tworoom_goal

  if arg:
    raise ValueError(f"--env=tworoom takes no ':' argument (got {arg!r})")
  # Rendered at the data's own size: a model trained on resized frames (data.resize) is caught by check_matches.
  return tworoom_goal.GoalEnv(
    size=int(meta.get("size", config.model.size)), action_repeat=int(meta.get("action_repeat", 1))
  )


ENVS: dict[str, Callable] = {"dmc": _dmc, "tworoom": _tworoom}


def check_name(env_name: str) -> None:
  """ValueError naming the known environments for an unknown name (cheap: call it before loading a model)."""
  if env_name.partition(":")[0] not in ENVS:
    raise ValueError(f"--env={env_name!r}: unknown environment; known: dmc:DOMAIN-TASK, tworoom")


def make(env_name: str, config, meta: dict):
  """The planning env for `env_name`."""
  check_name(env_name)
  name, _, arg = env_name.partition(":")
  return ENVS[name](arg, config, meta)


def check_matches(env, config, env_name: str, workdir: str) -> None:
  """ValueError naming both sides when the env's action size or frame size is not the model's."""
  action_dim = len(env.low_A)
  if action_dim != config.model.action_dim:
    raise ValueError(
      f"{env_name} has {action_dim}-D actions but the model in {workdir} was trained on "
      f"{config.model.action_dim}-D actions"
    )
  h, w = env.frame().shape[:2]
  size = int(config.model.size)
  if (h, w) != (size, size):
    raise ValueError(
      f"{env_name} renders {h}x{w} frames (the size of the model's data) but the model in {workdir} takes "
      f"{size}x{size} frames (model.size); plan with a model trained on frames of its data's size"
    )
