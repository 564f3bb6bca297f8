"""Config helpers shared by the entry points: flag parsing with clean errors, validation, workdir config.json.

Experiment configs are Python files in experiments/ with `get_config(arg)` returning an ml_collections.ConfigDict;
`--config=experiments/NAME.py:VARIANT` picks one and `--config.KEY=VALUE` overrides single keys (absl config_flags).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import ml_collections
from absl import flags

# Keys every experiment has (base_config gives the shared ones). Checked before anything is built or compiled.
REQUIRED_KEYS = (
  "seed",
  "total_steps",
  "batch_size",
  "data.dir",
  "log_every_steps",
  "checkpoint.every_steps",
  "checkpoint.keep",
  "mesh.data",
  "mesh.fsdp",
  "mesh.tensor",
  "model.name",
  "objective",
)


class ConfigError(ValueError):
  """A config that cannot run; the message names the key at fault."""


def die(msg: str, code: int = 2):
  """Print a one-line cause (no traceback) and exit non-zero: what every CLI does on bad input."""
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.exit(code)


def flags_parser(argv: Sequence[str]) -> list[str]:
  """absl flags parser for app.run that turns config override mistakes into one clear line instead of a traceback."""
  _config_help(argv)
  try:
    rest = flags.FLAGS(argv)
    quiet_logs()
    _check_config_loaded()
    return rest
  except SystemExit:  # absl exits 1 after printing --help; asking for help is not an error
    if any(a.split("=")[0] in ("--help", "-h", "-?", "--helpfull", "--helpshort") for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    die(_explain(str(e)))
  except AttributeError as e:  # config_flags raises this for --config.unknown_key=...
    key = str(e).strip("\"'")
    bad = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
    die(f"unknown config key {key!r} (from {bad[0] if bad else argv}); see the config file for valid keys")
  except Exception as e:  # noqa: BLE001 - e.g. a config file's get_config raising for an unknown variant
    die(f"could not load the config: {type(e).__name__}: {e}")


def _config_help(argv: Sequence[str]) -> None:
  """--config=FILE:help prints the experiment file's docstring (its variants) and exits 0."""
  for arg in argv:
    if arg.startswith("--config=") and arg.endswith(":help"):
      print_variants(arg[len("--config=") : -len(":help")])
      sys.exit(0)


def print_variants(path: str) -> None:
  import ast

  if not os.path.exists(path):
    die(f"--config: no such file {path}")
  doc = ast.get_docstring(ast.parse(open(path).read())) or f"{path} has no docstring"
  print(doc)


def _check_config_loaded() -> None:
  """config_flags keeps a load failure (missing file, syntax error) in a stand-in value that fails later with an
  unrelated message: report it here, naming the file."""
  for name in ("config",):
    if name in flags.FLAGS and type(flags.FLAGS[name].value).__name__ == "_ErrorConfig":
      error = flags.FLAGS[name].value._error
      path = str(flags.FLAGS[name].config_filename if hasattr(flags.FLAGS[name], "config_filename") else "")
      cause = str(error).splitlines()[-1].strip() if str(error) else type(error).__name__
      if "No such file" in cause:
        found = (
          sorted(f for f in os.listdir("experiments") if f.endswith(".py")) if os.path.isdir("experiments") else []
        )
        hint = f" (experiments/: {', '.join(found)})" if found else ""
        die(f"--config: no such file {path.split(':')[0] or cause}{hint}")
      die(f"--config: could not load {path}: {cause}")


_DTYPES = {
  "float32": ("float32", "f32", "fp32", "float"),
  "bfloat16": ("bfloat16", "bf16"),
  "float16": ("float16", "f16", "fp16", "half"),
}


def canonical_dtype(key: str, value: Any) -> str:
  """'bf16' → 'bfloat16' etc.; anything else is a ConfigError naming the key and the accepted spellings."""
  for name, aliases in _DTYPES.items():
    if isinstance(value, str) and value.lower() in aliases:
      return name
  accepted = "; ".join(f"{n} ({', '.join(a[1:])})" for n, a in _DTYPES.items())
  raise ConfigError(f"config key {key!r} must be a float dtype: {accepted}; got {value!r}")


