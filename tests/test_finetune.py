"""Fine-tuning a pretrained encoder: frozen / partial / full modes, layer-wise lr decay, state regression and clip
classification (labels from class folders of real video files), end to end through the train / evaluate CLIs."""

import json

import av
import jax
import numpy as np
import pytest
from conftest import experiment_config, run_cli, tiny_encoder_model

from worldmodel import runtime
from worldmodel.objectives import finetune, finetune_eval


def _config(variant: str):
  """finetune.py:VARIANT with the encoder block a tiny JEPA run would resolve to (no source needed)."""
  c = experiment_config("finetune", variant)
  c.model.encoder_model = tiny_encoder_model(4)
  c.model.size = c.model.encoder_model.size
  c.model.update(state_dim=3, state_mean=[0.0] * 3, state_std=[1.0] * 3)
  return c


@pytest.fixture
def jepa_workdir(jepa_tiny):
  return jepa_tiny


def test_modes_decide_what_trains_and_has_optimizer_state():
  sizes = {}
  for mode in finetune.MODES:
    c = _config(f"tiny,{mode}")
    rt = runtime.build(c)
    params, extra = rt.abstract_state["params"], rt.abstract_state["extra"]
    n = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    sizes[mode] = n(params.get("encoder", {}))
    assert "head" in params and n(params["head"]) > 0
    if mode == "frozen":
      assert "encoder" not in params and n(extra["encoder"]) > 0
    if mode == "partial":  # 1 trainable block of 2: block 1 and the final norm train, the patch embedding does not
      assert set(params["encoder"]) == {"blocks", "norm"} and list(params["encoder"]["blocks"]["blocks"]) == [1]
      assert set(extra["encoder"]) == {"patch_embed", "blocks"}
    # Adam moments exist for trained weights only.
    assert n(rt.abstract_state["opt"]) >= 2 * n(params) and n(rt.abstract_state["opt"]) < 2 * n(params) + 100
  assert sizes["frozen"] == 0 < sizes["partial"] < sizes["full"]


def test_layer_decay_scales_each_block_step():
  c = _config("tiny,full")
  c.optim.layer_decay = 0.5
  depth = c.model.encoder_model.encoder.depth
  rt = runtime.build(c)
  scales = finetune.lr_scales(c, rt.abstract_state["params"])
  assert float(scales["head"]["out"]["kernel"]) == 1.0
  assert float(scales["encoder"]["norm"]["scale"]) == 1.0
  assert float(scales["encoder"]["patch_embed"]["kernel"]) == 0.5 ** (depth + 1)
  assert [float(scales["encoder"]["blocks"]["blocks"][i]["mlp"]["up"]["kernel"]) for i in range(depth)] == [
    0.5 ** (depth - i) for i in range(depth)
  ]
  # The optimizer applies them: one step with equal gradients moves the patch embedding 2^(depth+1)× less.
  state = rt.init_fn()
  grads = jax.tree.map(lambda p: np.ones(p.shape, np.float32), state["params"])
  _, opt = rt.tx.update(grads, rt.tx.init(state["params"]), state["params"])  # step 0 has lr 0 (warmup)
  updates, _ = rt.tx.update(grads, opt, state["params"])
  head = float(np.abs(updates["head"]["out"]["bias"]).max())
  embed = float(np.abs(updates["encoder"]["patch_embed"]["bias"]).max())
  np.testing.assert_allclose(embed / head, 0.5 ** (depth + 1), rtol=1e-4)
  c.model.scan_layers = c.model.encoder_model.scan_layers = True  # scanned: a multiplier per stacked layer
  scanned = finetune.lr_scales(c, runtime.build(c).abstract_state["params"])
  assert scanned["encoder"]["blocks"]["blocks"]["mlp"]["up"]["kernel"].reshape(-1).tolist() == [
    0.5 ** (depth - i) for i in range(depth)
  ]


def test_bad_finetune_configs_are_rejected():
  c = _config("tiny,partial")
  c.model.trainable_blocks = 5
  with pytest.raises(ValueError, match="trainable_blocks"):
    finetune.check_config(c)
  c = _config("tiny,partial")
  c.model.scan_layers = True
  with pytest.raises(ValueError, match="scan_layers"):
    finetune.check_config(c)
  with pytest.raises(ValueError, match="unknown variant"):
    experiment_config("finetune", "tiny,sideways")


