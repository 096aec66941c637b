"""Tables 4–6 and Fig. 2: the number of constant perturbations per example, K = 1, 5, 10."""

from __future__ import annotations

import ml_collections

from studies import common
from studies.cells import figure_png
from studies.engine import Context, Outcome, Run


def k_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """K = 1, 5, 10 constant draws of U(−ε, ε) (+ clean)."""
  return [Run(f"K={k}", s, common.constant(base, s, k)) for k in (1, 5, 10) for s in common.seeds(seeds)]


def k_table(ctx: Context) -> Outcome:
  columns = {g: g.split("=")[1] for g in ctx.groups()}
  t = common.attack_table(ctx, "k", columns, common.caption(
      "k", ctx, f"Number of perturbations K (columns), {common.uniform(ctx.base)}, ε = {ctx.base.eval.eps:.4g}"))
  xs = {g: float(c) for g, c in columns.items()}
  png = figure_png(common.curves(ctx, xs, "perturbations per example K"), "Accuracy against K (Fig. 2)")
  return Outcome((t,), {"accuracy_vs_k.png": png}, {}, common.protocol_notes(ctx))
