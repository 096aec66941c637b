"""What every study's table shares: the paper-protocol rows, the strong-protocol cells, best-of-N, the notes."""

from __future__ import annotations

from typing import Any

import ml_collections

from crp_jax import attacks
from studies import paper_numbers
from studies.cells import Cell, Panel, Stat, Table, best_index, series, stat, ties
from studies.engine import Context, Done, variant

# With eval.autoattack="" it is APGD-CE ∧ APGD-T ∧ Square.
STRONG_ROW = "Strong worst case (AutoAttack: APGD-CE, APGD-T, FAB-T, Square)"
FLAGS_ROW = "Masking-check FLAGs, per model"


def seeds(n: int) -> range:
  return range(n)


def uniform(base: ml_collections.ConfigDict) -> str:
  return f"U(−{base.perturbation_eps:.4g}, {base.perturbation_eps:.4g})"


def gaussian(base: ml_collections.ConfigDict) -> str:
  return f"N(0, {base.perturbation_eps:.4g}²)"


def standard(base: ml_collections.ConfigDict, s: int) -> ml_collections.ConfigDict:
  """Table 7's A: standard training."""
  return variant(base, s, method="standard")


def constant(base: ml_collections.ConfigDict, s: int, k: int = 10) -> ml_collections.ConfigDict:
  """The paper's G: K constant draws of U(−ε, ε) per example (+ clean)."""
  return variant(base, s, method="crp", distribution="uniform", num_perturbations=k)


def pixel_units(base: ml_collections.ConfigDict) -> float:
  """255 for the 8/255-style datasets (figures in 0–255 units), 1 for MNIST."""
  return 1.0 if paper_numbers.FAMILY.get(base.dataset) == "mnist" else 255.0


def attack_rows(base: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """``(row label, result key)`` of the paper's protocol: No attack, FGSM, PGD-n for each n."""
  return [("No attack", "clean"), ("FGSM", "fgsm")] + [(f"PGD-{n}", f"pgd{n}") for n in base.eval.pgd_steps]


def paper_record(d: Done) -> dict[str, Any]:
  return d.results["evaluation"]["paper"]


def white(done: list[Done], key: str) -> Stat:
  """The paper-protocol accuracy ``key`` over the seeds (clean: on the whole test split)."""
  return stat([paper_record(d)["clean_accuracy"] if key == "clean" else paper_record(d)["accuracy"][key]
               for d in done])


def strong_cells(done: list[Done]) -> tuple[Cell, Cell]:
  """The strong worst case (mean ± std) and the FLAG counts ("0, 1, 0") of a group."""
  strong = [d.results["evaluation"].get("strong") for d in done]
  if any(s is None for s in strong):
    return Cell(None), Cell(None)
  flags = ", ".join(str(s["num_flags"]) for s in strong)
  return Cell(stat([s["worst_case"] for s in strong])), Cell(None, raw=flags)


def top_key(base: ml_collections.ConfigDict) -> str:
  """The result key the paper picks its best models by: PGD with the most steps."""
  return f"pgd{max(base.eval.pgd_steps)}"


def best(done: list[Done], base: ml_collections.ConfigDict) -> tuple[Done, str]:
  """The paper's "best of five w.r.t. PGD-100" (the largest n), picked on the test set, and a note
  when it is a tie (the pick is then the first seed, not a better model)."""
  key = top_key(base)
  values = [paper_record(d)["accuracy"][key] for d in done]
  top = done[best_index(values)]
  note = ""
  if ties(values):
    tied = [d.run.seed for d, v in zip(done, values) if v == max(values)]
    note = (f"tie: seeds {', '.join(map(str, tied))} all {100 * max(values):.2f} under PGD-{key[3:]}; "
            f"seed {top.run.seed} shown")
  return top, note


def caption(kind: str, ctx: Context, what: str) -> str:
  src = paper_numbers.source(kind, ctx.base.dataset)
  return f"{what}; accuracy [%], ours (paper: {src} as printed)" if src else f"{what}; accuracy [%]"


def protocol_notes(ctx: Context, *, black_box: bool = False, best_of: bool = False) -> tuple[str, ...]:
  """What every table's numbers mean; the black-box and best-of-N lines only where the table has them."""
  e = ctx.base.eval
  start = "a random start (Madry's PGD, Eq. 4)" if e.random_start else "no random start (BIM)"
  return (f"Paper protocol: FGSM and PGD-n at ε = {e.eps:.4g} with the paper's η = {e.step_size:.4g}, "
          f"{start}, returning the last iterate; attacks on {e.attack_subset or 'all'} test examples, clean "
          "accuracy on the whole test split.",
          *(["Black-box (§4.1): each model attacked with examples crafted on each other model of its setting "
              "(FGSM, PGD-n, same settings), accuracy averaged over the sources, then mean ± std over the "
              "models; every (source, target) number is in study.json's black_box."] if black_box else []),
          *(["Best of N: the seed with the highest accuracy under PGD with the most steps, picked on the "
              "test set (as the paper does, so it is optimistic)."] if best_of else []),
          strong_note(e) if e.strong else
          "Strong protocol: not run (eval.strong=False), so nothing here is evidence of robustness.")


def strong_note(e: ml_collections.ConfigDict) -> str:
  """What the strong row measured: AutoAttack's chain at ``eval.autoattack``, else APGD-CE ∧ APGD-T ∧ Square."""
  flags = "FLAGs: masking checks that failed (report.md of each run lists them)."
  if e.get("autoattack"):
    chain = attacks.autoattack_attacks(e.autoattack, eps=e.eps, apgd_steps=e.apgd_steps, fab_steps=e.fab_steps,
                                       num_targets=e.num_targets, square_queries=e.square_queries)
    return (f"Strong protocol: AutoAttack {e.autoattack}, {', '.join(s.label for s in chain)}, each attack on "
            f"the examples the ones before left robust; the row is the accuracy after the last. {flags}")
  return (f"Strong protocol: APGD-CE ({e.apgd_steps} steps), APGD-T ({e.num_targets} target classes), "
          f"Square ({e.square_queries} queries); worst case per example (eval.autoattack is off: no FAB-T). {flags}")


def curves(ctx: Context, xs: dict[str, float], xlabel: str) -> list[Panel]:
  """One panel per paper attack (clean, FGSM, PGD-n): accuracy against the groups' ``xs``, error bars over seeds."""
  groups = ctx.groups()
  panels = []
  for label, key in attack_rows(ctx.base):
    ys = tuple(white(groups[g], key) for g in xs)
    panels.append(Panel(label, xlabel, (series("paper protocol", tuple(xs.values()), ys),)))
  strong = tuple(strong_cells(groups[g])[0].ours for g in xs)
  if all(s is not None for s in strong):
    panels.append(Panel(STRONG_ROW, xlabel, (series("strong worst case", tuple(xs.values()), strong),)))
  return panels


def attack_table(ctx: Context, kind: str, columns: dict[str, str], title: str) -> Table:
  """Rows: the paper's attacks, the strong worst case and the FLAGs; one column per group (``columns[group]``)."""
  rows = attack_rows(ctx.base)
  out = {}
  for g, done in ctx.groups().items():
    col = columns[g]
    for label, key in rows:
      out[(label, col)] = Cell(white(done, key), paper_numbers.quoted(kind, ctx.base.dataset, label, col))
    out[(STRONG_ROW, col)], out[(FLAGS_ROW, col)] = strong_cells(done)
  return Table(title, "Setting", tuple(r for r, _ in rows) + (STRONG_ROW, FLAGS_ROW),
               tuple(columns[g] for g in ctx.groups()), out)
