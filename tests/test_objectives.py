"""The objective contract (worldmodel/objectives/base.py): the registry, and every objective's `batch_spec` (what
ahead-of-time compilation assumes) against the batches its real data pipeline yields."""

import json
import os

import jax.numpy as jnp
import pytest
from conftest import REPO, experiment_config, first_batch, tiny_encoder_model

from worldmodel import config as config_lib
from worldmodel import objectives

OBJECTIVE_FILES = sorted(
  f[:-3]
  for f in os.listdir(os.path.join(REPO, "worldmodel", "objectives"))
  if f.endswith(".py") and not f.startswith("_") and f != "base.py" and not f.endswith("_eval.py")
)


def _config(name: str, variant: str, dataset: str, encoder_source: str):
  """experiments/NAME.py:VARIANT on `dataset`, completed by the objective's own resolve_config (what train does),
  with any pretrained encoder it needs taken from a real JEPA run."""
  c = experiment_config(name, variant)
  c.data.dir, c.batch_size = dataset, 4
  if "encoder_source" in c.model:
    c.model.encoder_source = encoder_source
  if objectives.get(name).loads_init_source:
    c.init.source = encoder_source
  objectives.get(name).resolve_config(c)
  return c


def test_registry_names_every_objective_and_rejects_unknown_ones():
  assert objectives.names() == OBJECTIVE_FILES  # every objectives/NAME.py registers itself as NAME
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


@pytest.mark.parametrize("name", OBJECTIVE_FILES)
def test_batch_spec_matches_what_the_pipeline_feeds(name, dataset, jepa_tiny):
  c = _config(name, "tiny", dataset, jepa_tiny)
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
  plannable = [n for n in objectives.names() if objectives.get(n).plannable]
  assert "ac" in plannable and not {"tokenizer", "jepa", "finetune"} & set(plannable)
