r"""Compares the numbers of two ``results.json`` files: every accuracy, count and check, not timings.

  python -m tools.compare_results BEFORE/results.json AFTER/results.json

Prints one line per number that differs or is missing from AFTER, then
``identical: N numbers`` when none does (fields only AFTER has are counted,
not compared); exit status 1 on any difference.
A refactor must change no number (the default run's ``results.json``
before and after).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import app

#: Leaves that legitimately differ between two runs of the same config.
VOLATILE = ("seconds", "command", "versions", "steps_per_sec")


def numbers(tree: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a.b.c": leaf}`` for every accuracy, count and check under ``evaluation`` and ``training.steps``."""
  out: dict[str, Any] = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      if k not in VOLATILE:
        out.update(numbers(v, f"{prefix}{k}."))
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      out.update(numbers(v, f"{prefix}{i}."))
  else:
    out[prefix.rstrip(".")] = tree
  return out


def _evaluated(result: dict[str, Any]) -> dict[str, Any]:
  """The per-model records of a results file (one model, or a comparison of several)."""
  models = result if "evaluation" not in result else {"": result}
  return {f"{name}." if name else "": {"evaluation": r["evaluation"], "steps": r["training"]["steps"]}
          for name, r in models.items()}


def diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[str], int, int]:
  """Lines for every number of ``before`` that ``after`` changes or lacks; shared and added counts."""
  a = {p + k: v for p, r in _evaluated(before).items() for k, v in numbers(r).items()}
  b = {p + k: v for p, r in _evaluated(after).items() for k, v in numbers(r).items()}
  lines = [f"{k}: {a[k]!r} -> {b.get(k, '<absent>')!r}" for k in sorted(a) if b.get(k, "<absent>") != a[k]]
  return lines, len(set(a) & set(b)), len(set(b) - set(a))


def main(argv: list[str]) -> int:
  if len(argv) != 3:
    raise app.UsageError("give two results.json files: BEFORE AFTER")
  try:
    before, after = (json.load(open(p, encoding="utf-8")) for p in argv[1:])
  except (OSError, ValueError) as e:
    print(f"error: cannot read results: {e}", file=sys.stderr)
    return 2
  lines, shared, added = diff(before, after)
  print("\n".join(lines) if lines else f"identical: {shared} numbers ({added} fields only in AFTER)")
  return 1 if lines else 0


if __name__ == "__main__":
  app.run(main)
