"""RLDS datasets as published (TFDS TFRecord shards, PNG / JPEG image features): inspect, train, evaluate.

The dataset is written by TFDS itself (TensorFlow, the `rlds` extra) in a subprocess: python tests/test_rlds.py OUT.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, cli_env, run_cli

SIZE, STEPS = 64, 8
FEATURES = {
  "video": "steps/observation/image",
  "action": "steps/action",
  "state": "steps/observation/state",
  "reward": "steps/reward",
}


def build(out: str) -> str:
  import tensorflow_datasets as tfds

  class RldsToy(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      step = {
        "observation": {
          "image": tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="png"),
          "wrist_image": tfds.features.Image(shape=(SIZE // 2, SIZE // 2, 3), encoding_format="jpeg"),
          "state": tfds.features.Tensor(shape=(2,), dtype=np.float32),
        },
        "action": tfds.features.Tensor(shape=(2,), dtype=np.float32),
        "reward": tfds.features.Scalar(dtype=np.float32),
        "is_first": np.bool_,
        "is_last": np.bool_,
      }
      features = {"steps": tfds.features.Dataset(step), "episode_metadata": {"file_path": tfds.features.Text()}}
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 6), "val": self._generate_examples(6, 8)}

    def _generate_examples(self, lo, hi):
      for e in range(lo, hi):
        yield f"episode_{e}", {"steps": _episode(e), "episode_metadata": {"file_path": f"episode_{e}"}}

  builder = RldsToy(data_dir=out, file_format="tfrecord")
  builder.download_and_prepare()
  return str(builder.data_dir)


def _episode(e: int) -> list[dict]:
  """A square moving by its action on a grey background; state = its position."""
  rng = np.random.default_rng(e)
  pos, steps = rng.uniform(8, SIZE - 16, 2), []
  for t in range(STEPS):
    action = rng.uniform(-4, 4, 2).astype(np.float32)
    image = np.full((SIZE, SIZE, 3), 60, np.uint8)
    y, x = pos.astype(int)
    image[y : y + 8, x : x + 8] = (230, 120, 40)
    steps.append(
      {
        "observation": {"image": image, "wrist_image": image[::2, ::2].copy(), "state": pos.astype(np.float32)},
        "action": action,
        "reward": np.float32(-np.linalg.norm(pos - SIZE / 2)),
        "is_first": t == 0,
        "is_last": t == STEPS - 1,
      }
    )
    pos = np.clip(pos + action, 0, SIZE - 8)
  return steps


@pytest.mark.slow
def test_rlds_tfrecord_dataset_inspects_trains_and_evaluates(tmp_path):
  # Looked up, not imported: TensorFlow loaded into this process beside jax and torch crashes it (SIGSEGV at import).
  if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("writing TFRecord datasets with TFDS needs the [rlds] extra (make test installs it)")
  r = subprocess.run(
    [sys.executable, __file__, str(tmp_path / "tfds")], capture_output=True, text=True, timeout=300, env=cli_env()
  )
  assert r.returncode == 0, r.stderr[-3000:]
  data = r.stdout.strip().splitlines()[-1]
  assert any(f.startswith("rlds_toy-train.tfrecord") for f in os.listdir(data))

  from worldmodel.data import records  # random access, decoded PNG / JPEG, steps stacked over time

  episode = records.open_split(data, "val", None)[1]
  assert episode["steps/observation/image"].shape == (STEPS, SIZE, SIZE, 3)
  assert episode["steps/observation/wrist_image"].shape == (STEPS, SIZE // 2, SIZE // 2, 3)
  name = episode["episode_metadata/file_path"]  # TFDS shuffles episodes; Text features stay whole
  e = int(np.asarray(name).item().decode().split("_")[1])
  np.testing.assert_array_equal(episode["steps/observation/image"][3], _episode(e)[3]["observation"]["image"])  # PNG

  r = run_cli("worldmodel.data.inspect", data, f"--gif={tmp_path / 'episodes.gif'}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "train 6, val 2" in r.stdout and "action: dim 2" in r.stdout and "state: dim 2" in r.stdout
  assert " ".join(f"--config.data.features.{k}={v}" for k, v in FEATURES.items()) in r.stdout
  assert (tmp_path / "episodes.gif").stat().st_size > 1000

  work, mapping = tmp_path / "tok", [f"--config.data.features.{k}={v}" for k, v in FEATURES.items()]
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/tokenizer.py:tiny",
    f"--workdir={work}",
    f"--config.data.dir={data}",
    *mapping,
    "--config.total_steps=4",
    "--config.log_every_steps=2",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_cli("worldmodel.evaluate", f"--workdir={work}", "--split=val", "--max_clips=4")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(work / "eval" / "4" / "metrics.json"))
  assert m["num_clips"] == 4 and np.isfinite(m["psnr"]) and m["split"] == "val"


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  print(build(sys.argv[1]))
