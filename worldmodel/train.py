"""Train any worldmodel objective from an experiment config.

  python -m worldmodel.train --config=experiments/tokenizer.py:tiny --workdir=runs/tok --config.data.dir=DATA

  --config=FILE[:VARIANT]   an experiments/*.py file; VARIANT picks a preset (see the file's docstring)
  --config.KEY=VALUE        override one key, e.g. --config.batch_size=32 --config.model.quantizer.kind=vq
  --workdir=DIR             where config.json, checkpoints/, metrics.jsonl, tb/ and compile_cache/ go; a local
                            folder or a bucket URL (gs://bucket/runs/x; s3:// with the s3 extra)
  --print_config            print the resolved config (file + overrides) and exit
  --list_variants           list the config file's variants and exit (same as --config=FILE:help)

Re-running the same command resumes from the newest checkpoint in DIR. SIGTERM checkpoints and exits 0.
Multi-host: start one process per host (see launch/); pass --coordinator_address/--num_processes/--process_id
or let jax.distributed detect SLURM / TPU / GKE (--distributed_auto); launch/local.py runs N processes on this
machine.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports: restart under tcmalloc (worldmodel/allocator.py)
  from worldmodel import allocator

  allocator.use_tcmalloc()

from absl import app, flags
from ml_collections import config_flags

from worldmodel import config as config_lib
from worldmodel.parallel import distributed

if __name__ == "__main__":  # flags only for the CLI: importing several CLI modules must not redefine them
  _CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:variant], e.g. experiments/tokenizer.py:tiny.", lock_config=True
  )
  _WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (local or gs://): checkpoints, metrics.jsonl, tb/, config.json."
  )
  _PRINT = flags.DEFINE_bool("print_config", False, "Print the config with every override applied, then exit.")
  _VARIANTS = flags.DEFINE_bool(
    "list_variants", False, "List the --config file's variants (its docstring), then exit; or --config=FILE:help."
  )
  flags.mark_flags_as_required(["config"])
  flags.adopt_module_key_flags(distributed)  # --help lists the multi-host flags too


def main(argv):
  if _VARIANTS.value:
    config_lib.print_variants(config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0])
    return
  if _PRINT.value:
    try:
      config_lib.normalize_dtypes(_CONFIG.value.get("model"))
    except config_lib.ConfigError as e:
      config_lib.die(str(e))
    print(_CONFIG.value, end="", flush=True)
    return
  if not _WORKDIR.value:
    config_lib.die("--workdir is required (where checkpoints, metrics.jsonl, tb/ and config.json go)")
  distributed.start(argv)
  from worldmodel import trainer  # after distributed init: importing jax-using modules is fine, using devices is not
  from worldmodel.checkpoint import CheckpointError

  try:
    result = trainer.train(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, trainer.TrainError, CheckpointError, ValueError) as e:
    config_lib.die(str(e))
  print(f"done: step {result['step']}; workdir {_WORKDIR.value}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.flags_parser)
else:  # worldmodel.train(...) is the Python API's train (worldmodel/api.py)
  from worldmodel import api

  api.callable_module(__name__, api.train)
