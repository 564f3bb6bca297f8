"""Device prefetch keeps the order, ends cleanly, and raises the reader's error (cause chain intact) in the caller."""

import numpy as np
import pytest

from worldmodel.data import prefetch, records
from worldmodel.parallel import mesh as mesh_lib


def _mesh():
  return mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})


@pytest.mark.parametrize("depth", [0, 2])
def test_prefetch_keeps_order_and_ends(depth):
  host = ({"x": np.full((2, 3), i, np.float32)} for i in range(5))
  got = [int(np.asarray(b["x"])[0, 0]) for b in prefetch.to_device(host, _mesh(), depth)]
  assert got == [0, 1, 2, 3, 4]


def test_reader_errors_surface_in_the_training_thread():
  def host():
    yield {"x": np.zeros((2,), np.float32)}
    try:
      raise records.DatasetError("episode 3 could not be read")
    except records.DatasetError as e:
      raise RuntimeError("grain wrapper") from e

  it = prefetch.to_device(host(), _mesh(), 2)
  next(it)
  with pytest.raises(RuntimeError) as info:
    next(it)
  assert isinstance(info.value.__cause__, records.DatasetError)
