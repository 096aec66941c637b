"""Table 7: constant (G) against variable (B–E) perturbations and standard training (A)."""

from __future__ import annotations

import ml_collections

from studies import common, paper_numbers
from studies.cells import Cell, Table
from studies.common import FLAGS_ROW, STRONG_ROW
from studies.engine import Context, Outcome, Run, variant


def table7_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """A standard; B–E one fresh draw per example per epoch (U or N, without or with the clean images);
  G constant U(−ε, ε), K = 10 (+ clean)."""
  var = lambda s, dist, clean: variant(base, s, method="variable", distribution=dist, num_perturbations=1,
                                       include_clean=clean)
  settings = {"A": lambda s: common.standard(base, s), "B": lambda s: var(s, "uniform", False),
              "C": lambda s: var(s, "uniform", True), "D": lambda s: var(s, "gaussian", False),
              "E": lambda s: var(s, "gaussian", True), "G": lambda s: common.constant(base, s)}
  return [Run(g, s, make(s)) for g, make in settings.items() for s in common.seeds(seeds)]


def table7(ctx: Context) -> Outcome:
  """Rows A–G and G-best; columns: the paper's attacks, the strong worst case, the FLAGs."""
  rows = common.attack_rows(ctx.base)
  groups = dict(ctx.groups())
  tie = ""
  if "G" in groups:
    top, tie = common.best(groups["G"], ctx.base)
    groups["G-best"] = [top]
  cells = {}
  for g, done in groups.items():
    for label, key in rows:
      cells[(g, label)] = Cell(common.white(done, key), paper_numbers.quoted("table7", ctx.base.dataset, g, label))
    cells[(g, STRONG_ROW)], cells[(g, FLAGS_ROW)] = common.strong_cells(done)
  title = common.caption("table7", ctx, f"Constant (G) vs variable (B–E) perturbations, ε_t = "
                         f"{ctx.base.perturbation_eps:.4g}, attacks at ε = {ctx.base.eval.eps:.4g}")
  t = Table(title, "Training", tuple(groups), tuple(r for r, _ in rows) + (STRONG_ROW, FLAGS_ROW), cells)
  extras = {"G_best_seed": groups["G-best"][0].run.seed} if "G-best" in groups else {}
  notes = common.protocol_notes(ctx, best_of=True) + (
      "A: standard; B: variable U, perturbed only; C: variable U + clean; D: variable N, perturbed only; "
      "E: variable N + clean (one fresh draw per example per epoch); G: constant U, K = 10 + clean.",)
  if tie:
    notes += (f"G-best: {tie}.",)
  if paper_numbers.FAMILY.get(ctx.base.dataset) == "cifar10":
    notes += (paper_numbers.TABLE7_G_BEST_NOTE,)
  return Outcome((t,), {}, extras, notes)
