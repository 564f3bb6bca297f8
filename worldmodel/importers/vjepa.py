"""Import PyTorch V-JEPA (facebookresearch/jepa) and V-JEPA 2 (facebookresearch/vjepa2) encoders into `VideoViT`.

  model, model_cfg = load_vjepa_encoder("vitl.pt", frames=16, size=256)

Layout differences handled here: Conv3d (D, 3, t, p, p) → dense kernel over (t, p, p, C)-flattened tubelets; PyTorch
Linear weights are (out, in) → kernels (in, out); the fused qkv output is (3, heads, head_dim) in PyTorch and
heads-major (heads, 3, head_dim) in ours (whole heads per `tensor` shard); LayerNorm weight → scale.

Positions are regenerated, not imported. V-JEPA's `pos_embed` equals our `positions.sincos_3d` at the checkpoint's
grid (checked on import; a table that is not that sin-cos is refused). At that grid, or with fewer frames, features
match PyTorch exactly; at another frame size V-JEPA trilinearly resizes its table while we evaluate the sin-cos at
integer positions, so features there differ from what the PyTorch model would give. V-JEPA 2 has no position
parameters: its 3-D RoPE is index based in both, so it matches at any size. Heads cannot be read from the weights:
the published count for the width is used unless `heads` is given; a wrong count gives wrong features silently.
"""

from __future__ import annotations

import math
import os
import pickle
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from worldmodel.checkpoint import CheckpointError, conform
from worldmodel.models import positions, vit

TORCH_SUFFIXES = (".pt", ".pth", ".tar")  # .tar: the original repos save `*.pth.tar`
SUFFIXES = TORCH_SUFFIXES + (".safetensors",)  # every file this importer reads
FORMATS = ".pt, .pth, .pth.tar (torch.save) or .safetensors"
PREFIXES = ("module.", "backbone.")  # DDP and MultiMaskWrapper
# Published heads per width. V-JEPA's ViT-g has 16 heads, V-JEPA 2's (vit_giant_xformers) 22.
HEADS = {
  "vjepa": {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16},
  "vjepa2": {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 22},
}


def read_torch_state(path: str) -> dict[str, Any]:
  """A checkpoint file as a (possibly nested) dict whose tensors are numpy arrays.

  torch.save files are read with `weights_only=True`: a pickle holding anything but tensors and plain containers is
  refused, never executed. torch and safetensors are imported only here (optional dependencies).
  """
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
    except ImportError as e:
      raise CheckpointError(f"reading {path} needs the safetensors package (pip install safetensors)") from e
    try:
      return dict(load_file(path))
    except Exception as e:  # noqa: BLE001 - corrupt header, bf16 without numpy support, ...
      raise CheckpointError(f"could not read {path} as safetensors: {type(e).__name__}: {e}") from e
  if not path.endswith(TORCH_SUFFIXES):
    raise CheckpointError(f"{path}: unknown checkpoint format; supported: {FORMATS}")
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(f"reading {path} needs PyTorch (pip install torch; the CPU build is enough)") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    why = [l.strip() for l in str(e).splitlines() if "Unpickler error" in l] or [str(e).splitlines()[0]]
    raise CheckpointError(
      f"refusing to load {path}: it is not a plain weights file, so the safe unpickler "
      f"(weights_only=True) rejected it and nothing in it was run ({why[0].split('. ')[0]})"
    ) from e
  except Exception as e:  # noqa: BLE001 - truncated or not a torch file
    raise CheckpointError(f"could not read {path} with torch.load: {type(e).__name__}: {str(e)[:300]}") from e
  return _to_numpy(state, torch)


