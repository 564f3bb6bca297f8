"""Runs that live in a bucket, against a real GCS emulator (fake-gcs-server) on localhost started by the tests."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import gcs_emulator
import jax
import numpy as np
import pytest
from conftest import REPO, cli_env, local_launch_cmd, run_cli

from worldmodel import storage


@pytest.fixture(scope="module", name="gcs")
def _gcs():
  yield from gcs_emulator.running()


def _no_url_folders():
  assert not os.path.exists(os.path.join(REPO, "gs:")), "something wrote a local folder named after a URL"


def test_paths_mirror_and_cached_copy(gcs, tmp_path, monkeypatch):
  monkeypatch.setenv("WORLDMODEL_CACHE", str(tmp_path / "cache"))
  root = gcs.make_bucket("wm-unit")
  assert storage.absolute(root + "/a/") == "gs://wm-unit/a" and storage.is_remote(root)
  assert storage.absolute("rel") == os.path.abspath("rel") and not storage.is_remote("rel")
  storage.check_reachable(root + "/anything")

  m = storage.Mirror(root + "/run")
  with open(os.path.join(m.local, "metrics.jsonl"), "w") as f:
    f.write('{"step": 1}\n')
  os.makedirs(os.path.join(m.local, "tb"))
  open(os.path.join(m.local, "tb", "events"), "wb").write(b"x")
  m.close()
  assert storage.listdir(root + "/run") == ["metrics.jsonl", "tb"]
  again = storage.Mirror(root + "/run", pull=("metrics.jsonl",))  # a resumed run appends to the same file
  assert open(os.path.join(again.local, "metrics.jsonl")).read() == '{"step": 1}\n'

  local = storage.local_copy(root + "/run")
  assert sorted(os.listdir(local)) == ["metrics.jsonl", "tb"] and local.startswith(str(tmp_path / "cache"))
  storage.write_text(root + "/run/new.txt", "changed")  # a changed dataset is downloaded again
  storage.local_copy.cache_clear()
  assert storage.local_copy(root + "/run") != local


def test_missing_bucket_unreachable_endpoint_and_missing_extra(gcs, monkeypatch):
  with pytest.raises(storage.StorageError, match="bucket gs://wm-absent .*does not exist"):
    storage.check_reachable("gs://wm-absent/run")
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")  # nothing listens there
  storage.filesystem("gs://x").clear_instance_cache()
  try:
    with pytest.raises(storage.StorageError, match="gs://wm-unit .*cannot be reached"):
      storage.check_reachable("gs://wm-unit/run", timeout_s=2)
  finally:
    storage.filesystem("gs://x").clear_instance_cache()
  # Without gcsfs installed (its import blocked), the error names the extra to install.
  code = (
    "import sys; sys.modules['gcsfs'] = None\n"
    "from worldmodel import storage\n"
    "try: storage.check_reachable('gs://b/x')\n"
    "except storage.StorageError as e: print(e)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=cli_env())
  assert "pip install 'worldmodel[gcs]'" in out.stdout, out.stdout + out.stderr


def test_train_on_a_missing_bucket_fails_in_one_line_before_compiling(gcs, dataset):
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    "--workdir=gs://wm-no-such-bucket/run",
    f"--config.data.dir={dataset}",
  )
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: bucket gs://wm-no-such-bucket") and "does not exist" in last, last
  assert "compiled" not in r.stdout
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    "--workdir=/tmp/x",
    "--config.data.dir=gs://wm-no-such-bucket/d",
  )
  assert r.returncode == 2 and "error: bucket gs://wm-no-such-bucket" in r.stderr, r.stderr[-2000:]
  _no_url_folders()


def _train_cmd(workdir, data, *extra):
  return [
    sys.executable,
    "-m",
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={workdir}",
    f"--config.data.dir={data}",
    *extra,
  ]


# launch/slurm.sbatch without SLURM: a fake `srun` (a one-task SLURM step environment around the real trainer) and a
# fake `scontrol` (records its arguments) on PATH.
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


def _fake_slurm(tmp_path) -> dict:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
  for name in ("srun", "scontrol"):
    (bin_dir / name).chmod(stat.S_IRWXU)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": REPO}


def _ckpt_steps(run):
  return sorted(int(s) for s in storage.listdir(f"{run}/checkpoints") if s.isdigit())


@pytest.mark.slow
def test_generate_train_requeue_resume_evaluate_in_a_bucket(gcs, tmp_path):
  """generate → train under launch/slurm.sbatch → time-limit signal: checkpoint + requeue → resume (time-based and
  keep-every-N saves, a profiler window, the compile cache) → evaluate; every path in the bucket."""
  # Without the session's shared compilation cache: the run's own cache goes to its bucket workdir.
  env = cli_env(
    {"WORLDMODEL_CACHE": str(tmp_path / "cache"), "JAX_COMPILATION_CACHE_DIR": None, **_fake_slurm(tmp_path)}
  )
  root = gcs.make_bucket("wm-e2e")
  data, run = f"{root}/data/bouncing", f"{root}/runs/tok"
  gen = ["--source=bouncing", f"--out={data}", "--episodes=24", "--frames=8", "--size=64"]
  r = run_cli("worldmodel.data.generate", *gen, env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"-> {data}" in r.stdout and "dataset_info.json" in storage.listdir(data)

  cmd = ["bash", "launch/slurm.sbatch", "experiments/tokenizer.py:tiny", run, f"--config.data.dir={data}"]
  cmd += ["--config.total_steps=100000", "--config.checkpoint.every_steps=100000", "--config.log_every_steps=5"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
  deadline, head = time.time() + 180, []
  for line in proc.stdout:
    head.append(line)
    if line.startswith("step 5/") or time.time() > deadline:
      break
  proc.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit (--signal=B:USR1@120)
  out = "".join(head) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: saved checkpoint at step" in out and "requeueing job 4242" in out, out[-3000:]
  assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
  (start,) = _ckpt_steps(run)
  assert start >= 5

  # The requeued job: same workdir, resumed; saves by the clock at every log step (every 2), keeps the newest one
  # and multiples of 4; traces two steps.
  extra = ["--config.log_every_steps=2", "--config.checkpoint.every_steps=100000", "--config.checkpoint.keep=1"]
  extra += ["--config.checkpoint.keep_every=4", "--config.checkpoint.every_minutes=1e-9"]
  extra += [f"--config.profile.start_step={start + 2}", "--config.profile.num_steps=2"]
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={run}",
    f"--config.data.dir={data}",
    *extra,
    env=env,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from checkpoint step {start}" in r.stdout and "compiled the train step in" in r.stdout
  # Log (and so clock) steps are multiples of log_every_steps whatever step the first job stopped at (odd or even).
  kept = {s for s in range(start, 21) if s % 4 == 0} | {20}
  assert _ckpt_steps(run) == sorted(kept)
  rows = [json.loads(x) for x in storage.read_text(f"{run}/metrics.jsonl").splitlines()]
  first = next(r for r in rows if r["step"] > start)  # a start's first log row carries its compile time
  assert rows[-1]["step"] == 20 and {"compile_s", "params", "flops_per_step", "mfu", "clips_per_s"} <= set(first)
  assert "compile_s" not in rows[-1] and all(r["mfu"] > 0 for r in rows)
  assert any(n.startswith("events.out.tfevents") for n in storage.listdir(f"{run}/tb"))
  assert storage.listdir(f"{run}/compile_cache")
  assert [p for p in storage.filesystem(run).find(f"{run}/profile") if p.endswith(".xplane.pb")]

  r = run_cli("worldmodel.evaluate", f"--workdir={run}", "--split=test", env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(storage.read_text(f"{run}/eval/20/metrics.json"))
  assert np.isfinite(result["psnr"]) and result["media"]
  assert all(p.startswith(f"{run}/eval/20/") and storage.exists(p) for p in result["media"].values())
  _no_url_folders()


@pytest.mark.slow
def test_two_processes_share_one_bucket_workdir(gcs, tmp_path, dataset):
  root = gcs.make_bucket("wm-multi")
  run = f"{root}/runs/two"
  cmd = local_launch_cmd(
    2,
    2,
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={run}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=4",
    "--config.log_every_steps=2",
    "--config.checkpoint.every_steps=100",
    "--config.checkpoint.every_minutes=1e-9",  # process 0's clock decides for both, at every log step
    "--config.checkpoint.keep=2",
  )
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=cli_env())
  assert r.returncode == 0, r.stdout[-3000:]
  assert _ckpt_steps(run) == [2, 4]  # step 2: saved by the clock only
  assert [json.loads(x)["step"] for x in storage.read_text(f"{run}/metrics.jsonl").splitlines()] == [2, 4]
  _no_url_folders()


@pytest.mark.slow
def test_encoder_export_and_workdir_sources_in_a_bucket(gcs, jepa_tiny):
  """`init.source` / `model.encoder_source` / encoder exports accept bucket paths (a workdir copied there)."""
  from worldmodel import encoders

  root = gcs.make_bucket("wm-enc")
  storage.upload(jepa_tiny, f"{root}/jepa")
  local_w, local_m = encoders.read_encoder(jepa_tiny)
  bucket_w, bucket_m = encoders.read_encoder(f"{root}/jepa")
  assert local_m == bucket_m
  assert encoders.export_encoder(f"{root}/jepa", f"{root}/exports/enc") == f"{root}/exports/enc"
  export_w, _ = encoders.read_encoder(f"{root}/exports/enc")
  for tree in (bucket_w, export_w):
    for a, b in zip(jax.tree.leaves(local_w), jax.tree.leaves(tree)):
      np.testing.assert_array_equal(a, b)
  _no_url_folders()
