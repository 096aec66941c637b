r"""Compares the trained weights of two workdirs, model by model: ``python -m tools.compare_checkpoints A B``.

  python -m tools.compare_checkpoints runs/one runs/two --atol=5e-5

For each model folder found in both (``experiments.run``'s per-method
folders, or a model folder itself), restores the latest checkpoint of
each and prints the number of arrays, how many are bit-identical, and
the largest absolute difference of any element. Exit status 1 if a model
is missing from B or any difference exceeds ``--atol`` (default 0: bits).
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from absl import app, flags, logging

flags.DEFINE_float("atol", 0.0, "Largest absolute difference allowed.")


def compare(a: str, b: str) -> dict[str, tuple[int, int, float] | None]:
  """Model name -> ``(arrays, bit-identical arrays, max |a - b|)``, or ``None`` where B lacks the model."""
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  ours, theirs = pipeline.model_dirs(a), pipeline.model_dirs(b)
  out: dict[str, tuple[int, int, float] | None] = {}
  for name, folder in ours.items():
    if name not in theirs:
      out[name] = None
      continue
    x, y = (jax.tree.leaves(pipeline.load_trained(d).variables) for d in (folder, theirs[name]))
    pairs = [(np.asarray(p), np.asarray(q)) for p, q in zip(x, y)]
    same = sum(np.array_equal(p, q) for p, q in pairs)
    worst = max(float(np.max(np.abs(p.astype(np.float64) - q))) for p, q in pairs)
    out[name] = (len(pairs), same, worst)
  return out


def main(argv: list[str]) -> int:
  if len(argv) != 3:
    raise app.UsageError("give two workdirs: A B")
  logging.set_verbosity(logging.ERROR)   # orbax logs every restore at INFO
  from crp_jax.runner.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  try:
    found = compare(argv[1], argv[2])
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  bad = False
  for name, r in found.items():
    if r is None:
      print(f"{name}: missing from {argv[2]}")
      bad = True
      continue
    arrays, same, worst = r
    print(f"{name}: {arrays} arrays, {same} bit-identical, max |difference| {worst:.3g}")
    bad |= worst > flags.FLAGS.atol
  return 1 if bad else 0


if __name__ == "__main__":
  app.run(main)
