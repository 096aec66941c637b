"""The extended training set of Eq. 9, as shuffled index pairs.

The paper aggregates ``K·M`` perturbed examples (plus the M clean ones in
its method G) into one set and trains on it as usual. Here an element of
that set is just a pair ``(i, j)``: example ``i`` with draw ``j`` (``j = −1``
is the clean example). An epoch is a permutation of all pairs, keyed by the
seed and the epoch; δ itself is made on the device from the pair, so a batch
costs the same memory for any K.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np



class PairBatch(NamedTuple):
  """Host-side indices of one batch: ``(batch,)`` int32 each."""
  example_index: np.ndarray
  draw_id: np.ndarray


#: How the K draws reach the loss: one pair per row (Eq. 9) or one example per row (Eq. 8).
OBJECTIVES: tuple[str, ...] = ("extended_set", "ball_loss")
#: Methods that train on the M clean examples (one pair per example, draw −1).
CLEAN_SET_METHODS: tuple[str, ...] = ("standard", "pgd_at", "trades")


def layout(method: str, num_perturbations: int, include_clean: bool,
           objective: str = "extended_set") -> tuple[int, bool]:
  """``(perturbed draws per example, clean included)`` of the pairs a training method samples.

  ``standard`` (and adversarial training, ``pgd_at`` and ``trades``, whose
  points are found in the step) is the clean set alone; ``crp`` and
  ``variable`` have K perturbed draws and, optionally, the clean example.
  With the ``ball_loss`` objective the host samples examples (draw −1
  each), and the step expands each into its K draws on the device.
  """
  if method in CLEAN_SET_METHODS or objective == "ball_loss":
    return 0, True
  return num_perturbations, include_clean


def epoch_pairs(seed: int, epoch: int, num_examples: int, num_perturbed: int,
                include_clean: bool) -> PairBatch:
  """All ``M · (K + clean)`` pairs of one epoch, shuffled.

  Pair ``p`` maps to example ``p mod M`` and draw ``⌊p / M⌋``, shifted down
  by one when the clean example is included so that draw −1 is the clean
  one. The order depends only on ``(seed, epoch)``.
  """
  num_draws = num_perturbed + int(include_clean)
  rng = np.random.default_rng([seed, epoch, 0x0E9])
  perm = rng.permutation(num_examples * num_draws)
  example = (perm % num_examples).astype(np.int32)
  draw = (perm // num_examples).astype(np.int32) - np.int32(include_clean)
  return PairBatch(example, draw)


def steps_per_epoch(num_pairs: int, batch_size: int) -> int:
  """Full batches per epoch; the remainder of the shuffled pairs is dropped."""
  return num_pairs // batch_size


def iterate_pairs(seed: int, num_examples: int, num_perturbed: int, include_clean: bool,
                  batch_size: int, start_step: int, num_steps: int) -> Iterator[tuple[int, PairBatch]]:
  """Yields ``(step, pairs)`` for steps ``start_step ≤ step < num_steps``.

  The batch of a step is a pure function of the step, so a run resumed at
  any step sees exactly the batches it would have seen.
  """
  num_pairs = num_examples * (num_perturbed + int(include_clean))
  spe = steps_per_epoch(num_pairs, batch_size)
  if spe < 1:
    raise ValueError(f"batch_size {batch_size} exceeds the {num_pairs} pairs of an epoch")
  epoch, pairs = -1, None
  for step in range(start_step, num_steps):
    e, pos = divmod(step, spe)
    if e != epoch:
      epoch, pairs = e, epoch_pairs(seed, e, num_examples, num_perturbed, include_clean)
    sl = slice(pos * batch_size, (pos + 1) * batch_size)
    yield step, PairBatch(pairs.example_index[sl], pairs.draw_id[sl])
