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

from worldmodel import config as config_lib

VARIANTS = ("tiny", "dmc", "small")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "small"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} for experiments/ac.py; choose one of {VARIANTS}")

  c = config_lib.base_config("ac", num_frames=8, total_steps=3000, batch_size=8)
  # encoder_source: a JEPA workdir, an encoder export or a V-JEPA file (encoder_key: which of its entries, default
  # target_encoder); encoder_model is filled in from it (and action_dim from the data) at start.
  c.model = dict(
    name="ac",
    encoder_source="",
    encoder_key="",
    encoder_heads=0,  # a V-JEPA file's attention heads when its width has no published count (0: published)
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
    attention="auto",  # auto (GPU: cuDNN flash, TPU: Pallas splash, CPU: ours), or xla / cudnn / splash / cpu
  )
  # context_frames: observed frames a rollout starts from, in evaluation and planning (one frame shows no velocity).
  # V-JEPA 2-AC: warmup, constant, linear decay (WSD); constant weight decay 0.04.
  c.optim.update(lr=4e-4, warmup_steps=200, schedule="wsd", weight_decay=0.04)

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
    # On reacher the frame change sits in a few arm tokens: L1's optimum there is "no change" (the predictor stays at
    # copy-last); squared error learns the mean change. Two context frames show the velocity. Results: BUILD_NOTES.md
    # ("Planning: a control step the horizon can see ...").
    c.model.update(loss_exp=2.0, context_frames=2)
  elif variant == "small":  # bf16 where the host runs it faster (CEM iteration on Zen 4: 1.31–1.37 vs 1.51–1.75 s)
    c.model.dtype = "auto"
  return c
