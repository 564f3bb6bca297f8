"""The Python API (worldmodel/api.py) and the quickstart notebook that walks through it."""

import json
import os

import nbformat
import numpy as np
import pytest
from conftest import REPO
from nbclient import NotebookClient

import worldmodel as wm
from worldmodel.checkpoint import CheckpointError
from worldmodel.config import ConfigError


@pytest.mark.slow
def test_quickstart_notebook_runs_data_train_evaluate_pictures(tmp_path, monkeypatch):
  monkeypatch.setenv("WM_NOTEBOOK_RUNS", str(tmp_path))
  monkeypatch.setenv("WM_NOTEBOOK_STEPS", "10")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = nbformat.read(os.path.join(REPO, "experiments", "quickstart.ipynb"), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  images = [
    o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/gif" in o.get("data", {})
  ]
  assert "in-training evaluations: [(5," in text and "-> codes (4, 4, 64) int32" in text, text[-2000:]
  assert images and (tmp_path / "tokenizer" / "eval" / "10" / "metrics.json").exists()

  # The tokenizer the notebook trained: its codes decode to what the model's own forward pass reconstructs.
  tok = wm.load_tokenizer(str(tmp_path / "tokenizer"))
  clips = np.random.default_rng(0).integers(0, 256, (2, *tok.clip_shape), dtype=np.uint8)
  codes = tok.encode(clips)
  assert codes.shape == (2, 4, 64) and 0 <= codes.min() and codes.max() < tok.num_codes
  forward = np.asarray(tok.model(clips / 255.0).recon_BTHWC)
  expect = np.round(np.clip((forward + 1) / 2, 0, 1) * 255)
  assert np.abs(tok.decode(codes).astype(float) - expect).max() <= 1
  with pytest.raises(ValueError, match="want uint8 clips"):
    tok.encode(clips[:, :2])


def test_api_errors_are_clear(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"objective": "jepa"}))
  with pytest.raises(CheckpointError, match="load_tokenizer needs a tokenizer workdir"):
    wm.load_tokenizer(str(tmp_path))
  with pytest.raises(ConfigError, match="unknown config key 'data.nope'"):
    wm.load_config(os.path.join(REPO, "experiments/tokenizer.py:tiny"), **{"data.nope": 1})
  assert wm.load_config(os.path.join(REPO, "experiments/tokenizer.py:tiny"), batch_size=4).batch_size == 4
  assert callable(wm.train) and callable(wm.evaluate)
