"""vaeaug.training.sharding.prefetch_to_device: order, values, read-ahead and errors."""

from __future__ import annotations

import numpy as np
import pytest

from vaeaug.training import sharding


def host_batches(n, log=None):
  for i in range(n):
    if log is not None:
      log.append(i)
    yield {
      "image": np.full((2, 3, 3, 3), i, np.uint8),
      "label": np.array([i, i], np.int32),
      "mask": np.array([True, False]),
    }


def test_prefetch_yields_every_batch_in_order_sharded():
  mesh = sharding.make_mesh()
  out = list(sharding.prefetch_to_device(host_batches(5), mesh, size=2, keys=("image", "label")))
  assert len(out) == 5
  for i, batch in enumerate(out):
    assert set(batch) == {"image", "label"}
    assert batch["image"].sharding == sharding.batch_sharding(mesh)
    np.testing.assert_array_equal(batch["image"], np.full((2, 3, 3, 3), i, np.uint8))
    np.testing.assert_array_equal(batch["label"], [i, i])


@pytest.mark.parametrize("size", [1, 2, 3])
def test_prefetch_reads_size_batches_ahead(size):
  mesh = sharding.make_mesh()
  read = []
  iterator = sharding.prefetch_to_device(host_batches(6, read), mesh, size=size)
  first = next(iterator)
  np.testing.assert_array_equal(first["label"], [0, 0])
  assert read == list(range(size))  # batch 0 handed out, batches 1..size-1 already sent
  next(iterator)
  assert read == list(range(size + 1))  # asking for batch 1 sends batch size
  assert len(list(iterator)) == 4 and read == list(range(6))


def test_prefetch_short_and_empty_inputs_and_bad_size():
  mesh = sharding.make_mesh()
  assert len(list(sharding.prefetch_to_device(host_batches(1), mesh, size=4))) == 1
  assert list(sharding.prefetch_to_device(iter([]), mesh)) == []
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="prefetch size"):
      next(sharding.prefetch_to_device(host_batches(2), mesh, size=bad))
