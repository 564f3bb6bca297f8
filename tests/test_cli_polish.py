"""CLI behaviour a newcomer meets first: config help and printing, dtype aliases, clear one-line errors (exit 2)."""

import jax.numpy as jnp
import ml_collections
import pytest
from conftest import run_cli

from worldmodel import checkpoint as ckpt_lib


def test_config_help_print_config_and_dtype_aliases():
  r = run_cli("worldmodel.train", "--config=experiments/jepa.py:help")
  assert r.returncode == 0 and "Variants:" in r.stdout and "tiny" in r.stdout, r.stderr[-2000:]
  r = run_cli(
    "worldmodel.train", "--config=experiments/tokenizer.py:tiny", "--print_config", "--config.model.dtype=bf16"
  )
  assert r.returncode == 0 and "dtype: bfloat16" in r.stdout and "every_steps" in r.stdout, r.stderr[-2000:]
  r = run_cli(
    "worldmodel.train", "--config=experiments/tokenizer.py:tiny", "--print_config", "--config.model.dtype=int8"
  )
  assert r.returncode == 2 and "config key 'model.dtype' must be a float dtype" in r.stderr and "bf16" in r.stderr
  r = run_cli("worldmodel.train", "--config=experiments/nope.py:tiny", "--workdir=/tmp/unused")
  assert r.returncode == 2 and "no such file experiments/nope.py" in r.stderr and "config_config" not in r.stderr
  assert "Traceback" not in r.stderr
  r = run_cli("worldmodel.train", "--help")
  assert r.returncode == 0 and "--coordinator_address" in r.stdout and "--print_config" in r.stdout


def test_plan_flags_are_named_apart_and_bad_flags_exit_2():
  r = run_cli("worldmodel.plan", "--workdir=/tmp/unused", "--steps=3")
  assert r.returncode == 2 and "renamed --env_steps" in r.stderr, r.stderr[-2000:]
  r = run_cli("worldmodel.plan", "--workdir=/tmp/unused", "--no_such_flag=1")
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_a_missing_step_lists_the_available_ones(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=3, async_save=False)
  for step in (2, 4):
    ckpt.save(step, {"w": jnp.ones(3) * step}, {"next_step": step}, {"objective": "tokenizer"}, force=True)
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint at step 3 .*available steps: 2, 4"):
    ckpt.restore({"w": jnp.zeros(3)}, 3)
  ckpt.close()


def test_gif_captions_sit_over_their_panels(tmp_path):
  import imageio.v3 as iio
  import numpy as np

  from worldmodel import media

  video = media.side_by_side([np.zeros((3, 16, 16, 3), np.uint8), np.zeros((3, 16, 16, 3), np.uint8)])
  frames = iio.imread(media.write_gif(tmp_path / "c.gif", video, scale=3, captions=["truth", "recon"]))
  assert frames.shape[1:3] == (16 * 3 + 14, 18 * 2 * 3)
  strip = frames[0, :14].min(-1)
  half = strip.shape[1] // 2
  assert (strip[:, :half] < 128).any() and (strip[:, half:] < 128).any()  # dark text over each panel
  assert (frames[0, 14:, : 16 * 3] < 10).all()  # the video itself is untouched


def test_auto_dtype_follows_the_host_and_is_not_part_of_the_model():
  from worldmodel import config as config_lib

  auto = config_lib.auto_dtype
  assert auto("gpu")[0] == auto("tpu")[0] == "bfloat16"
  assert auto("cpu", cpu_flags="fpu avx2 avx512f", xla_flags="")[0] == "float32"  # AVX-512 without BF16
  assert auto("cpu", cpu_flags="avx2 avx512f avx512_bf16", xla_flags="") == (
    "bfloat16",
    "this CPU has avx512_bf16 (bfloat16 dot instructions)",
  )
  capped = auto("cpu", cpu_flags="avx512_bf16 amx_bf16", xla_flags="--xla_cpu_max_isa=AVX2")
  assert capped[0] == "float32" and "xla_cpu_max_isa=AVX2" in capped[1]
  model = ml_collections.ConfigDict({"dtype": "AUTO", "encoder_model": {"dtype": "bf16"}, "width": 8})
  config_lib.normalize_dtypes(model)
  assert model.dtype == "auto" and model.encoder_model.dtype == "bfloat16"
  lines = config_lib.resolve_auto_dtypes(model, "tpu")
  assert model.dtype == "bfloat16" and lines == [
    "model.dtype=auto -> bfloat16: tpu computes matmuls in bfloat16 at full rate"
  ]
  # A run resumed with another compute dtype is the same model (parameters are float32 either way).
  sig = config_lib.model_signature
  assert sig({"model": {"dtype": "float32", "width": 8}}) == sig({"model": {"dtype": "bfloat16", "width": 8}})
  assert sig({"model": {"width": 8}}) != sig({"model": {"width": 16}})
