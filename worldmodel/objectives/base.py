"""The objective contract: what the trainer, evaluation, planning and encoder loading ask of an objective.

An objective is one file, worldmodel/objectives/<name>.py, holding a subclass of `Objective` decorated with
`@register`; `config.objective = "<name>"` selects it (`worldmodel.objectives.get`). Nothing else names it: the
runtime, trainer, evaluate, plan, encoders, bench and aot only call the hooks below.

Required (no default; `register` refuses a class that lacks one):
  create_model(config, rngs) -> nnx.Module       the model; nnx.Param variables train, every other variable type
                                                 (e.g. models.variables.EMA / Frozen) is carried in state["extra"]
  batch_spec(config, sharding) -> dict           abstract global batch (ShapeDtypeStructs) the pipeline feeds
  check_config(config)                           raise ValueError naming the key at fault (before any compile)
  check_data(config, frame_size)                 raise ValueError when the data does not fit the model
  loss_fn(model, batch, *, rng, train) -> (loss, logs)   scalar loss and a dict of scalar logs
  eval_step(model, batch) -> dict                per-clip outputs for the Evaluator (jitted)
  Evaluator                                      class: Evaluator(model, config, num_media); .update(batch, out);
                                                 .finish(out_dir, num_clips) -> metrics dict

Optional (the defaults below are no-ops):
  resolve_config(config)                         fill keys derived from the data / other runs (saved in config.json)
  sample_transform(config, *, eval) -> transform | None   per-sample data-pipeline step (e.g. JEPA's masks)
  initialize(rt, state) -> state                 a fresh run's state after init (e.g. load a pretrained encoder)
  loads_init_source                              True: `initialize` reads init.source itself (no by-name warm start)
  lr_scales(config, params) -> tree | None       per-parameter learning-rate multipliers (e.g. layer-wise decay)
  after_update(config, params, extra, step) -> (extra, logs)   after each optimizer step (e.g. an EMA target)
  configure_eval(config, *, context, perceptual, probes)   evaluate's objective-specific CLI options
  plannable                                      True: worldmodel.plan can run MPC with this model
  defaults                                       config keys added since old workdirs were written, with the
                                                 value the code assumed before (merged once when loaded)
  encoder_description, encoder_config(config), encoder_weights(state)   what worldmodel.encoders loads from a
                                                 workdir of this objective (None: it has no encoder to load)

Hooks receive the run's ml_collections config (config keys are read directly: worldmodel.config.base_config gives
the shared blocks; the objective's `defaults` fill keys its older workdirs lack). Model code lives in
worldmodel/models/, helpers shared by objectives in worldmodel/common.py and the optimizer in worldmodel/optim.py,
so that no objective imports another objective or the runtime.

A new objective therefore touches: worldmodel/models/NAME.py (if its model is new), worldmodel/objectives/NAME.py
(this class, plus an Evaluator, in the same file or a NAME_eval.py beside it) and experiments/NAME.py (its config,
built on base_config) — nothing else.
"""

from __future__ import annotations

from typing import Any

REQUIRED = ("create_model", "batch_spec", "check_config", "check_data", "loss_fn", "eval_step", "Evaluator")
REGISTRY: dict[str, Objective] = {}


class Objective:
  """Base class of every objective; see the module docstring for the contract. Subclasses set `name`."""

  name: str = ""
  Evaluator: Any = None
  loads_init_source: bool = False
  plannable: bool = False
  encoder_description: str = ""
  defaults: dict = {}  # keys an older workdir's config.json may lack: {"model": {"key": value the code assumed}}

  def resolve_config(self, config) -> None:
    del config

  def sample_transform(self, config, *, eval: bool = False):
    del config, eval
    return None

  def initialize(self, rt, state: dict) -> dict:
    del rt
    return state

  def lr_scales(self, config, params: dict):
    del config, params
    return None

  def after_update(self, config, params: dict, extra: dict, step) -> tuple[dict, dict]:
    del config, params, step
    return extra, {}

  def configure_eval(self, config, *, context: int | None = None, perceptual: str = "", probes: bool = True) -> None:
    """Apply evaluate's objective-specific options to the run's config; an option this objective has no use for
    is an error (probes, a switch that defaults on, is ignored)."""
    del probes
    if context is not None:
      raise ValueError(f"--context={context}: only action-conditioned runs roll out; this is a {self.name!r} run")
    if perceptual:
      raise ValueError(
        f"--perceptual={perceptual}: LPIPS / FVD compare pixels; a {self.name!r} run predicts latents "
        "(use a tokenizer workdir)"
      )

  def encoder_config(self, config):
    """The encoder's model config (VideoViT keys) in a workdir of this objective, or None: no encoder."""
    del config
    return None

  def encoder_weights(self, state: dict):
    """The encoder's weights in a restored checkpoint (a pure dict {params, extra, ...}), or None if absent."""
    del state
    return None


def register(cls: type[Objective]) -> type[Objective]:
  """Class decorator: check the contract's required hooks and make the objective selectable by `cls.name`."""
  missing = [k for k in ("name",) + REQUIRED if not getattr(cls, k, None)]
  if missing:
    raise TypeError(f"objective {cls.__name__} lacks {missing} (worldmodel/objectives/base.py: the contract)")
  REGISTRY[cls.name] = cls()
  return cls
