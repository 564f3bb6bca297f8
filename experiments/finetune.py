"""Fine-tune a pretrained encoder with an attentive head: state regression or clip classification.

  python -m worldmodel.train --config=experiments/finetune.py:VARIANT[,MODE][,TASK] --workdir=DIR \
      --config.data.dir=DATA --config.init.source=ENCODER

ENCODER: a JEPA workdir (its EMA target encoder), an encoder export (python -m worldmodel.encoders), an AC or
fine-tune workdir's encoder, or a V-JEPA / V-JEPA 2 checkpoint (.pt / .pth / .safetensors; `init.key` picks
'target_encoder' or 'encoder'). The encoder's architecture and frame size come from it.
MODE:  frozen (default: attentive probe on a frozen encoder), partial (last `model.trainable_blocks` blocks train),
       full (everything trains, layer-wise learning-rate decay `optim.layer_decay`).
TASK:  state (default: regress the per-slot state, R² per state group) or classify (a clip's `label`, from
       `generate --source=video:'DIR/*/*.mp4' --labels=dirname`).
Variants:
  tiny   4-frame clips, a 1-block head, a few hundred steps: used by the tests
  dmc    8-frame dm_control clips (the JEPA dmc encoder), e.g. reacher qpos
  base   16-frame clips, V-JEPA's probe recipe (16 queries are V-JEPA 2's; 4 here), for real hardware
"""

import ml_collections

from worldmodel import config as config_lib
from worldmodel.models.finetune import MODES, TASKS

VARIANTS = ("tiny", "dmc", "base")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = (arg or "tiny").split(",")
  variant, options = parts[0], parts[1:]
  if variant not in VARIANTS or any(o not in MODES + TASKS for o in options):
    raise ValueError(
      f"unknown variant {arg!r} for experiments/finetune.py; choose one of {VARIANTS}, optionally "
      f"with a mode {MODES} and a task {TASKS}, e.g. 'tiny,full,classify'"
    )
  mode = next((o for o in options if o in MODES), "frozen")
  task = next((o for o in options if o in TASKS), "state")

  c = config_lib.base_config("finetune", num_frames=16, total_steps=2000, batch_size=16)
  # encoder_model, size, classes / state statistics are filled in from init.source and the data at start.
  c.model = dict(
    name="finetune",
    task=task,
    mode=mode,
    trainable_blocks=2,
    frames=16,
    size=0,
    encoder_model={},
    head=dict(heads=4, queries=4),
    dtype="float32",
    remat="none",
    scan_layers=False,
    classes=[],
    state_dim=0,
    periodic_state=[],
    state_mean=[],
    state_std=[],
    state_groups={},
    attention="auto",  # auto (GPU: cuDNN flash, TPU: Pallas splash, CPU: ours), or xla / cudnn / splash / cpu
  )
  # Frozen probes train the head alone (higher lr); fine-tuning moves the encoder gently, lower layers least.
  lr = {"frozen": 1e-3, "partial": 3e-4, "full": 2e-4}[mode]
  c.optim.update(lr=lr, layer_decay=0.75 if mode == "full" else 1.0)
  c.checkpoint.keep = 2

  if variant == "tiny":
    c.total_steps = 300
    c.batch_size = 32
    c.log_every_steps = 50
    c.data.num_frames = c.model.frames = 4
    c.model.head = dict(heads=4, queries=4)
    c.model.trainable_blocks = 1
    c.optim.update(lr=3 * c.optim.lr, warmup_steps=20)
    c.checkpoint.every_steps = 100
    c.eval.batch_size = 16
  elif variant == "dmc":
    c.total_steps = 800
    c.data.num_frames = c.model.frames = 8
  elif variant == "base":
    c.batch_size = 256
    c.model.update(remat="full", scan_layers=mode != "partial", dtype="bfloat16")
    c.total_steps = 20000
  return c
