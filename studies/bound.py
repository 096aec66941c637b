"""Fig. 1: the bound ε_t of the training perturbations U(−ε_t, ε_t), K = 1, at ε/2, ε and 2ε."""

from __future__ import annotations

import ml_collections

from studies import common
from studies.cells import figure_png
from studies.engine import Context, Outcome, Run, variant


def fig1_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """K = 1 and the training bound ε_t ∈ {ε/2, ε, 2ε} (CIFAR-10: 8, 16, 32 /255)."""
  u = common.pixel_units(base)
  return [Run(f"ε_t={bound * u:.4g}", s, variant(base, s, method="crp", distribution="uniform",
                                                  num_perturbations=1, perturbation_eps=bound))
          for bound in (base.perturbation_eps / 2, base.perturbation_eps, base.perturbation_eps * 2)
          for s in common.seeds(seeds)]


def fig1(ctx: Context) -> Outcome:
  columns = {g: g for g in ctx.groups()}
  t = common.attack_table(ctx, "fig1", columns, f"Training bound ε_t of U(−ε_t, ε_t), K = 1; attacks at ε = "
                          f"{ctx.base.eval.eps:.4g}; accuracy [%] (the paper gives Fig. 1 as a plot only)")
  xs = {g: float(g.split("=")[1]) for g in ctx.groups()}
  unit = " (/255)" if common.pixel_units(ctx.base) > 1 else ""
  png = figure_png(common.curves(ctx, xs, f"training bound ε_t{unit}"), "Fig. 1: distribution bound, K = 1")
  return Outcome((t,), {"fig1.png": png}, {}, common.protocol_notes(ctx))
