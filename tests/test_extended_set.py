"""The extended training set of Eq. 9: every (i, j) pair once per epoch, keyed order."""

import numpy as np
import pytest

from crp_jax import extended_set
from crp_jax.data import Split
from crp_jax.runner.train import TrainSpec, host_batches


@pytest.mark.parametrize("num_perturbed,include_clean", [(4, True), (4, False), (0, True)])
def test_each_pair_once_per_epoch(num_perturbed, include_clean):
  m = 37
  pairs = extended_set.epoch_pairs(0, 3, m, num_perturbed, include_clean)
  got = sorted(zip(pairs.example_index.tolist(), pairs.draw_id.tolist()))
  low = -1 if include_clean else 0
  want = sorted((i, j) for i in range(m) for j in range(low, num_perturbed))
  assert got == want


def test_order_differs_between_epochs_and_repeats_for_a_seed():
  a0 = extended_set.epoch_pairs(0, 0, 50, 3, True)
  a1 = extended_set.epoch_pairs(0, 1, 50, 3, True)
  b0 = extended_set.epoch_pairs(0, 0, 50, 3, True)
  c0 = extended_set.epoch_pairs(1, 0, 50, 3, True)
  assert not np.array_equal(a0.example_index, a1.example_index)
  np.testing.assert_array_equal(a0.example_index, b0.example_index)
  np.testing.assert_array_equal(a0.draw_id, b0.draw_id)
  assert not np.array_equal(a0.example_index, c0.example_index)


def test_iterate_pairs_is_a_pure_function_of_the_step():
  full = list(extended_set.iterate_pairs(0, 20, 2, True, 8, 0, 20))
  resumed = list(extended_set.iterate_pairs(0, 20, 2, True, 8, 11, 20))
  assert [s for s, _ in full] == list(range(20))
  for (s1, p1), (s2, p2) in zip(full[11:], resumed):
    assert s1 == s2
    np.testing.assert_array_equal(p1.example_index, p2.example_index)
    np.testing.assert_array_equal(p1.draw_id, p2.draw_id)


def test_standard_layout_is_the_clean_set():
  assert extended_set.layout("standard", 10, False) == (0, True)
  assert extended_set.layout("crp", 10, True) == (10, True)
  assert extended_set.layout("variable", 3, False) == (3, False)


def _split(n):
  return Split(images=np.zeros((n, 4, 4, 1), np.uint8), labels=np.zeros(n, np.int32),
               ids=np.arange(n, dtype=np.int32), num_classes=10, image_shape=(4, 4, 1))


@pytest.mark.parametrize("k", [1, 100])
def test_batch_memory_does_not_depend_on_k(k):
  config = TrainSpec(method="crp", num_perturbations=k, batch_size=16)
  _, batch = next(host_batches(_split(64), config, 64, 0, 1))
  assert {key: (v.shape, v.dtype) for key, v in batch.items()} == {
      "image": ((16, 4, 4, 1), np.uint8), "label": ((16,), np.int32),
      "example_id": ((16,), np.int32), "draw_id": ((16,), np.int32)}
  assert sum(v.nbytes for v in batch.values()) == 16 * (16 + 12)