def test_classification_metrics():
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
  out = finetune_eval.classification(logits, np.array([0, 1, 1, 1]), ["a", "b"])
  assert out["accuracy"] == 0.75 and out["per_class_accuracy"] == {"a": 1.0, "b": 2 / 3}
  assert out["confusion"] == [[1, 0], [1, 2]]


@pytest.mark.slow
def test_frozen_probe_and_full_finetune_from_a_jepa_run(tmp_path, dataset, jepa_workdir):
  w = tmp_path / "probe"
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/finetune.py:tiny",
    f"--workdir={w}",
    f"--config.data.dir={dataset}",
    f"--config.init.source={jepa_workdir}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "encoder from" in r.stdout and "frozen: 0 of its weights train" in r.stdout
  rows = [json.loads(x) for x in open(w / "metrics.jsonl")]
  assert rows[-1]["loss"] < 0.5 * rows[0]["loss"], (rows[0], rows[-1])
  r = run_cli("worldmodel.evaluate", f"--workdir={w}", "--split=test")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(w / "eval" / "300" / "metrics.json"))
  assert m["r2"]["agent_pos"] > 0.3, m["r2"]  # the agent's position is read from frozen features on held-out clips
  assert (w / "eval" / "300" / "r2.png").exists()
  # full fine-tune with layer-wise decay, starting from the probe run's encoder (a fine-tune workdir as source)
  full = tmp_path / "full"
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/finetune.py:tiny,full",
    f"--workdir={full}",
    f"--config.data.dir={dataset}",
    f"--config.init.source={w}",
    "--config.total_steps=20",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "full: " in r.stdout
  # no source, and a source without an encoder: clear errors
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/finetune.py:tiny",
    f"--workdir={tmp_path / 'x'}",
    f"--config.data.dir={dataset}",
  )
  assert r.returncode != 0 and "init.source" in r.stderr, r.stderr[-2000:]


def _write_clip(path, color, frames: int = 12, size: int = 48, seed: int = 0):
  """A square of one colour moving over a grey floor: the class is the colour."""
  rng = np.random.default_rng(seed)
  x, y = rng.integers(4, size - 16, 2)
  dx, dy = rng.integers(-2, 3, 2)
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mpeg4", rate=8)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for t in range(frames):
      img = np.full((size, size, 3), 90, np.uint8)
      cx, cy = np.clip([x + dx * t, y + dy * t], 0, size - 12)
      img[cy : cy + 12, cx : cx + 12] = color
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


@pytest.mark.slow
def test_clip_classification_from_class_folders(tmp_path, dataset, jepa_workdir):
  for name, color in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
    (tmp_path / "videos" / name).mkdir(parents=True)
    for i in range(10):
      _write_clip(tmp_path / "videos" / name / f"clip{i}.mp4", color, seed=i)
  data = tmp_path / "labelled"
  r = run_cli(
    "worldmodel.data.generate",
    f"--source=video:{tmp_path}/videos/*/*.mp4",
    f"--out={data}",
    "--size=64",
    "--frames=8",
    "--labels=dirname",
    "--test_fraction=0.3",
    "--val_fraction=0",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.load(open(data / "worldmodel.json"))["classes"] == ["blue", "red"]
  w = tmp_path / "cls"
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/finetune.py:tiny,partial,classify",
    f"--workdir={w}",
    f"--config.data.dir={data}",
    f"--config.init.source={jepa_workdir}",
    "--config.total_steps=60",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_cli("worldmodel.evaluate", f"--workdir={w}", "--split=test")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(w / "eval" / "60" / "metrics.json"))
  assert m["accuracy"] >= 0.9 and m["num_clips"] >= 2, m
  # a dataset without labels cannot be used for classification
  r = run_cli(
    "worldmodel.train",
    "--config=experiments/finetune.py:tiny,classify",
    f"--workdir={tmp_path / 'y'}",
    f"--config.data.dir={dataset}",
    f"--config.init.source={jepa_workdir}",
  )
  assert r.returncode != 0 and "--labels=dirname" in r.stderr, r.stderr[-2000:]
