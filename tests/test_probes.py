"""Probes recover state that the features carry, and not state they do not."""

import numpy as np

from worldmodel import probes


def _data(n, rng):
  """Tokens [n, 16, 8]: the object's token (random position) holds its 2-D state; the rest is noise."""
  y = rng.normal(size=(n, 2))
  x = 0.1 * rng.normal(size=(n, 16, 8))
  where = rng.integers(0, 16, n)
  x[np.arange(n), where, :2] += y
  x[np.arange(n), where, 2] += 3.0  # a marker a query can find
  return x.astype(np.float32), y.astype(np.float32)


def test_linear_and_attentive_probes_recover_carried_state_and_not_noise():
  rng = np.random.default_rng(0)
  (xtr, ytr), (xte, yte) = _data(600, rng), _data(200, rng)
  groups = {"pos": [0, 1]}
  lin = probes.r2_by_group(*probes.ridge_probe(xtr.mean(1), ytr, xte.mean(1), yte), groups)
  att = probes.r2_by_group(*probes.attentive_probe(xtr, ytr, xte, yte, steps=300), groups)
  assert lin["pos"] > 0.8 and att["pos"] > 0.7, (lin, att)
  noise = probes.r2_by_group(
    *probes.ridge_probe(rng.normal(size=(600, 8)), ytr, rng.normal(size=(200, 8)), yte), groups
  )
  assert noise["pos"] < 0.1


def test_r2_by_group_pools_dimensions_and_skips_constant_ones():
  y = np.stack([np.arange(10.0), np.arange(10.0) * 100, np.ones(10)], axis=1)
  pred = y + np.array([1.0, 0.0, 5.0])
  r2 = probes.r2_by_group(y, pred, {"a": [0, 1], "c": [2]})
  sst = np.sum(np.square(np.arange(10.0) - 4.5))
  assert np.isclose(r2["a"], 1 - 10.0 / (sst + sst * 1e4)) and "c" not in r2


def test_periodic_state_dimensions_become_sin_and_cos():
  y = np.array([[0.0, 1.0, 2.0], [np.pi / 2, 3.0, 4.0]])
  out, groups = probes.state_targets(y, {"qpos": [0, 1], "qvel": [2]}, [0])
  np.testing.assert_allclose(out, [[1.0, 2.0, 0.0, 1.0], [3.0, 4.0, 1.0, 0.0]], atol=1e-12)
  assert groups == {"qpos": [0, 2, 3], "qvel": [1]}
  # an angle and the same angle one turn later are the same target
  a, _ = probes.state_targets(np.array([[0.3, 0.0, 0.0]]), {}, [0])
  b, _ = probes.state_targets(np.array([[0.3 + 2 * np.pi, 0.0, 0.0]]), {}, [0])
  np.testing.assert_allclose(a, b, atol=1e-12)