def canonical_or_auto(key: str, value: Any) -> str:
  """canonical_dtype, or 'auto' (model.dtype only: the host picks, see `auto_dtype`)."""
  return "auto" if isinstance(value, str) and value.lower() == "auto" else canonical_dtype(key, value)


# CPU flags whose bfloat16 dot products XLA:CPU uses (jaxlib 0.10.2 on AMD Zen 4: 2048² bf16 matmul ~2.8× its f32).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def auto_dtype(platform: str, cpu_flags: str | None = None, xla_flags: str | None = None) -> tuple[str, str]:
  """What model.dtype='auto' becomes on `platform`, and why: bfloat16 on GPU / TPU and on CPUs with bfloat16 dot
  instructions (unless XLA_FLAGS caps the ISA below AVX-512), else float32 (bf16 is slower than f32 there)."""
  if platform != "cpu":
    return "bfloat16", f"{platform} computes matmuls in bfloat16 at full rate"
  if cpu_flags is None:
    try:
      cpu_flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
      cpu_flags = ""
  xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  cap = [f for f in xla_flags.split() if f.startswith("--xla_cpu_max_isa=")]
  if cap and not cap[-1].split("=", 1)[1].upper().startswith(("AVX512", "AMX")):
    return "float32", f"XLA_FLAGS caps the CPU ISA ({cap[-1]}): no bfloat16 dot instructions"
  found = [f for f in _BF16_CPU_FLAGS if f in cpu_flags.split()]
  if found:
    return "bfloat16", f"this CPU has {', '.join(found)} (bfloat16 dot instructions)"
  return "float32", f"this CPU has none of {', '.join(_BF16_CPU_FLAGS)}: bfloat16 matmuls are slower than float32"


def compute_dtype(name: str):
  """A model's compute dtype as a jnp dtype; 'auto' (a config built without runtime.build) resolves for jax's
  default backend."""
  import jax
  import jax.numpy as jnp

  return jnp.dtype(auto_dtype(jax.default_backend())[0] if name == "auto" else name)


def resolve_auto_dtypes(node: Any, platform: str, prefix: str = "model") -> list[str]:
  """Replaces every dtype 'auto' under `model` by `auto_dtype(platform)`; returns one line per replaced key."""
  lines = []
  if not isinstance(node, ml_collections.ConfigDict):
    return lines
  for key in list(node.keys()):
    if key == "dtype" and node[key] == "auto":
      node[key], why = auto_dtype(platform)
      lines.append(f"{prefix}.dtype=auto -> {node[key]}: {why}")
    elif key != "dtype":
      lines += resolve_auto_dtypes(node[key], platform, f"{prefix}.{key}")
  return lines


def normalize_dtypes(node: Any, prefix: str = "model") -> None:
  """Every `dtype` key under `model` (encoder_model included) in its canonical spelling."""
  if not isinstance(node, ml_collections.ConfigDict):
    return
  for key in list(node.keys()):
    if key == "dtype":
      node[key] = canonical_or_auto(f"{prefix}.dtype", node[key])
    else:
      normalize_dtypes(node[key], f"{prefix}.{key}")


def quiet_logs() -> None:
  """Keep absl / Orbax / TFDS INFO lines off the console (they flood `plan` between its episode lines); warnings and
  errors still show. --verbosity=0 (or -v 0) on the command line brings INFO back."""
  import logging

  from absl import logging as absl_logging

  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").addFilter(_drop_known_noise)


def _drop_known_noise(record) -> bool:
  return "OpenCV is not installed" not in record.getMessage()  # TFDS decodes PNG / JPEG with PIL instead: fine


def _explain(msg: str) -> str:
  # absl wraps config errors as 'flag --config.batch_size=abc: invalid literal ...': keep the flag visible.
  # config_flags embeds the config file's own traceback: keep only its first line (the flag) and the final error.
  lines = [l for l in msg.splitlines() if l.strip()]
  if any(l.startswith("Traceback") for l in lines):
    lines = [lines[0].split(": Error whilst")[0], lines[-1].strip()]
  return "bad flag: " + ": ".join(lines)


