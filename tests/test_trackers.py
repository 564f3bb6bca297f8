"""Trackers: the Weights & Biases writer (offline mode: no network, no account) and its config checks."""

import glob
import json
import struct

import pytest
from conftest import experiment_config

from worldmodel import trackers
from worldmodel.config import ConfigError


def wandb_history(workdir) -> list[dict]:
  """The logged rows of WORKDIR's offline W&B run, read from its .wandb file (a LevelDB-style log of protobuf
  records: 7-byte file header, 32 KiB blocks, 7-byte record headers; type 1 = full, 2/3/4 = first/middle/last)."""
  from wandb.proto import wandb_internal_pb2 as pb

  (path,) = glob.glob(f"{workdir}/wandb/offline-run-*/run-*.wandb")
  data, pos, chunks, rows = open(path, "rb").read(), 7, [], []
  buf = b""
  while pos + 7 <= len(data):
    if 32768 - pos % 32768 < 7:  # block trailer padding
      pos += 32768 - pos % 32768
      continue
    _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
    buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
    if kind in (1, 4):
      chunks, buf = chunks + [buf], b""
    if kind == 0 and length == 0:
      break
  for chunk in chunks:
    record = pb.Record()
    record.ParseFromString(chunk)
    if record.WhichOneof("record_type") == "history":
      rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
  return rows


def test_wandb_setting_forms_and_errors():
  config = experiment_config("tokenizer", "tiny")
  assert trackers.wandb_settings(config) is None  # off by default
  config.log.wandb = "team/wm"
  assert trackers.wandb_settings(config) == {"project": "wm", "entity": "team"}
  config.log.wandb = "a/b/c"
  with pytest.raises(ConfigError, match="log.wandb"):
    trackers.wandb_settings(config)
  config.log = {"wandb": {"project": "wm", "tags": ("x",), "mode": "offline"}}  # an experiment file's dict form
  assert trackers.wandb_settings(config)["tags"] == ["x"]
  config.log = {"wandb": {"entity": "team", "colour": "red"}}
  with pytest.raises(ConfigError, match="needs 'project'"):
    trackers.wandb_settings(config)
