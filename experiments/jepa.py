"""V-JEPA latent prediction on video clips.

  python -m worldmodel.train --config=experiments/jepa.py:VARIANT --workdir=DIR --config.data.dir=DATA

Variants:
  tiny     4x64x64 clips, a 2-block encoder: seconds per run, used by the tests
  dmc      8x64x64 dm_control clips (e.g. `generate --source=dmc:reacher-easy --size=64`), encoder 192 x 6
  small    16x64x64 clips, ViT-S encoder (384 x 12) and predictor 192 x 6: a CPU-sized real run
  bench    the fixed benchmark shapes of `python -m worldmodel.bench` (same model as small, batch 8)
  base     ViT-B (768 x 12) at 16x224x224, tubelet 2x16x16
  vit_l / vit_h / vit_g   the published V-JEPA 2 encoders (RoPE) at 16x256x256, for real hardware and fit checks
Append ',rope' for V-JEPA 2's 3-D RoPE instead of sin-cos positions, ',wsd' for a warmup-stable-decay schedule,
',future' to replace the long-range mask set by future prediction (the clip's second half from its first).
"""

import ml_collections

from worldmodel import config as config_lib

VARIANTS = ("tiny", "dmc", "small", "bench", "base", "vit_l", "vit_h", "vit_g")
OPTIONS = {"rope", "wsd", "future"}

# Published encoder shapes (V-JEPA 2): width, depth, heads, mlp_ratio.
ENCODERS = {
  "vit_s": (384, 12, 6, 4.0),
  "vit_b": (768, 12, 12, 4.0),
  "vit_l": (1024, 24, 16, 4.0),
  "vit_h": (1280, 32, 16, 4.0),
  "vit_g": (1408, 40, 22, 48 / 11),
}


def masks(short_keep: float, long_keep: float) -> dict:
  """V-JEPA's two sets: 8 small tubes (short range) and 2 large ones (long range), each spanning the whole clip."""
  return {
    "short": dict(
      num_blocks=8, spatial_scale=0.15, aspect_ratio=(0.75, 1.5), temporal_scale=1.0, keep=short_keep, anchor="random"
    ),
    "long": dict(
      num_blocks=2, spatial_scale=0.7, aspect_ratio=(0.75, 1.5), temporal_scale=1.0, keep=long_keep, anchor="random"
    ),
  }


def future_mask(keep: float) -> dict:
  """Everything after the first `keep` of the clip: the predictor must forecast, so features must carry motion."""
  return dict(
    num_blocks=1, spatial_scale=1.0, aspect_ratio=(1.0, 1.0), temporal_scale=1.0 - keep, keep=keep, anchor="end"
  )


