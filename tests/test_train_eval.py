"""End to end: train → checkpoint → resume → evaluate, through the public CLIs and the trainer API."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, losses, make_dataset, run_cli
from test_trackers import wandb_history

from worldmodel import eval_hook
from worldmodel.checkpoint import read_numpy

TINY = "experiments/tokenizer.py:tiny"


def _train(workdir, data, *extra, timeout=300):
  return run_cli(
    "worldmodel.train", f"--config={TINY}", f"--workdir={workdir}", f"--config.data.dir={data}", *extra, timeout=timeout
  )


def _leaves(workdir, step):
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_leaves_with_path(
      read_numpy(os.path.join(workdir, "checkpoints", str(step), "state"))
    )
  }


@pytest.mark.slow
def test_train_resume_is_bit_exact_and_evaluate_writes_results(tmp_path, dataset):
  a, b = tmp_path / "a", tmp_path / "b"
  evals = ("--config.eval.every_steps=5", "--config.eval.train_max_clips=8")  # in-training evaluation on val
  common = ("--config.total_steps=20", "--config.log_every_steps=1", "--config.checkpoint.every_steps=10", *evals)
  r = _train(a, dataset, *common)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "step 20/20" in r.stdout and "steps/s" in r.stdout and "ETA" in r.stdout
  assert "eval val step 5:" in r.stdout
  r = _train(
    b, dataset, "--config.total_steps=10", "--config.log_every_steps=1", "--config.checkpoint.every_steps=10", *evals
  )
  assert r.returncode == 0, r.stderr[-3000:]
  r = _train(b, dataset, *common)  # the same command again resumes
  assert r.returncode == 0 and "resumed from checkpoint step 10" in r.stdout, r.stdout + r.stderr[-3000:]

  la, lb = _leaves(a, 20), _leaves(b, 20)
  assert la.keys() == lb.keys() and len(la) > 20
  for k in la:
    np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
  losses_a, losses_b = losses(a), losses(b)
  # Evaluations ran at 5, 10, 15, 20 in both runs: the resumed one neither repeated 10 nor skipped one.
  rows_a, rows_b = eval_hook.read_rows(str(a)), eval_hook.read_rows(str(b))
  assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [5, 10, 15, 20]
  assert rows_a[-1]["psnr"] == rows_b[-1]["psnr"]  # bit-exact resume: the same numbers
  assert json.load(open(a / "eval" / "train_val" / "20" / "metrics.json"))["num_clips"] == 8
  assert [losses_a[s] for s in range(11, 21)] == [losses_b[s] for s in range(11, 21)]
  assert losses_a[20] < losses_a[1]  # it learns

  for path in ("config.json", "metrics.jsonl"):
    assert (a / path).exists()
  assert any((a / "tb").iterdir())

  r = run_cli("worldmodel.evaluate", f"--workdir={a}", "--split=test")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(a / "eval" / "20" / "metrics.json"))
  for key in ("psnr", "ssim", "mse", "codebook_usage", "perplexity", "bits_per_pixel"):
    assert np.isfinite(m[key]), key
  assert 0 < m["codebook_usage"] <= 1 and m["num_clips"] == 3 * 4  # 3 test episodes x 4 windows of 4 frames
  assert len(m["psnr_per_frame"]) == 4
  assert (a / "eval" / "20" / "truth_vs_recon.gif").stat().st_size > 1000

  r = run_cli("worldmodel.evaluate", f"--workdir={a}", "--all_steps", "--max_clips=8")
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(a / "eval" / "all_steps" / "metrics.json"))
  assert summary["steps"] == [10, 20] and len(summary["metrics"]["psnr"]) == 2
  assert summary["constant"]["num_clips"] == 8 and not (a / "eval" / "all_steps" / "num_clips.png").exists()
  assert (a / "eval" / "all_steps" / "psnr.png").stat().st_size > 1000 and (a / "eval" / "10" / "metrics.json").exists()
  assert (a / "eval" / "20" / "psnr_per_frame.png").read_bytes()[:4] == b"\x89PNG"
  assert "psnr" in r.stdout


@pytest.mark.slow
def test_vq_tokenizer_trains_on_a_data_parallel_mesh(tmp_path, dataset):
  r = run_cli(
    "worldmodel.train",
    f"--config={TINY},vq",
    f"--workdir={tmp_path / 'w'}",
    f"--config.data.dir={dataset}",
    "--config.total_steps=6",
    "--config.log_every_steps=3",
    "--cpu_devices=4",
    "--config.mesh.fsdp=2",
    "--config.log.wandb=wm-test",  # Weights & Biases, offline: the rows land in WORKDIR/wandb/
    env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "data=2 × fsdp=2 × tensor=1 (4 devices" in r.stdout
  rows = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  assert "vq/commit_loss" in rows[-1] and np.isfinite(rows[-1]["loss"])
  logged = wandb_history(tmp_path / "w")
  assert [r["_step"] for r in logged] == [3, 6] and logged[-1]["loss"] == pytest.approx(rows[-1]["loss"])


def test_bad_configs_fail_fast_naming_the_cause(tmp_path, dataset):
  cases = {
    "no_such_key": ("--config.no_such_key=1",),
    "batch_size": ("--config.batch_size=abc",),
    str(tmp_path / "nowhere"): (f"--config.data.dir={tmp_path / 'nowhere'}",),
    "nosuchvariant": ("--config=experiments/tokenizer.py:nosuchvariant",),
    "total_steps": ("--config.total_steps=0",),
    "model.quantizer.levels": ("--config.model.quantizer.levels=abc",),
  }
  for word, args in cases.items():
    r = _train(tmp_path / "w", dataset, *args, timeout=60)
    assert r.returncode != 0, word
    assert word in r.stderr + r.stdout, (word, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, (word, r.stderr[-2000:])
  assert not (tmp_path / "w").exists()  # nothing created for a bad config


def test_frames_of_the_wrong_size_are_rejected(tmp_path):
  data = make_dataset(str(tmp_path / "d16"), episodes=8, frames=8, size=16)
  r = _train(tmp_path / "w", data)
  assert r.returncode != 0 and "16x16" in r.stderr and "model.size" in r.stderr, r.stderr[-2000:]


def test_empty_dataset_dir_is_a_clear_error(tmp_path):
  (tmp_path / "empty").mkdir()
  r = _train(tmp_path / "w", tmp_path / "empty")
  assert r.returncode != 0 and str(tmp_path / "empty") in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_workdir_of_another_model_is_refused_and_kept(tmp_path, dataset):
  w = tmp_path / "w"
  assert _train(w, dataset, "--config.total_steps=2").returncode == 0
  before = sorted(os.listdir(w / "checkpoints")), (w / "config.json").read_text()
  r = _train(w, dataset, "--config.total_steps=4", "--config.model.width=64")
  assert r.returncode != 0 and "different model" in r.stderr and "model.width" in r.stderr, r.stderr[-2000:]
  assert (sorted(os.listdir(w / "checkpoints")), (w / "config.json").read_text()) == before


def test_cli_modules_import_side_by_side():
  # A script may evaluate, plan and generate in one process: the CLIs' flags (--workdir, --episodes, ...) are
  # defined only when a module runs as the program, so importing several must not clash.
  code = (
    "import worldmodel, worldmodel.encoders, worldmodel.evaluate, worldmodel.plan, worldmodel.train, "
    "worldmodel.bench, worldmodel.aot, worldmodel.data.generate; print('ok')"
  )
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_eval_hook_runs_an_evaluation_a_preempted_save_did_not_cover():
  from conftest import experiment_config

  config = experiment_config("tokenizer", "tiny")
  config.eval.every_steps, config.total_steps = 5, 23
  hook = eval_hook.EvalHook(config, "/nonexistent")
  assert [s for s in range(24) if hook.due(s)] == [5, 10, 15, 20, 23]
  assert hook.resumed(10, {"eval_step": 5})  # saved on SIGTERM before evaluating step 10
  assert not hook.resumed(10, {"eval_step": 10}) and not hook.resumed(12, {"eval_step": 10})
  assert hook.resumed(10, {}) and hook.done_step == -1  # a checkpoint from before in-training evaluation
  config.eval.every_steps = -1
  with pytest.raises(ValueError, match="eval.every_steps"):
    eval_hook.EvalHook(config, "/nonexistent")
