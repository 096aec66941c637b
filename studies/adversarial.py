"""Tables 8–10: constant perturbations against adversarial training.

* Table 8: the G models attacked black-box with FGSM and PGD-n examples
  crafted on a standard model (A) and on a PGD-AT model;
* Tables 9 (SVHN) and 10 (CIFAR-10): G and G-best beside Madry's PGD-AT and
  TRADES, trained here with the same trainer and evaluated with the same
  plan (the paper's attacks and AutoAttack); the rows the paper only quotes
  (RST, ME-NET, and its own Madry and TRADES numbers) as printed, marked as
  not run here.

The paper has no MNIST comparison: on ``mnist``/``mnist5k`` these tables are
this project's analogue, and their titles say so.
"""

from __future__ import annotations

import ml_collections

from studies import common, paper_numbers
from studies.cells import Cell, Table, stat
from studies.common import FLAGS_ROW, STRONG_ROW
from studies.engine import Context, CrossRun, Done, Outcome, Run, variant

PGD_AT, TRADES = "PGD-AT", "TRADES"
#: Table 8's source models and the column each gives.
SOURCES: dict[str, str] = {"A": "Standard", PGD_AT: "Adv. Training"}


def _adversarial(base: ml_collections.ConfigDict, s: int, method: str) -> ml_collections.ConfigDict:
  return variant(base, s, method=method)


def _analogue(ctx: Context) -> str:
  family = paper_numbers.FAMILY.get(ctx.base.dataset, ctx.base.dataset)
  return f" ({ctx.base.dataset}: this project's analogue; the paper has no MNIST comparison)" if family == "mnist" else ""


def table8_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """G (constant U, K = 10) for each seed; the sources A (standard) and PGD-AT, seed 0."""
  return ([Run("G", s, common.constant(base, s)) for s in common.seeds(seeds)]
          + [Run("A", 0, common.standard(base, 0)), Run(PGD_AT, 0, _adversarial(base, 0, "pgd_at"))])


def table8_cross(groups: dict[str, list[Done]]) -> list[CrossRun]:
  """Examples crafted on A and on PGD-AT, evaluated on every G model."""
  if not all(g in groups for g in ("G", *SOURCES)):
    return []
  models = {name: groups[name][0] for name in SOURCES}
  models.update({f"G seed{d.run.seed}": d for d in groups["G"]})
  return [CrossRun("G from A and PGD-AT", models, tuple(SOURCES))]


def table8(ctx: Context) -> Outcome:
  """Rows: FGSM and PGD-n; columns: the source; cells: accuracy of the G models, mean ± std over them."""
  record = ctx.black_box["G from A and PGD-AT"]
  targets = [t for t in record["accuracy"] if t.startswith("G ")]
  rows = [(label, key) for label, key in common.attack_rows(ctx.base) if key != "clean"]
  cells = {}
  for label, key in rows:
    for source, column in SOURCES.items():
      values = [record["accuracy"][t][key][source] for t in targets]
      cells[(label, column)] = Cell(stat(values), paper_numbers.quoted("table8", ctx.base.dataset, label, column))
  title = common.caption("table8", ctx, f"Black-box against G ({len(targets)} models), examples crafted on a "
                         f"standard model (A) and on a PGD-AT model, ε = {ctx.base.eval.eps:.4g}{_analogue(ctx)}")
  t = Table(title, "Attack", tuple(r for r, _ in rows), tuple(SOURCES.values()), cells)
  return Outcome((t,), {}, {"targets": targets}, common.protocol_notes(ctx)[:1] + (
      "Each G model is attacked with the examples crafted on A (seed 0) and on PGD-AT (seed 0); mean ± std over "
      "the G models. Every (source, target) number is in study.json's black_box.",))


def adversarial_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """G, PGD-AT and TRADES, each for every seed, with the same trainer and evaluation plan."""
  return [Run(g, s, make(s)) for g, make in (("G", lambda s: common.constant(base, s)),
                                              (PGD_AT, lambda s: _adversarial(base, s, "pgd_at")),
                                              (TRADES, lambda s: _adversarial(base, s, "trades")))
          for s in common.seeds(seeds)]


def _quoted_row(ctx: Context, ours: str) -> str:
  """The paper's row that our row ``ours`` stands beside (``""``: none)."""
  family = paper_numbers.FAMILY.get(ctx.base.dataset, ctx.base.dataset)
  if ours == PGD_AT:
    return "Madry et al. (2018)"
  if ours == TRADES:
    return "TRADES" if family == "cifar10" else ""
  if family == "cifar10":
    return "Proposed best" if ours == "G-best" else ""
  bound = round(ctx.base.perturbation_eps * 255)
  return f"Proposed U(−{bound}/255, {bound}/255)" if family == "svhn" and ours == "G" else ""


def adversarial_table(ctx: Context) -> Outcome:
  """Rows: G, G-best, PGD-AT, TRADES (trained here), then the rows the paper only quotes; columns: the paper's
  attacks, AutoAttack's worst case and the FLAGs."""
  rows = common.attack_rows(ctx.base)
  groups = dict(ctx.groups())
  notes = []
  if "G" in groups:
    top, tie = common.best(groups["G"], ctx.base)
    groups = {"G": groups["G"], "G-best": [top], **{g: v for g, v in groups.items() if g != "G"}}
    if tie:
      notes.append(f"G-best: {tie}.")
  cells, labels = {}, {}
  for g, done in groups.items():
    label = g if g.startswith("G") else f"{g} (trained here)"
    labels[g] = label
    paper_row = _quoted_row(ctx, g)
    for col, key in rows:
      cells[(label, col)] = Cell(common.white(done, key), paper_numbers.quoted("adversarial", ctx.base.dataset,
                                                                              paper_row, col) if paper_row else "")
    cells[(label, STRONG_ROW)], cells[(label, FLAGS_ROW)] = common.strong_cells(done)
  family = paper_numbers.FAMILY.get(ctx.base.dataset, ctx.base.dataset)
  quoted_only = [r for r in paper_numbers.QUOTED_ONLY.get(family, ())]
  for r in quoted_only:
    for col, _ in rows:
      cells[(f"{r} (quoted; not run here)", col)] = Cell(None, paper_numbers.quoted("adversarial", ctx.base.dataset,
                                                                                   r, col))
  title = common.caption("adversarial", ctx, f"Constant perturbations against adversarial training, white-box, "
                         f"ε = {ctx.base.eval.eps:.4g}{_analogue(ctx)}")
  all_rows = tuple(labels.values()) + tuple(f"{r} (quoted; not run here)" for r in quoted_only)
  t = Table(title, "Method", all_rows, tuple(c for c, _ in rows) + (STRONG_ROW, FLAGS_ROW), cells)
  return Outcome((t,), {}, {}, common.protocol_notes(ctx, best_of=True) + tuple(notes) + (
      f"PGD-AT and TRADES: the library's baselines (crp_jax.adversarial) with config.adversary = "
      f"{ctx.base.adversary.steps} steps of {ctx.base.adversary.step_size:.4g} at ε = {ctx.base.adversary.eps:.4g} "
      f"(TRADES β = {ctx.base.adversary.beta:g}; ε warm-up "
      f"{ctx.base.adversary.get('eps_warmup_epochs', 0.0):g} epochs), trained with the same trainer, length and "
      "evaluation plan as G. "
      "(paper: …) beside our PGD-AT and TRADES rows is the paper's number for that method, which it took from "
      "other work.",))