def _to_numpy(x: Any, torch) -> Any:
  if isinstance(x, torch.Tensor):
    x = x.detach().cpu()
    return (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
  if isinstance(x, dict):
    return {k: _to_numpy(v, torch) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return type(x)(_to_numpy(v, torch) for v in x)
  return x


def _strip(name: str) -> str:
  while name.startswith(PREFIXES):
    name = name.split(".", 1)[1]
  return name


def select_encoder(state: dict, key: str | None = None, *, what: str = "checkpoint") -> dict[str, np.ndarray]:
  """The encoder state_dict (prefixes `module.` / `backbone.` stripped) out of a training checkpoint
  (`key`, default 'target_encoder', the EMA encoder V-JEPA evaluates; else 'encoder') or a bare state_dict."""

  def clean(sd: dict) -> dict:
    return {_strip(str(k)): v for k, v in sd.items() if isinstance(v, np.ndarray)}

  tops = sorted(str(k) for k in state)
  if key:
    if not isinstance(state.get(key), dict):
      raise CheckpointError(f"{what} has no {key!r} state_dict; its top-level keys are {tops}")
    sd = clean(state[key])
  elif isinstance(state.get("target_encoder"), dict):
    sd = clean(state["target_encoder"])
  elif isinstance(state.get("encoder"), dict):
    sd = clean(state["encoder"])
  else:
    sd = clean(state)
  if "patch_embed.proj.weight" not in sd:
    raise CheckpointError(
      f"{what} holds no V-JEPA encoder (no patch_embed.proj.weight after stripping "
      f"{'/'.join(PREFIXES)}); its top-level keys are {tops[:20]}"
    )
  return sd


def _has_pos_embed(sd: dict) -> bool:
  # V-JEPA 2's hub notes say some RoPE checkpoints still carry an unused (zero) `pos_embed` buffer.
  return "pos_embed" in sd and bool(np.any(sd["pos_embed"]))


def infer_config(sd: dict, heads: int | None = None) -> dict:
  """width, depth, heads, mlp_ratio, tubelet and version ('vjepa': sin-cos `pos_embed`; 'vjepa2': RoPE)."""
  width, chans, *tubelet = sd["patch_embed.proj.weight"].shape
  if chans != 3 or len(tubelet) != 3:
    raise CheckpointError(
      f"patch_embed.proj.weight {sd['patch_embed.proj.weight'].shape}: expected a Conv3d over RGB video (D, 3, t, p, p)"
    )
  depth = 0
  while f"blocks.{depth}.norm1.weight" in sd:
    depth += 1
  if not depth or "blocks.0.mlp.fc1.weight" not in sd:
    raise CheckpointError("encoder state_dict has no blocks.0.norm1 / blocks.0.mlp.fc1 weights")
  version = "vjepa" if _has_pos_embed(sd) else "vjepa2"
  if heads is None:
    heads = HEADS[version].get(width)
    if heads is None:
      raise CheckpointError(
        f"no published head count for width {width}: pass heads= (config: init.heads, model.encoder_heads)"
      )
  hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
  ratio = hidden / width
  if int(width * ratio) != hidden:  # our MLP is int(width * mlp_ratio) wide
    ratio = (hidden + 0.5) / width
  return dict(
    width=int(width),
    depth=depth,
    heads=int(heads),
    mlp_ratio=ratio,
    tubelet=tuple(int(t) for t in tubelet),
    version=version,
  )


def model_config(
  info: dict, *, frames: int, size: int, pos: str | None = None, dtype: str = "float32", scan_layers: bool = False
) -> ml_collections.ConfigDict:
  """The `model` config (VideoViT's keys) for an imported encoder at a clip size."""
  t, p, _ = info["tubelet"]
  if frames % t or size % p:
    raise CheckpointError(
      f"clip {frames}x{size}x{size} does not tile into the checkpoint's {info['tubelet']} "
      "tubelets: frames must be a multiple of t and size of p"
    )
  pos = pos or ("sincos" if info["version"] == "vjepa" else "rope")
  return ml_collections.ConfigDict(
    dict(
      frames=frames,
      size=size,
      tubelet=info["tubelet"],
      pos=pos,
      dtype=dtype,
      remat="none",
      scan_layers=scan_layers,
      encoder={k: info[k] for k in ("width", "depth", "heads", "mlp_ratio")},
    )
  )


def _sincos_kind(pos_embed_ND: np.ndarray) -> tuple[tuple[int, int, int], str] | None:
  """((t, g, g) grid, 'sincos' or 'sincos_nonuniform') at which `pos_embed` is exactly one of our sin-cos tables."""
  n, dim = pos_embed_ND.shape
  for g in range(1, math.isqrt(n) + 1):
    if n % (g * g) == 0:
      grid = (n // (g * g), g, g)
      for kind, uniform in (("sincos", True), ("sincos_nonuniform", False)):
        if not uniform and dim % 8:
          continue
        if np.allclose(positions.sincos_3d(grid, dim, uniform), pos_embed_ND, atol=1e-5):
          return grid, kind
  return None


def _sincos_grid(pos_embed_ND: np.ndarray) -> tuple[int, int, int] | None:
  found = _sincos_kind(pos_embed_ND)
  return found[0] if found else None


def _check_positions(sd: dict, m: ml_collections.ConfigDict) -> None:
  table = np.asarray(sd["pos_embed"]).reshape(-1, sd["pos_embed"].shape[-1]) if _has_pos_embed(sd) else None
  found = _sincos_kind(table) if table is not None else None
  grid = found[0] if found else None
  if found and m.pos.startswith("sincos") and m.pos != found[1]:
    raise CheckpointError(f"the checkpoint's pos_embed is the {found[1]!r} table but model.pos={m.pos!r}")
  if m.pos.startswith("sincos"):
    if table is None:
      raise CheckpointError(
        "the checkpoint has no pos_embed (a V-JEPA 2 RoPE encoder) but model.pos='sincos'; "
        "set model.pos (or pos=) to 'rope'"
      )
    if grid is None:
      raise CheckpointError(
        f"the checkpoint's pos_embed {sd['pos_embed'].shape} is not V-JEPA's 3-D sin-cos table "
        "(uniform_power True or False) at any square grid, so it cannot be regenerated; if the encoder uses "
        "RoPE and this buffer is unused, set model.pos (or pos=) to 'rope'"
      )
  elif grid is not None:
    raise CheckpointError(
      f"the checkpoint adds a sin-cos pos_embed (V-JEPA, grid {grid}) but model.pos='rope'; "
      f"set model.pos (or pos=) to {found[1]!r}"
    )


def _heads_major(w: np.ndarray, heads: int) -> np.ndarray:
  """Rows (3, heads, hd) → (heads, 3, hd) along axis 0 (qkv weight rows or bias)."""
  n = w.shape[0]
  if n % (3 * heads):
    return w  # width disagrees with the model: conform reports it
  return w.reshape(3, heads, n // (3 * heads), *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


def to_worldmodel(sd: dict, model_cfg: ml_collections.ConfigDict) -> dict:
  """`VideoViT` params (pure dict, f32 numpy) from an encoder state_dict; any mismatch with `model_cfg` (names,
  shapes, tubelet, position kind, unknown parameters) raises a CheckpointError that lists it."""
  m = model_cfg
  heads, ckpt = m.encoder.heads, dict(sd)
  used = set()

  def take(name: str) -> np.ndarray:
    used.add(name)
    if name not in ckpt:
      return np.zeros((0,), np.float32)  # reported as a shape mismatch by conform
    return np.asarray(ckpt[name], np.float32)

  def linear(prefix: str) -> dict:
    return {"kernel": take(prefix + ".weight").T, "bias": take(prefix + ".bias")}

  def norm(prefix: str) -> dict:
    return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

  conv = take("patch_embed.proj.weight")
  if conv.ndim == 5 and tuple(conv.shape[2:]) != tuple(m.tubelet):
    raise CheckpointError(f"the checkpoint's tubelet is {tuple(conv.shape[2:])}, the model's {tuple(m.tubelet)}")
  _check_positions(ckpt, m)
  used.add("pos_embed")
  # Conv3d (D, C, t, p, p) → (t, p, p, C, D), flattened as patchify flattens each tubelet.
  kernel = conv.transpose(2, 3, 4, 1, 0).reshape(-1, conv.shape[0]) if conv.ndim == 5 else conv
  blocks = []
  for i in range(sum(k.endswith(".norm1.weight") and k.startswith("blocks.") for k in ckpt)):
    b = f"blocks.{i}."
    qkv_w, qkv_b = take(b + "attn.qkv.weight"), take(b + "attn.qkv.bias")
    blocks.append(
      {
        "norm1": norm(b + "norm1"),
        "norm2": norm(b + "norm2"),
        "attn": {
          "qkv": {"kernel": _heads_major(qkv_w, heads).T, "bias": _heads_major(qkv_b, heads)},
          "out": linear(b + "attn.proj"),
        },
        "mlp": {"up": linear(b + "mlp.fc1"), "down": linear(b + "mlp.fc2")},
      }
    )
  if m.scan_layers and blocks:  # scanned layers: one stacked array per parameter
    stack = jax.tree.map(lambda *xs: np.stack(xs) if len({x.shape for x in xs}) == 1 else np.zeros((0,)), *blocks)
  else:
    stack = dict(enumerate(blocks))
  loaded = {
    "patch_embed": {"kernel": kernel, "bias": take("patch_embed.proj.bias")},
    "norm": norm("norm"),
    "blocks": {"blocks": stack},
  }
  unknown = sorted(set(ckpt) - used)
  if unknown:
    raise CheckpointError(
      f"the checkpoint has parameters VideoViT does not (e.g. SwiGLU, qk-norm or a CLS token): {unknown[:12]}"
    )
  if not all(f"blocks.{i}.attn.qkv.bias" in ckpt for i in range(len(blocks))):
    raise CheckpointError("the checkpoint's attention has no qkv bias; VideoViT's has (qkv_bias=True as V-JEPA)")
  abstract = nnx.eval_shape(lambda: vit.VideoViT(m, m.encoder, rngs=nnx.Rngs(0)))
  expected = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  return conform(loaded, expected, "V-JEPA encoder")


def encoder_weights(path: str, model_cfg: ml_collections.ConfigDict, *, key: str | None = None) -> dict:
  """The checkpoint's encoder as `VideoViT` params for an existing model config (init_from: fine-tuning)."""
  sd = select_encoder(read_torch_state(path), key, what=path)
  try:
    return to_worldmodel(sd, model_cfg)
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from e


def read_vjepa_encoder(
  path: str,
  *,
  frames: int | None = None,
  size: int | None = None,
  key: str | None = None,
  heads: int | None = None,
  pos: str | None = None,
  dtype: str = "float32",
  scan_layers: bool = False,
) -> tuple[dict, ml_collections.ConfigDict]:
  """(VideoViT weights as a pure dict, model ConfigDict) for `frames`×`size`² clips. Defaults: V-JEPA's own grid
  (from pos_embed), V-JEPA 2's published 16×256². `pos` overrides the position kind inferred from the checkpoint."""
  sd = select_encoder(read_torch_state(path), key, what=path)
  info = infer_config(sd, heads)
  found = _sincos_kind(sd["pos_embed"].reshape(-1, info["width"])) if info["version"] == "vjepa" else None
  pos = pos or (found[1] if found else None)
  if frames is None or size is None:
    grid = found[0] if found else None
    t, p, _ = info["tubelet"]
    frames = frames or (grid[0] * t if grid else 16)
    size = size or (grid[1] * p if grid else 256)
  m = model_config(info, frames=frames, size=size, pos=pos, dtype=dtype, scan_layers=scan_layers)
  try:
    return to_worldmodel(sd, m), m
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from e


def load_vjepa_encoder(path: str, **kwargs):
  """(VideoViT, its model ConfigDict); keyword arguments as `read_vjepa_encoder`."""
  weights, m = read_vjepa_encoder(path, **kwargs)
  return vit.build(m, weights), m