def check_required(config: ml_collections.ConfigDict) -> None:
  for key in REQUIRED_KEYS:
    node: Any = config
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ConfigError(f"config is missing required key {key!r}")
      node = node[part]


def _optional(config: ml_collections.ConfigDict, dotted: str) -> Any:
  try:
    return get(config, dotted)
  except (KeyError, AttributeError):
    return 0


def validate(config: ml_collections.ConfigDict) -> None:
  """Cheap consistency checks that must fail before any compile."""
  check_required(config)
  positive = ["total_steps", "batch_size", "log_every_steps", "checkpoint.every_steps", "checkpoint.keep"]
  for key in positive:
    value = get(config, key)
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f"config key {key!r} must be a positive integer, got {value!r}")
  for key in ("checkpoint.every_minutes", "checkpoint.keep_every", "profile.start_step", "profile.num_steps"):
    value = _optional(config, key)  # optional keys (issue 12), 0 = off
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ConfigError(f"config key {key!r} must be a number >= 0 (0: off), got {value!r}")
  for key in ("mesh.data", "mesh.fsdp", "mesh.tensor"):
    value = get(config, key)
    if not isinstance(value, int) or (value <= 0 and value != -1):
      raise ConfigError(f"config key {key!r} must be a positive integer or -1 (fill), got {value!r}")
  normalize_dtypes(config.get("model"))
  if not config.data.dir:
    raise ConfigError(
      "config key 'data.dir' is empty: pass --config.data.dir=PATH (make a dataset with "
      "python -m worldmodel.data.generate)"
    )


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node: Any = config
  for part in dotted.split("."):
    node = node[part]
  return node


def to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def save_json(config: ml_collections.ConfigDict, workdir: str) -> str:
  from worldmodel import storage

  path = storage.join(workdir, "config.json")
  storage.write_text(path, json.dumps(to_dict(config), indent=2, sort_keys=True))
  return path


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """A workdir's config.json (local or in a bucket), with the keys added since it was written filled in once
  (`with_defaults`)."""
  from worldmodel import storage

  path = storage.join(workdir, "config.json")
  try:
    storage.check_reachable(workdir)
  except storage.StorageError as e:
    raise ConfigError(str(e)) from None
  if not storage.exists(path):
    raise ConfigError(f"{workdir} is not a worldmodel workdir: no config.json in it")
  return ml_collections.ConfigDict(with_defaults(_tuples(json.loads(storage.read_text(path)))))


def with_defaults(saved: dict) -> dict:
  """`saved` with every missing key of `DEFAULTS` (and of its objective's `defaults`) filled in: the values the code
  used before the key existed, so that code reads config keys directly and old workdirs keep their meaning."""
  from worldmodel import objectives

  merged = _merge(DEFAULTS, saved)
  if saved.get("objective") in objectives.names():
    merged = _merge(objectives.get(saved["objective"]).defaults, merged)
  return merged


def _merge(defaults: dict, values: dict) -> dict:
  out = dict(values)
  for k, v in defaults.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict) and isinstance(out[k], dict):
      out[k] = _merge(v, out[k])
  return out


# Keys an older config.json may lack, with the behaviour the code had without them (merged once on load).
DEFAULTS = {
  "data": {"resize": 0, "weights": (), "features": {}, "device_prefetch": 2},
  "model": {"attention": "auto"},
  "init": {"source": "", "key": "", "heads": 0},
  "optim": {"schedule": "cosine", "decay_frac": 0.2, "weight_decay_end": None, "layer_decay": 1.0, "microbatches": 1},
  "eval": {"perceptual": "", "probes": True, "every_steps": 0, "train_split": "val", "train_max_clips": 64},
  "log": {"wandb": ""},
  "checkpoint": {"every_minutes": 0.0, "keep_every": 0},
  "compile_cache_dir": "",
  "profile": {"start_step": 0, "num_steps": 0},
}


