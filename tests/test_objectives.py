"""The objective contract (worldmodel/objectives/base.py): the registry, and every objective's `batch_spec` (what
ahead-of-time compilation assumes) against the batches its real data pipeline yields."""

import json

import jax.numpy as jnp
import pytest
from conftest import experiment_config, first_batch, tiny_encoder_model

from worldmodel import config as config_lib
from worldmodel import objectives
from worldmodel.data import records


def _config(name: str, variant: str, dataset: str):
  c = experiment_config(name, variant)
  c.data.dir, c.batch_size = dataset, 4
  meta = records.read_meta(dataset)
  if name == "ac":
    c.model.encoder_model = tiny_encoder_model(experiment_config("jepa", "tiny").model.tubelet[0])  # one tubelet
    c.model.update(size=64, action_dim=int(meta["action_dim"]))
  if name == "finetune":
    c.model.encoder_model = tiny_encoder_model(c.model.frames)
    c.model.size, c.model.state_dim = 64, int(meta["state_dim"])
  if name == "wm":
    c.model.action_dim = int(meta["action_dim"])
  return c


def test_registry_names_every_objective_and_rejects_unknown_ones():
  assert objectives.names() == ["ac", "finetune", "jepa", "tokenizer", "wm"]
  for name in objectives.names():
    assert isinstance(objectives.get(name), objectives.Objective) and objectives.get(name).name == name
  with pytest.raises(ValueError, match=r"'objective' is 'nope'; known objectives: \['ac', 'finetune', 'jepa'"):
    objectives.get("nope")


def test_an_objective_missing_a_required_hook_is_refused():
  class Half(objectives.Objective):
    name = "half"

    def create_model(self, config, rngs):
      raise AssertionError

  with pytest.raises(TypeError, match=r"lacks \['batch_spec', 'check_config', 'check_data', 'loss_fn'"):
    objectives.register(Half)
  assert "half" not in objectives.names()


@pytest.mark.parametrize("name", ["tokenizer", "jepa", "ac", "finetune", "wm"])
def test_batch_spec_matches_what_the_pipeline_feeds(name, dataset):
  c = _config(name, "tiny", dataset)
  batch = first_batch(c)
  spec = objectives.get(name).batch_spec(c, None)
  assert set(spec) <= set(batch), (sorted(spec), sorted(batch))
  for k, s in spec.items():
    assert (batch[k].shape, jnp.dtype(batch[k].dtype)) == (s.shape, s.dtype), k


def test_an_old_workdir_config_gets_the_keys_added_since_with_the_values_it_ran_with(tmp_path):
  saved = config_lib.to_dict(experiment_config("ac", "tiny"))
  del saved["init"], saved["optim"]["layer_decay"], saved["eval"]["perceptual"]
  del saved["model"]["residual"], saved["model"]["context_frames"], saved["data"]["features"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  c = config_lib.load_workdir_config(str(tmp_path))
  assert c.model.residual is False and c.model.context_frames == 1  # before the keys existed: no residual, 1 frame
  assert c.init.source == "" and c.optim.layer_decay == 1.0 and c.eval.perceptual == "" and not c.data.features
  assert c.model.loss_exp == saved["model"]["loss_exp"] and c.optim.schedule == "wsd"  # saved keys win


def test_evaluate_options_are_hooks_of_the_objectives_they_apply_to():
  tok, jepa, ac = (experiment_config(n, "tiny") for n in ("tokenizer", "jepa", "ac"))
  with pytest.raises(ValueError, match="--context=2: only action-conditioned runs roll out; this is a 'tokenizer'"):
    objectives.get("tokenizer").configure_eval(tok, context=2)
  with pytest.raises(ValueError, match="--perceptual=lpips: LPIPS / FVD compare pixels; a 'jepa' run"):
    objectives.get("jepa").configure_eval(jepa, perceptual="lpips")
  objectives.get("tokenizer").configure_eval(tok, perceptual="lpips", probes=False)
  objectives.get("jepa").configure_eval(jepa, probes=False)
  assert tok.eval.perceptual == "lpips" and jepa.eval.probes is False
  ac.model.encoder_model, ac.model.action_dim = tiny_encoder_model(2), 2  # as resolve_config leaves them
  objectives.get("ac").configure_eval(ac, context=2)
  assert ac.model.context_frames == 2
  with pytest.raises(ValueError, match="'model.context_frames' \\(4\\) must be in 1..model.frames - 1"):
    objectives.get("ac").configure_eval(ac, context=4)
  assert [n for n in objectives.names() if objectives.get(n).plannable] == ["ac", "wm"]
