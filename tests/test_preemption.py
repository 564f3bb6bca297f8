"""Preemption and damaged checkpoints: SIGTERM saves and exits 0; a corrupt newest checkpoint falls back."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, cli_env, local_launch_cmd, run_cli

from worldmodel.checkpoint import read_numpy


def _steps(workdir):
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


def _pid_of(args):
  """The process whose command line holds all of `args` (read from /proc: no procps needed)."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
    except OSError:
      continue
    if all(a in cmdline for a in args):
      return int(pid)
  raise AssertionError(f"no process with {args}")


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_next_step_and_exits_zero(tmp_path, dataset):
  w = tmp_path / "w"
  cmd = [
    sys.executable,
    "-m",
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=100000",
    "--config.checkpoint.every_steps=100000",
    "--config.log_every_steps=5",
  ]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 120
  for line in proc.stdout:  # wait until it is training
    if line.startswith("step 5/") or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, out[-2000:]
  assert "SIGTERM: saved checkpoint at step" in out
  saved = _steps(w)
  assert len(saved) == 1 and saved[0] >= 5


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_one_common_step(tmp_path, dataset):
  # A preemption notice often reaches one host only; a save is collective, so both must pick the same step.
  w = tmp_path / "w"
  cmd = local_launch_cmd(
    2,
    2,
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=100000",
    "--config.checkpoint.every_steps=100000",
    "--config.log_every_steps=5",
  )
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
  deadline = time.time() + 180
  for line in proc.stdout:
    if "step 5/" in line or time.time() > deadline:
      break
  os.kill(_pid_of([f"--workdir={w}", "--process_id=1"]), signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  said = [l for l in out.splitlines() if "SIGTERM: saved checkpoint at step" in l]
  assert len(said) == 2 and {l.split("] ", 1)[1] for l in said} == {said[0].split("] ", 1)[1]}, said
  saved = _steps(w)
  assert len(saved) == 1 and saved[0] >= 5 and f"at step {saved[0]};" in said[0]


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, dataset):
  w = tmp_path / "w"
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=6",
    "--config.checkpoint.every_steps=3",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert _steps(w) == [3, 6]
  damaged = 0
  for root, _, files in os.walk(w / "checkpoints" / "6" / "state"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 1024:
        with open(path, "wb") as f:
          f.write(os.urandom(100))
        damaged += 1
  assert damaged
  r = run_cli("worldmodel.evaluate", f"--workdir={w}", "--split=test")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "corrupt" in r.stdout + r.stderr and "falling back" in r.stdout + r.stderr
  assert (w / "eval" / "3" / "metrics.json").exists()


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_bit_identically(tmp_path, dataset):
  args = [
    "--config=experiments/tokenizer.py:tiny",
    f"--config.data.dir={dataset}",
    "--config.total_steps=40",
    "--config.checkpoint.every_steps=5",
    "--config.seed=9",
  ]
  ref = run_cli("worldmodel.train", f"--workdir={tmp_path / 'ref'}", *args)
  assert ref.returncode == 0, ref.stderr[-2000:]
  w = tmp_path / "killed"
  proc = subprocess.Popen(
    [sys.executable, "-m", "worldmodel.train", f"--workdir={w}", *args],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 120
  while time.time() < deadline and not (os.path.isdir(w / "checkpoints") and _steps(w) and _steps(w)[-1] >= 10):
    time.sleep(0.05)
  proc.kill()  # SIGKILL: no handler runs, an async save may be cut off mid-write
  proc.wait()
  assert _steps(w)[-1] < 40, "the run finished before it was killed"
  again = run_cli("worldmodel.train", f"--workdir={w}", *args)
  assert again.returncode == 0 and "resumed from checkpoint step" in again.stdout, again.stderr[-2000:]
  a = read_numpy(str(tmp_path / "ref" / "checkpoints" / "40" / "state"))
  b = read_numpy(str(w / "checkpoints" / "40" / "state"))
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb] and len(la) > 20  # same leaves, before comparing them pairwise
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=str(path))


@pytest.mark.slow
def test_an_evaluation_due_at_the_preempted_step_runs_once_after_resume(tmp_path, dataset):
  """SIGTERM saves before evaluating; the resumed run evaluates that step first, and no step is evaluated twice."""
  from worldmodel import eval_hook

  w = tmp_path / "w"
  args = [
    sys.executable,
    "-m",
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    "--config.checkpoint.every_steps=100000",
    "--config.log_every_steps=1",
    "--config.eval.every_steps=1",  # every step is due, so the preempted one always is
    "--config.eval.train_max_clips=4",
  ]
  proc = subprocess.Popen(
    [*args, "--config.total_steps=100000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  deadline = time.time() + 120
  for line in proc.stdout:
    if line.startswith("eval val step 3:") or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0 and "SIGTERM: saved checkpoint at step" in out, out[-2000:]
  (saved,) = _steps(w)
  assert [r["step"] for r in eval_hook.read_rows(str(w))] == list(range(1, saved))  # not the preempted step
  r = subprocess.run(
    [*args, f"--config.total_steps={saved + 1}"], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"eval val step {saved}:" in r.stdout
  assert [r["step"] for r in eval_hook.read_rows(str(w))] == list(range(1, saved + 2))