def base_config(objective: str, *, num_frames: int, total_steps: int, batch_size: int, log_every_steps: int = 50):
  """What every experiment shares: run length, data, optimizer defaults, warm start, checkpoints, mesh and eval.
  An experiment file adds its `model` block and states only what differs."""
  c = ml_collections.ConfigDict()
  c.objective = objective
  c.seed = 0
  c.total_steps = total_steps
  c.batch_size = batch_size
  c.log_every_steps = log_every_steps
  # data.dir: one dataset, or a comma-separated mixture sampled by data.weights (default: equal).
  # data.features maps our names to a foreign TFDS dataset's features (RLDS: video=steps/observation/image).
  # data.resize: centre-crop + area-resize frames to this size (0: use the dataset's size).
  c.data = dict(
    dir="",
    train_split="train",
    num_frames=num_frames,
    frame_stride=1,
    resize=0,
    weights=(),
    features=dict(video="", action="", state="", reward=""),
    read_threads=2,
    prefetch=4,
    workers=0,
    device_prefetch=2,  # batches copied to the devices ahead of the step (0: synchronous copy)
  )
  # schedule: 'cosine' (warmup + cosine), 'wsd' (warmup, stable, linear decay over the last decay_frac) or
  # 'constant'; weight_decay_end (None: constant) decays the weight decay on a cosine; layer_decay < 1: layer-wise
  # learning rates (fine-tuning).
  c.optim = dict(
    lr=1e-3,
    warmup_steps=100,
    decay_steps=-1,
    final_lr_frac=0.0,
    schedule="cosine",
    decay_frac=0.2,
    weight_decay=0.05,
    weight_decay_end=None,
    b1=0.9,
    b2=0.999,
    grad_clip=1.0,
    layer_decay=1.0,
    microbatches=1,  # gradient accumulation: K micro-batches per step, one update (worldmodel/accumulate.py)
  )
  # Warm start: a worldmodel workdir or a V-JEPA .pt / .safetensors encoder (init_from.py); `key` picks
  # 'target_encoder' (default) or 'encoder' from a V-JEPA training checkpoint.
  # init.heads: a V-JEPA file's attention heads when its width has no published count (0: the published one).
  c.init = dict(source="", key="", heads=0)
  # log.wandb: a Weights & Biases project ("PROJECT" or "ENTITY/PROJECT"; worldmodel/trackers.py); "": off.
  c.log = dict(wandb="")
  # checkpoint.every_minutes: also save at the first log step once this many minutes passed (0: off);
  # keep_every: checkpoints at multiples of this step are kept beyond `keep` (0: off).
  c.checkpoint = dict(every_steps=500, keep=3, async_save=True, every_minutes=0.0, keep_every=0)
  # compile_cache_dir: persistent XLA compilation cache ('': $JAX_COMPILATION_CACHE_DIR if set, else
  # WORKDIR/compile_cache; 'none': off).
  c.compile_cache_dir = ""
  # profile: a jax.profiler trace of steps [start_step, start_step + num_steps) into WORKDIR/profile (0 steps: off).
  c.profile = dict(start_step=0, num_steps=0)
  c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn=dict(data=1, fsdp=1, tensor=1))  # dcn: cross-slice sizes
  # perceptual: tokenizer runs, 'lpips' and / or 'fvd' at evaluation (the [metrics] extra).
  # every_steps > 0: evaluation during training (worldmodel/eval_hook.py) on train_split, at most train_max_clips
  # clips (0: all), every that many steps and at the last.
  c.eval = dict(
    split="test",
    batch_size=16,
    max_clips=0,
    num_media=4,
    perceptual="",
    every_steps=0,
    train_split="val",
    train_max_clips=64,
  )
  return c


def _tuples(d: Any) -> Any:
  # JSON turns tuples into lists; configs use tuples for shapes/levels, so convert back for a faithful rebuild.
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d


# Parts of the config that define the model's parameters: a workdir trained with other values cannot be resumed.
def model_signature(config: ml_collections.ConfigDict | dict) -> dict:
  d = config if isinstance(config, dict) else to_dict(config)

  # The attention kernel and the compute dtype (parameters stay float32) are choices of how to run, not the model.
  def strip(node):
    return {k: strip(v) for k, v in node.items() if k not in ("attention", "dtype")} if isinstance(node, dict) else node

  return {"objective": d.get("objective"), "model": strip(d.get("model") or {})}
