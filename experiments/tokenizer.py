"""Video tokenizer (FSQ or VQ) on clip windows.

  python -m worldmodel.train --config=experiments/tokenizer.py:VARIANT --workdir=DIR --config.data.dir=DATA

Variants:
  tiny        seconds per run; used by the test suite
  quickstart  what `make quickstart` trains: 32x32 bouncing clips, a few minutes on 2 CPU cores
  dmc         64x64 dm_control clips (e.g. `generate --source=dmc:reacher-easy --size=64`), 4x4 patches
  small       64x64 clips, the benchmark shape
  jasmine     Jasmine's default tokenizer shapes (16x64x64 clips, patch 16, width 512, 4+4 blocks, 1024 VQ codes)
Append ',vq' to a variant (e.g. tiny,vq) for a VQ quantiser instead of FSQ.
"""

import ml_collections

from worldmodel import config as config_lib

VARIANTS = ("tiny", "quickstart", "dmc", "small", "jasmine")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = (arg or "quickstart").split(",")
  variant, options = parts[0], set(parts[1:])
  if variant not in VARIANTS or not options <= {"vq"}:
    raise ValueError(
      f"unknown variant {arg!r} for experiments/tokenizer.py; choose one of {VARIANTS} (optionally with ',vq')"
    )

  # Defaults = the quickstart: 4-frame 32x32 clips, 4x4 patches, FSQ [8,5,5,5] (10 bits per 16 pixels); its
  # held-out PSNR is in BUILD_NOTES.md.
  c = config_lib.base_config("tokenizer", num_frames=4, total_steps=1500, batch_size=8, log_every_steps=100)
  c.model = dict(
    name="tokenizer",
    frames=4,
    size=32,
    tubelet=(1, 4, 4),
    width=128,
    heads=4,
    mlp_ratio=4.0,
    enc_depth=2,
    dec_depth=2,
    dtype="float32",
    remat="none",
    scan_layers=False,
    quantizer=dict(
      kind="fsq",
      levels=(8, 5, 5, 5),
      saturation_penalty=1.0,
      num_codes=1024,
      code_dim=8,
      commitment=0.25,
      decay=0.99,
      restart_threshold=0.01,
    ),
    attention="auto",  # auto (GPU: cuDNN flash, TPU: Pallas splash, CPU: ours), or xla / cudnn / splash / cpu
  )
  c.optim.update(lr=2e-3, final_lr_frac=0.05, weight_decay=1e-4, b2=0.99)

  if variant == "tiny":
    c.total_steps = 20
    c.batch_size = 8
    c.log_every_steps = 5
    c.data.num_frames = c.model.frames = 4
    c.model.update(size=64, tubelet=(2, 8, 8), width=32, heads=2, enc_depth=1, dec_depth=1)
    c.optim.update(warmup_steps=5, decay_steps=1000)  # fixed length: 8 + 8 resumed steps == 16 straight
    c.checkpoint.every_steps = 10
    c.eval.update(batch_size=8, num_media=2)
  elif variant == "dmc":
    c.model.size = 64  # same 4x4 patches as the quickstart: 4 frames x 256 tokens per clip
    c.batch_size = 4
    c.total_steps = 2500
  elif variant == "small":
    c.data.num_frames = c.model.frames = 16
    c.model.update(size=64, tubelet=(2, 8, 8), width=256, heads=4, enc_depth=4, dec_depth=4)
    c.optim.lr = 1e-3
  elif variant == "jasmine":
    c.data.num_frames = c.model.frames = 16
    c.model.update(size=64, tubelet=(1, 16, 16), width=512, heads=8, enc_depth=4, dec_depth=4)
    c.model.quantizer.update(kind="vq", num_codes=1024, code_dim=32)
    c.optim.lr = 1e-3
  if variant in ("small", "jasmine"):  # bf16 where the host runs it faster (jasmine step on Zen 4: 0.98 vs 1.71 s)
    c.model.dtype = "auto"

  if "vq" in options:
    c.model.quantizer.kind = "vq"
  return c
