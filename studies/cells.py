"""Table cells over perturbation sets: mean ± std, best of five, and the paper-style markdown tables.

The paper (§4) trains every setting five times, each with a new
perturbation set and a new initialisation (here: seeds 0–4), and reports
the mean ± standard deviation over the five models and, in Tables 2, 3 and
7, the "best" model of the five with respect to PGD-100, picked on the
test set. :class:`Stat` holds one cell's per-seed values; :class:`Table`
is a grid of cells rendered as markdown, each beside the number the paper
printed for it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from crp_jax.runner.figures import Panel, Series, figure_png

__all__ = ["Cell", "Panel", "Series", "Stat", "Table", "best_index", "figure_png", "series", "stat", "ties"]


@dataclasses.dataclass(frozen=True)
class Stat:
  """Per-seed values of one number (fractions in [0, 1], or any float).

  ``mean`` and ``std`` are over the seeds; ``std`` is the sample standard
  deviation (ddof = 1; 0 for one seed). ``percent`` says whether the cell is
  printed as a percentage.
  """
  values: tuple[float, ...]
  percent: bool = True

  @property
  def mean(self) -> float:
    return float(np.mean(self.values))

  @property
  def std(self) -> float:
    return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

  def text(self) -> str:
    scale, digits = (100.0, 2) if self.percent else (1.0, 3)
    if len(self.values) == 1:
      return f"{scale * self.values[0]:.{digits}f}"
    return f"{scale * self.mean:.{digits}f} ± {scale * self.std:.{digits}f}"

  def to_json(self) -> dict:
    return {"values": list(self.values), "mean": self.mean, "std": self.std}


def stat(values: Sequence[float], percent: bool = True) -> Stat:
  return Stat(tuple(float(v) for v in values), percent)


def best_index(selection: Sequence[float]) -> int:
  """The seed with the highest ``selection`` value (the paper's "best of five" w.r.t. PGD-100); ties: first."""
  return int(np.argmax(np.asarray(selection, dtype=float)))


def ties(selection: Sequence[float]) -> bool:
  """Whether more than one seed holds the highest ``selection`` value (the best-of-N pick is then arbitrary)."""
  values = np.asarray(selection, dtype=float)
  return len(values) > 1 and int(np.sum(values == values.max())) > 1


@dataclasses.dataclass(frozen=True)
class Cell:
  """One table cell: our number (``None``: not measured) and the paper's, exactly as printed (``""``: none)."""
  ours: Stat | None
  paper: str = ""
  raw: str = ""  # printed instead of ``ours`` (e.g. per-model FLAG counts)

  def text(self) -> str:
    ours = self.raw or ("—" if self.ours is None else self.ours.text())
    return f"{ours} (paper: {self.paper})" if self.paper else ours


@dataclasses.dataclass(frozen=True)
class Table:
  """A grid of cells, rows × columns, rendered as a markdown table."""
  title: str
  corner: str
  rows: tuple[str, ...]
  columns: tuple[str, ...]
  cells: dict[tuple[str, str], Cell]

  def markdown(self) -> str:
    out = [f"**{self.title}**", "", f"| {self.corner} | " + " | ".join(self.columns) + " |",
           "|---|" + "---:|" * len(self.columns)]
    for r in self.rows:
      out.append(f"| {r} | " + " | ".join(self.cells.get((r, c), Cell(None)).text() for c in self.columns) + " |")
    return "\n".join(out) + "\n"

  def to_json(self) -> dict:
    return {"title": self.title, "rows": list(self.rows), "columns": list(self.columns),
            "cells": [{"row": r, "column": c, "ours": None if v.ours is None else v.ours.to_json(),
                       "paper": v.paper, "raw": v.raw} for (r, c), v in self.cells.items()]}


def series(label: str, xs: Sequence[float], ys: Sequence[Stat]) -> Series:
  """A figure line of per-x :class:`Stat` s: their means, with ± std error bars."""
  return Series(label, tuple(xs), tuple(y.mean for y in ys), tuple(y.std for y in ys))
