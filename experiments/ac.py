"""Action-conditioned world model on a frozen JEPA encoder (V-JEPA 2-AC style).

  python -m worldmodel.train --config=experiments/ac.py:VARIANT --workdir=DIR \
      --config.data.dir=DATA --config.model.encoder_source=JEPA_WORKDIR_OR_VJEPA_FILE

The data needs actions (`generate --source=dmc:...` or `bouncing`); the encoder's architecture and weights come from
the JEPA workdir (its target encoder, newest checkpoint), an encoder export, or a V-JEPA / V-JEPA 2 checkpoint
(.pt / .safetensors), so `model.size` follows it.
Variants:
  tiny   4-frame clips, a 1-block predictor: seconds per run, used by the tests
  dmc    8-frame dm_control clips, predictor 192 x 4, squared error, 2 context frames (CPU-sized); for
         planning, data at --action_repeat=5
  small  predictor 384 x 6 (the V-JEPA 2-AC reference's small shape), 8-frame clips
"""

import ml_collections

VARIANTS = ("tiny", "dmc", "small")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "small"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} for experiments/ac.py; choose one of {VARIANTS}")

  c = ml_collections.ConfigDict()
  c.objective = "ac"
  c.seed = 0
  c.total_steps = 3000
  c.batch_size = 8
  c.log_every_steps = 50

  c.data = dict(
    dir="",
    train_split="train",
    num_frames=8,
    frame_stride=1,
    resize=0,
    weights=(),
    features=dict(video="", action="", state="", reward=""),
    read_threads=2,
    prefetch=4,
    workers=0,
  )
  # encoder_source: a JEPA workdir, an encoder export or a V-JEPA file (encoder_key: which of its entries, default
  # target_encoder); encoder_model is filled in from it (and action_dim from the data) at start.
  c.model = dict(
    name="ac",
    encoder_source="",
    encoder_key="",
    encoder_model={},
    frames=8,
    size=0,
    max_frames=16,
    action_dim=0,
    predictor=dict(width=384, depth=6, heads=6, mlp_ratio=4.0),
    rollout_steps=2,
    residual=True,
    loss_exp=1.0,
    context_frames=1,
    dtype="float32",
    remat="none",
    scan_layers=False,
  )
  # context_frames: observed frames a rollout starts from, in evaluation and planning (one frame shows no velocity).
  # V-JEPA 2-AC: warmup, constant, linear decay (WSD); constant weight decay 0.04.
  c.optim = dict(
    lr=4e-4,
    warmup_steps=200,
    decay_steps=-1,
    final_lr_frac=0.0,
    schedule="wsd",
    decay_frac=0.2,
    weight_decay=0.04,
    b1=0.9,
    b2=0.999,
    grad_clip=1.0,
  )
  # checkpoint.every_minutes: also save at the first log step once this many minutes passed (0: off);
  # keep_every: checkpoints at multiples of this step are kept beyond `keep` (0: off).
  c.checkpoint = dict(every_steps=500, keep=3, async_save=True, every_minutes=0.0, keep_every=0)
  # compile_cache_dir: persistent XLA compilation cache ('': WORKDIR/compile_cache, 'none': off).
  c.compile_cache_dir = ""
  # profile: a jax.profiler trace of steps [start_step, start_step + num_steps) into WORKDIR/profile (0 steps: off).
  c.profile = dict(start_step=0, num_steps=0)
  c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn=dict(data=1, fsdp=1, tensor=1))  # dcn: cross-slice sizes
  c.eval = dict(split="test", batch_size=16, max_clips=0, num_media=4)

  if variant == "tiny":
    c.total_steps = 20
    c.log_every_steps = 5
    c.data.num_frames = c.model.frames = 4
    c.model.predictor = dict(width=32, depth=1, heads=2, mlp_ratio=4.0)
    c.optim.update(lr=1e-3, warmup_steps=5, decay_steps=1000)
    c.checkpoint.every_steps = 10
    c.eval.batch_size = 8
  elif variant == "dmc":  # sized for a CPU (~0.8 s per step); the reference's 384 x 6 is `small`
    c.total_steps = 2500
    c.optim.update(warmup_steps=60, lr=1e-3)
    c.model.predictor = dict(width=192, depth=4, heads=3, mlp_ratio=4.0)
    # On reacher the frame change sits in a few arm tokens: L1's optimum there is "no change" (the predictor stayed
    # at copy-last for 1000 steps); squared error learns the mean change. Two context frames show the velocity.
    # Held-out rollout vs copy-last at h = 4: L1 0.79x, MSE 0.47x (BUILD_NOTES).
    c.model.update(loss_exp=2.0, context_frames=2)
  return c
