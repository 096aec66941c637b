"""Accuracy plots: panels of curves with error bars, rendered to PNG bytes (certification, the studies)."""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Series:
  """One line of a figure: x values, the accuracy at each (a fraction) and its error bar (± std over seeds)."""
  label: str
  xs: tuple[float, ...]
  means: tuple[float, ...]
  stds: tuple[float, ...]


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
      ax.errorbar(s.xs, [100 * y for y in s.means], yerr=[100 * e for e in s.stds], marker="o", capsize=3,
                  label=s.label)
    ax.set(title=panel.title, xlabel=panel.xlabel, ylabel="accuracy [%]", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return buf.getvalue()
