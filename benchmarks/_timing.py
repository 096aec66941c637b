"""Interleaved timing: A B A B … in one process, medians of the repeats.

Running the contenders alternately, rather than one after the other, spreads
any change in the machine's load (other jobs on a shared CPU) over all of
them, so their ratio stays meaningful even when the absolute numbers move.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping


def interleave(work: Mapping[str, Callable[[], object]], *, repeats: int,
               warmup: int = 1) -> dict[str, list[float]]:
  """Seconds per call of each ``work[name]()``, called in turn ``repeats`` times.

  Each callable must block until its work is done (``block_until_ready``).
  The ``warmup`` rounds (compilation, allocator and cache warm-up) are not
  recorded.
  """
  for _ in range(warmup):
    for fn in work.values():
      fn()
  times: dict[str, list[float]] = {name: [] for name in work}
  for _ in range(repeats):
    for name, fn in work.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def median(xs: list[float]) -> float:
  return statistics.median(xs)


def spread(xs: list[float]) -> float:
  """Relative spread ``(max − min) / median`` of the repeats."""
  m = statistics.median(xs)
  return (max(xs) - min(xs)) / m if m else float("nan")


def timed(fn: Callable[[], object]) -> float:
  """Seconds of one call of ``fn``."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start
