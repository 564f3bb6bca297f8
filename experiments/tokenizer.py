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

VARIANTS = ("tiny", "quickstart", "dmc", "small", "jasmine")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = (arg or "quickstart").split(",")
  variant, options = parts[0], set(parts[1:])
  if variant not in VARIANTS or not options <= {"vq"}:
    raise ValueError(
      f"unknown variant {arg!r} for experiments/tokenizer.py; choose one of {VARIANTS} (optionally with ',vq')"
    )

  c = ml_collections.ConfigDict()
  c.objective = "tokenizer"
  c.seed = 0
  c.total_steps = 1500
  c.batch_size = 8
  c.log_every_steps = 100

  # Defaults = the quickstart: 4-frame 32x32 clips, 4x4 patches, FSQ [8,5,5,5] (10 bits per 16 pixels).
  # Measured: 27.4 dB held-out PSNR after 1500 steps (5.5 min on 2 CPU cores); see BUILD_NOTES.md.
  # data.dir: one dataset, or a comma-separated mixture sampled by data.weights (default: equal).
  # data.features maps our names to a foreign TFDS dataset's features (RLDS: video=steps/observation/image).
  # data.resize: centre-crop + area-resize frames to this size (0: use the dataset's size).
  c.data = dict(
    dir="",
    train_split="train",
    num_frames=4,
    frame_stride=1,
    resize=0,
    weights=(),
    features=dict(video="", action="", state="", reward=""),
    read_threads=2,
    prefetch=4,
    workers=0,
  )
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
  )
  c.optim = dict(
    lr=2e-3, warmup_steps=100, decay_steps=-1, final_lr_frac=0.05, weight_decay=1e-4, b1=0.9, b2=0.99, grad_clip=1.0
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

  if "vq" in options:
    c.model.quantizer.kind = "vq"
  return c
