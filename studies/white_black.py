"""Tables 1–3: the paper's attacks white-box and black-box (Table 1: U vs N on MNIST; Tables 2–3: G with its
best of five, on SVHN and CIFAR-10)."""

from __future__ import annotations

import ml_collections

from studies import common, paper_numbers
from studies.cells import Cell, Table, stat
from studies.common import FLAGS_ROW, STRONG_ROW
from studies.engine import Context, Outcome, Run, variant


def table1_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """Table 1: constant U(−ε, ε) and N(0, ε²) perturbations, K = 10 (+ clean)."""
  return [Run(name, s, variant(base, s, method="crp", distribution=dist, num_perturbations=10))
          for dist, name in (("uniform", common.uniform(base)), ("gaussian", common.gaussian(base)))
          for s in common.seeds(seeds)]


def table23_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """Tables 2–3: G, constant U(−ε, ε), K = 10 (+ clean)."""
  return [Run(f"G {common.uniform(base)}", s, common.constant(base, s)) for s in common.seeds(seeds)]


def black_box_means(ctx: Context, group: str) -> dict[str, list[float]]:
  """``{attack: [accuracy of each model of the group, averaged over the other models as sources]}``."""
  record = ctx.black_box.get(group)
  if not record:
    return {}
  out: dict[str, list[float]] = {}
  for by_attack in record["mean"].values():
    for attack, value in by_attack.items():
      out.setdefault(attack, []).append(value)
  return out


def white_black_table(ctx: Context, kind: str, *, with_best: bool, title: str) -> tuple[Table, dict, list[str]]:
  """Rows: the paper's attacks, then the strong protocol; per group: white-box [, best], black-box.

  Returns the table, the per-group extras and the tie notes of the best-of-N picks.
  """
  rows = common.attack_rows(ctx.base)
  groups = ctx.groups()
  short = {g: ("U" if g.startswith("U") else "N") if kind == "table1" else "" for g in groups}
  cells, columns, extras, notes = {}, [], {}, []
  for g, done in groups.items():
    suffix = f" {g}" if len(groups) > 1 else ""
    wcol, bcol, kcol = f"White-box{suffix}", f"Black-box{suffix}", f"Best of {len(done)}{suffix}"
    columns += [wcol] + ([kcol] if with_best else [])
    bb = black_box_means(ctx, g)
    top, tie = common.best(done, ctx.base)
    extras[g] = {"black_box": bb, "best_seed": top.run.seed}
    if with_best and tie:
      notes.append(f"{kcol}: {tie}.")
    for label, key in rows:
      q = lambda col: paper_numbers.quoted(kind, ctx.base.dataset, label, f"{col} {short[g]}".strip())
      cells[(label, wcol)] = Cell(common.white(done, key), q("white"))
      if with_best:
        cells[(label, kcol)] = Cell(common.white([top], key), q("best"))
      values = bb.get(key) if key != "clean" else None
      cells[(label, bcol)] = Cell(stat(values) if values else (common.white(done, key) if key == "clean" else None),
                                  q("black"))
    cells[(STRONG_ROW, wcol)], cells[(FLAGS_ROW, wcol)] = common.strong_cells(done)
    if with_best:
      cells[(STRONG_ROW, kcol)], cells[(FLAGS_ROW, kcol)] = common.strong_cells([top])
  columns += [f"Black-box{f' {g}' if len(groups) > 1 else ''}" for g in groups]
  all_rows = tuple(r for r, _ in rows) + (STRONG_ROW, FLAGS_ROW)
  return Table(title, "Setting", all_rows, tuple(columns), cells), extras, notes


def table1(ctx: Context) -> Outcome:
  t, extras, _ = white_black_table(ctx, "table1", with_best=False, title=common.caption(
      "table1", ctx, f"Uniform vs Gaussian constant perturbations, ε = {ctx.base.eval.eps:.4g}"))
  return Outcome((t,), {}, extras, common.protocol_notes(ctx, black_box=True))


def table23(ctx: Context) -> Outcome:
  t, extras, ties = white_black_table(ctx, "white_black", with_best=True, title=common.caption(
      "white_black", ctx, f"Constant perturbations {common.uniform(ctx.base)}, K = 10, ε = {ctx.base.eval.eps:.4g}"))
  return Outcome((t,), {}, extras, common.protocol_notes(ctx, black_box=True, best_of=True) + tuple(ties))

