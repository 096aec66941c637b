"""§4.4: loss flatness ℓ(x + δ) − ℓ(x) around test examples, A (standard) against G (constant U, K = 10).

The numbers are the runs' ``flatness`` evaluator
(:mod:`crp_jax.runner.evaluators.flatness`), turned on with 10 draws of
U(−ε_t, ε_t), the training law.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from studies import common, paper_numbers
from studies.cells import Cell, Table, stat
from studies.engine import Context, Outcome, Run

DRAWS = 10


def flatness_evals(base: ml_collections.ConfigDict) -> dict[str, Any]:
  return {"flatness": {"draws": DRAWS, "eps": base.perturbation_eps, "distribution": "uniform"}}


def flatness_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  return [Run(g, s, make(base, s)) for g, make in (("A", common.standard), ("G", common.constant))
          for s in common.seeds(seeds)]


def flatness(ctx: Context) -> Outcome:
  """Per model the mean and variance over the test split of the per-example mean loss difference."""
  cells, extras = {}, {}
  for g, done in ctx.groups().items():
    per_model = [d.results["evaluation"]["flatness"] for d in done]
    extras[g] = [[p["mean"], p["variance"]] for p in per_model]
    for col in ("mean", "variance"):
      cells[(g, col)] = Cell(stat([p[col] for p in per_model], percent=False),
                             paper_numbers.quoted("flatness", ctx.base.dataset, g, col))
  src = paper_numbers.source("flatness", ctx.base.dataset)
  first = ctx.done[0].results["evaluation"]["flatness"]
  title = (f"Loss flatness: ℓ(x+δ) − ℓ(x), {first['draws']} draws of {common.uniform(ctx.base)} per test example "
           "(whole test split)" + (f"; ours (paper: {src} as printed)" if src else ""))
  t = Table(title, "Model", tuple(ctx.groups()), ("mean", "variance"), cells)
  return Outcome((t,), {}, extras, (
      "Per example: the mean of the loss differences over its draws (x + δ clipped to [0, 1]); the table gives "
      "the mean and the variance of that over the test examples, then mean ± std over the seeds. "
      "A: standard training; G: constant U, K = 10 + clean.",))
