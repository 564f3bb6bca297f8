"""Orbax checkpoints: one step directory holds the train state, the data position and the resolved config.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it on commit), so a crash
mid-save leaves the previous checkpoint intact. Restores go onto abstract arrays that carry the *current* mesh's
shardings, which is what lets a checkpoint move between meshes and process counts. A newest checkpoint that cannot
be read is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from worldmodel import storage

ITEMS = ("state", "data", "config")

# Without the per-array sharding file, a checkpoint reads back as plain numpy on any machine (one CPU, another mesh)
# when no target is given; our restores always pass the current mesh's shardings, so nothing is lost for them.
_verbosity = logging.get_verbosity()
logging.set_verbosity(logging.ERROR)  # the registry warns that it overrides its default: intended
ocp.type_handlers.register_type_handler(
  jax.Array, ocp.type_handlers.ArrayHandler(enable_write_sharding_file=False), override=True
)
logging.set_verbosity(_verbosity)


class CheckpointError(RuntimeError):
  pass


class Checkpointer:
  def __init__(self, directory: str, *, keep: int, async_save: bool = True, keep_every: int = 0):
    self.directory = storage.absolute(directory)  # gs:// stays a URL: Orbax writes it through TensorStore
    # keep_every: a checkpoint whose step is a multiple of it outlives max_to_keep (Orbax's keep_period).
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, keep_period=keep_every or None, enable_async_checkpointing=async_save, create=True
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, config: dict, *, force: bool = False) -> bool:
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config)
    )
    return self.manager.save(step, args=args, force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
    """Restore the newest readable checkpoint (or `step`); returns (step, state, data_state)."""
    candidates = [step] if step is not None else list(reversed(self.steps()))
    if not candidates:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    if step is not None and step not in self.steps():
      have = ", ".join(map(str, self.steps())) or "none"
      raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; available steps: {have}")
    errors = []
    for s in candidates:
      try:
        out = self.manager.restore(
          s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        )
        if errors:
          logging.warning("restored the previous checkpoint, step %d", s)
        return s, out["state"], dict(out["data"])
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to an older one
        msg = f"checkpoint step {s} in {self.directory} is corrupt or unreadable ({type(e).__name__}: {str(e)[:300]})"
        if _is_mismatch(e):
          raise CheckpointError(f"checkpoint step {s} does not match this model: {e}") from e
        errors.append(msg)
        logging.warning("%s; falling back to the previous checkpoint", msg)
        print(f"warning: {msg}; falling back to the previous checkpoint", flush=True)
    raise CheckpointError("no readable checkpoint: " + "; ".join(errors))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _is_mismatch(e: Exception) -> bool:
  # Shape/structure disagreements are a config error, not corruption: falling back would hide them.
  text = str(e)
  return any(
    w in text
    for w in ("shape mismatch", "Shape mismatch", "tree structure", "Tree structure", "do not match", "don't match")
  )


def read_numpy(item_dir: str) -> Any:
  """Read one saved item (e.g. CKPT/checkpoints/STEP/state) as numpy arrays on any machine.

  Needs no mesh and ignores the saved shardings, so a checkpoint written by 8 devices or 2 processes can be
  inspected or compared from a single-device process.
  """
  item_dir = storage.absolute(item_dir)  # Orbax's OCDBT reader refuses relative paths (and says so only in a log)
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(item_dir)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(restore_args=args))


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def read_newest(workdir: str, step: int | None = None) -> tuple[int, Any]:
  """(step, numpy state) of a workdir's newest (or given) checkpoint; falls back past unreadable ones."""
  directory = storage.join(workdir, "checkpoints")
  steps = (
    sorted((int(p) for p in storage.listdir(directory) if p.isdigit()), reverse=True)
    if storage.isdir(directory)
    else []
  )
  if step is not None:
    steps = [s for s in steps if s == step]
  errors = []
  for s in steps:
    try:
      return s, read_numpy(storage.join(directory, str(s), "state"))
    except Exception as e:  # a torn or corrupt save: try the previous one
      errors.append(f"step {s}: {type(e).__name__}: {e}"[:300])
  raise CheckpointError(f"no readable checkpoint in {directory}" + (f" ({'; '.join(errors)})" if errors else ""))


def _path_key(path) -> tuple[str, ...]:
  # Orbax stores list indices as string keys ('0'); the model's pure dicts use ints: compare as strings.
  return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def conform(loaded: Any, expected: Any, what: str) -> Any:
  """`loaded` arranged like `expected` (a pytree of arrays or ShapeDtypeStructs); every leaf must be present with
  the same shape, else an error listing the mismatched names and shapes."""
  flat_l = {_path_key(k): v for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
  flat_e = {_path_key(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  shape = lambda d, k: np.shape(d[k]) if k in d else "missing"  # noqa: E731
  bad = [
    "/".join(k) + f": checkpoint {shape(flat_l, k)} vs model {shape(flat_e, k)}"
    for k in sorted(set(flat_l) | set(flat_e))
    if shape(flat_l, k) != shape(flat_e, k)
  ]
  if bad:
    raise CheckpointError(f"{what} does not match the model ({len(bad)} mismatches): " + "; ".join(bad[:12]))
  return jax.tree_util.tree_map_with_path(lambda k, _: flat_l[_path_key(k)], expected)
