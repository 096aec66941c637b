"""Aggregation over perturbation sets: mean ± std, best of five, and the paper-style tables and figures.

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
import io
from typing import Sequence

import numpy as np


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


@dataclasses.dataclass(frozen=True)
class Series:
  """One line of a figure: x values and a :class:`Stat` per x (error bars: ± std over seeds)."""
  label: str
  xs: tuple[float, ...]
  ys: tuple[Stat, ...]


@dataclasses.dataclass(frozen=True)
class Panel:
  title: str
  xlabel: str
  series: tuple[Series, ...]


def figure_png(panels: Sequence[Panel], title: str) -> bytes:
  """PNG bytes: one subplot per panel, accuracy axes from 0 to 100 %, error bars over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    for s in panel.series:
      ax.errorbar(s.xs, [100 * y.mean for y in s.ys], yerr=[100 * y.std for y in s.ys], marker="o",
                  capsize=3, label=s.label)
    ax.set(title=panel.title, xlabel=panel.xlabel, ylabel="accuracy [%]", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return buf.getvalue()
