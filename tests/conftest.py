"""Shared fixtures: a small embedded dataset generated once per test session, and the CLI runner."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One XLA compilation cache for the session, set before jax is imported: the pytest workers (started after this
# file is loaded, so they inherit it) and every CLI they start share it, and the many tests that compile the same
# tiny programs (a preset's train step, its evaluator, a probe) load them instead (BUILD_NOTES, "Test suite").
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix="wm-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)


def make_dataset(out: str, episodes: int = 24, frames: int = 16, size: int = 64) -> str:
  from worldmodel.data.sources import bouncing

  return bouncing.write_dataset(out, episodes, frames, size, eval_episodes=max(1, episodes // 8))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
  return make_dataset(str(tmp_path_factory.mktemp("data") / "bouncing"))


def cli_env(extra: dict | None = None) -> dict:
  """The environment CLI subprocesses run in: without XLA_FLAGS, whose device count would override theirs; an
  `extra` value of None unsets that variable."""
  env = {**os.environ, **(extra or {})}
  env.pop("XLA_FLAGS", None)
  return {k: v for k, v in env.items() if v is not None}


def run_cli(module: str, *args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=cli_env(env)
  )


def losses(workdir) -> dict:
  """{step: loss} from a workdir's metrics.jsonl."""
  import json

  rows = map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
  return {r["step"]: r["loss"] for r in rows if "loss" in r}  # in-training evaluation rows carry eval_* keys only


def local_launch_cmd(num_processes: int, devices_per_process: int, module: str, *args: str) -> list[str]:
  """`launch/local.py` running `python -m module args` as N processes x M fake CPU devices (run it with cli_env())."""
  return [
    sys.executable,
    os.path.join(REPO, "launch", "local.py"),
    f"--num_processes={num_processes}",
    f"--devices_per_process={devices_per_process}",
    "--",
    sys.executable,
    "-m",
    module,
    *args,
  ]


def experiment_config(name: str, variant: str):
  """experiments/NAME.py's get_config(variant), loaded from its file like the CLIs do."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f"exp_{name}", os.path.join(REPO, "experiments", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def tiny_encoder_model(frames: int) -> dict:
  """The encoder block (`model.encoder_model`) that a jepa.py:tiny run resolves to, for AC / fine-tune configs that
  need no source."""
  jepa = experiment_config("jepa", "tiny").model
  return dict(
    frames=frames,
    size=jepa.size,
    tubelet=jepa.tubelet,
    pos="sincos",
    dtype="float32",
    remat="none",
    scan_layers=False,
    encoder=jepa.encoder.to_dict(),
  )


@pytest.fixture(scope="session")
def jepa_tiny(tmp_path_factory, dataset) -> str:
  """A 20-step experiments/jepa.py:tiny run on `dataset`, shared by the JEPA, AC and fine-tuning tests (read its
  checkpoints; write elsewhere). Short probe fits keep its evaluation quick."""
  w = tmp_path_factory.mktemp("jepa_tiny") / "jepa"
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/jepa.py:tiny",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=20",
    "--config.eval.probe_steps=150",
    "--config.eval.probe_clips=64",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return str(w)


def first_batch(config) -> dict:
  """Step 0's host batch of `config`'s train pipeline (with its objective's sample transform), as the trainer gets it."""
  from worldmodel import runtime
  from worldmodel.data import pipeline

  data = pipeline.train_dataset(
    config.data,
    seed=0,
    global_batch=config.batch_size,
    start_step=0,
    num_steps=1,
    process_index=0,
    process_count=1,
    transform=runtime.sample_transform(config),
  )
  return next(iter(data))