def _encoder(name: str) -> dict:
  w, d, h, r = ENCODERS[name]
  return dict(width=w, depth=d, heads=h, mlp_ratio=r)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = (arg or "small").split(",")
  variant, options = parts[0], set(parts[1:])
  if variant not in VARIANTS or not options <= OPTIONS:
    raise ValueError(
      f"unknown variant {arg!r} for experiments/jepa.py; choose one of {VARIANTS} "
      f"(optionally with {sorted(OPTIONS)}, e.g. 'small,rope')"
    )

  c = config_lib.base_config("jepa", num_frames=16, total_steps=3000, batch_size=8)
  # The model: encoder (and its EMA target), predictor, positions ('sincos' or 'rope'), masks with fixed keep counts.
  c.model = dict(
    name="jepa",
    frames=16,
    size=64,
    tubelet=(2, 8, 8),
    pos="sincos",
    dtype="float32",
    remat="none",
    scan_layers=False,
    encoder=_encoder("vit_s"),
    loss_exp=1.0,
    predictor=dict(width=192, depth=6, heads=6, mlp_ratio=4.0),
    masks=masks(0.27, 0.09),
    # Small-scale options (objectives/jepa.py), weights (0: off): SIGReg on the context tokens (LeJEPA), a loss on
    # the context positions' predictions too (V-JEPA 2.1's dense loss).
    reg=dict(sigreg=0.0, sigreg_projections=256, dense_context=0.0),
    freeze_patch_embed=False,  # MoCo v3's frozen random patch projection (objectives/jepa.py, lr_scales)
    attention="auto",  # auto (GPU: cuDNN flash, TPU: Pallas splash, CPU: ours), or xla / cudnn / splash / cpu
  )
  # V-JEPA: AdamW, warmup + cosine lr, weight decay cosine 0.04 → 0.4, EMA momentum linear 0.998 → 1.0.
  c.optim.update(
    lr=6.25e-4, warmup_steps=300, final_lr_frac=0.01, weight_decay=0.04, weight_decay_end=0.4, grad_clip=10.0
  )
  c.optim.update(ema_start=0.998, ema_end=1.0)  # EMA momentum of the target encoder (objectives/jepa.py)
  # Probes: fit on probe_train_split (probe_clips clips at most), scored on the evaluated split.
  c.eval.update(probes=True, probe_train_split="train", probe_clips=256, probe_steps=1500)
  # train_probes: in-training evaluation (eval.every_steps) also fits the state probes (slow).
  c.eval.update(train_probes=False)

  if variant == "tiny":
    c.total_steps = 20
    c.log_every_steps = 5
    c.data.num_frames = c.model.frames = 4
    c.model.encoder = dict(width=128, depth=2, heads=4, mlp_ratio=4.0)
    # A 32 x 1 predictor cannot predict masked content, and the encoder then drops what it cannot predict (probe R²
    # per predictor size: BUILD_NOTES.md, "JEPA probes on the embedded data").
    c.model.predictor = dict(width=64, depth=2, heads=2, mlp_ratio=4.0)
    c.model.masks = masks(0.25, 0.09)
    # Squared error: with L1 the predictor settles on the median token (background, on sparse synthetic scenes)
    # and the encoder learns little about the objects (BUILD_NOTES.md, "Design decisions").
    c.model.loss_exp = 2.0
    # V-JEPA 2.1's dense loss: masked-only prediction dropped the balls (attentive all-state R² -0.18 / -0.25 at
    # seeds 0 / 1); regressing the context positions too gave 0.23 / 0.26 (BUILD_NOTES, "small-scale options").
    c.model.reg.dense_context = 1.0
    # A frozen random patch projection (MoCo v3): held-out attentive all-state R² with 608 probe samples, trained
    # minus random init, -0.07 -> +0.03 (mean of seeds 0-2; BUILD_NOTES, "small-scale options").
    c.model.freeze_patch_embed = True
    c.optim.update(lr=1e-3, warmup_steps=10, decay_steps=1000, ema_start=0.99, ema_end=0.999)
    c.checkpoint.every_steps = 10
    c.eval.update(batch_size=8, probe_clips=128, probe_steps=600)
  elif variant == "dmc":  # sized for a CPU: 8x64x64 clips (256 tokens), encoder 192 x 6, ~0.5 s per step
    c.total_steps = 1200
    c.data.num_frames = c.model.frames = 8
    c.model.encoder = dict(width=192, depth=6, heads=3, mlp_ratio=4.0)
    c.model.predictor = dict(width=96, depth=4, heads=3, mlp_ratio=4.0)
    c.model.loss_exp = 2.0  # sparse scenes (an arm on a plain floor): see tiny
    c.optim.update(lr=5e-4, warmup_steps=200, ema_start=0.996, ema_end=1.0)
    c.eval.probe_clips = 1024  # 4 time slots per clip: 4096 probe samples (fewer overfit the attentive probe)
  elif variant in ("small", "bench"):
    # bf16 compute where the host runs it faster (GPU / TPU, CPUs with AVX512_BF16; bench step 2.44 vs 2.66 s on Zen 4)
    c.model.dtype = "auto"
    c.total_steps = 100 if variant == "bench" else c.total_steps
  elif variant == "base":
    c.model.update(size=224, tubelet=(2, 16, 16), encoder=_encoder("vit_b"), remat="full", scan_layers=True)
    c.model.predictor = dict(width=384, depth=12, heads=12, mlp_ratio=4.0)
  else:  # the published sizes: 16 frames at 256², RoPE, bf16 compute, rematerialised scanned layers
    c.model.update(
      size=256,
      tubelet=(2, 16, 16),
      pos="rope",
      dtype="bfloat16",
      encoder=_encoder(variant),
      remat="full",
      scan_layers=True,
    )
    c.model.predictor = dict(width=384, depth=12, heads=12, mlp_ratio=4.0)
    c.batch_size = 3072  # V-JEPA 2's global batch
    c.optim.update(
      lr=5.25e-4,
      warmup_steps=12000,
      schedule="wsd",
      decay_frac=0.05,
      weight_decay_end=0.04,
      ema_start=0.99925,
      ema_end=0.99925,
    )
    c.total_steps = 252000

  if "rope" in options:
    c.model.pos = "rope"
  if "wsd" in options:
    c.optim.schedule = "wsd"
  if "future" in options:  # the long-range set becomes "predict the second half of the clip from the first"
    c.model.masks = {"short": c.model.masks["short"].to_dict(), "future": future_mask(0.5)}
  return c
