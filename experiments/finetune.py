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

VARIANTS = ("tiny", "dmc", "base")
MODES = ("frozen", "partial", "full")
TASKS = ("state", "classify")


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

  c = ml_collections.ConfigDict()
  c.objective = "finetune"
  c.seed = 0
  c.total_steps = 2000
  c.batch_size = 16
  c.log_every_steps = 50

  c.data = dict(
    dir="",
    train_split="train",
    num_frames=16,
    frame_stride=1,
    resize=0,
    weights=(),
    features=dict(video="", action="", state="", reward=""),
    read_threads=2,
    prefetch=4,
    workers=0,
  )
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
  )
  c.init = dict(source="", key="")
  # Frozen probes train the head alone (higher lr); fine-tuning moves the encoder gently, lower layers least.
  lr = {"frozen": 1e-3, "partial": 3e-4, "full": 2e-4}[mode]
  c.optim = dict(
    lr=lr,
    warmup_steps=100,
    decay_steps=-1,
    final_lr_frac=0.0,
    schedule="cosine",
    decay_frac=0.2,
    weight_decay=0.05,
    b1=0.9,
    b2=0.999,
    grad_clip=1.0,
    layer_decay=0.75 if mode == "full" else 1.0,
  )
  # checkpoint.every_minutes: also save at the first log step once this many minutes passed (0: off);
  # keep_every: checkpoints at multiples of this step are kept beyond `keep` (0: off).
  c.checkpoint = dict(every_steps=500, keep=2, async_save=True, every_minutes=0.0, keep_every=0)
  # compile_cache_dir: persistent XLA compilation cache ('': WORKDIR/compile_cache, 'none': off).
  c.compile_cache_dir = ""
  # profile: a jax.profiler trace of steps [start_step, start_step + num_steps) into WORKDIR/profile (0 steps: off).
  c.profile = dict(start_step=0, num_steps=0)
  c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn=dict(data=1, fsdp=1, tensor=1))  # dcn: cross-slice sizes
  c.eval = dict(split="test", batch_size=16, max_clips=0, num_media=4)

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
