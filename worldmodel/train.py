"""Train any worldmodel objective from an experiment config.

  python -m worldmodel.train --config=experiments/tokenizer.py:tiny --workdir=runs/tok --config.data.dir=DATA

  --config=FILE[:VARIANT]   an experiments/*.py file; VARIANT picks a preset (see the file's docstring)
  --config.KEY=VALUE        override one key, e.g. --config.batch_size=32 --config.model.quantizer.kind=vq
  --workdir=DIR             where config.json, checkpoints/, metrics.jsonl, tb/ and compile_cache/ go; a local
                            folder or a bucket URL (gs://bucket/runs/x; s3:// with the s3 extra)

Re-running the same command resumes from the newest checkpoint in DIR. SIGTERM checkpoints and exits 0.
Multi-host: start one process per host (see launch/); pass --coordinator_address/--num_processes/--process_id
or let jax.distributed detect SLURM / TPU / GKE.
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
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
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
