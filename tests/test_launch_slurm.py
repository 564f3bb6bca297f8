"""launch/slurm.sbatch without SLURM: a fake `srun` (sets a one-task SLURM step environment and runs the real
trainer) and a fake `scontrol` (records its arguments) on PATH. USR1 (SLURM's time-limit warning) must checkpoint
the run and requeue the job."""

import os
import signal
import stat
import subprocess
import time

import pytest
from conftest import REPO, cli_env

FAKE_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done  # srun's own options
export SLURM_STEP_NODELIST=localhost SLURM_NTASKS=1 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_STEP_NUM_NODES=1
"$@" &
child=$!
trap 'kill -TERM $child' TERM  # srun forwards SIGTERM to its tasks
wait $child; wait $child
"""


def test_sbatch_script_parses():
  assert subprocess.run(["bash", "-n", os.path.join(REPO, "launch", "slurm.sbatch")]).returncode == 0


@pytest.mark.slow
def test_time_limit_signal_checkpoints_and_requeues(tmp_path, dataset):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
  for name in ("srun", "scontrol"):
    (bin_dir / name).chmod(stat.S_IRWXU)
  env = cli_env({"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": REPO})
  w = tmp_path / "w"
  cmd = ["bash", "launch/slurm.sbatch", "experiments/tokenizer.py:tiny", str(w), f"--config.data.dir={dataset}"]
  cmd += ["--config.total_steps=100000", "--config.checkpoint.every_steps=100000", "--config.log_every_steps=5"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline, head = time.time() + 180, []
  for line in proc.stdout:
    head.append(line)
    if line.startswith("step 5/") or time.time() > deadline:
      break
  proc.send_signal(signal.SIGUSR1)
  out = "".join(head) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: saved checkpoint at step" in out and "requeueing job 4242" in out, out[-3000:]
  assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
  assert [p for p in os.listdir(w / "checkpoints") if p.isdigit()]
