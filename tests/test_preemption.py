"""Preemption and damaged checkpoints: SIGTERM saves and exits 0; a corrupt newest checkpoint falls back."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli


def _steps(workdir):
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_next_step_and_exits_zero(tmp_path, dataset):
  w = tmp_path / "w"
  cmd = [sys.executable, "-m", "worldmodel.train", "--config=experiments/tokenizer.py:tiny", f"--workdir={w}",
         f"--config.data.dir={dataset}", "--config.total_steps=100000", "--config.checkpoint.every_steps=100000",
         "--config.log_every_steps=5"]
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
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, dataset):
  w = tmp_path / "w"
  r = run_cli("worldmodel.train", "--config=experiments/tokenizer.py:tiny", f"--workdir={w}",
              f"--config.data.dir={dataset}", "--config.total_steps=6", "--config.checkpoint.every_steps=3")
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
