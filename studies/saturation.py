"""The saturation test: does a clipped-probability loss (an exactly zero gradient on confident examples)
explain the paper's MNIST pattern, PGD-100 = clean?

The numbers are the runs' ``saturation`` evaluator
(:mod:`crp_jax.runner.evaluators.saturation`): FGSM and PGD-n under the
stable and the clipped-probability loss, PGD-n also from x (BIM), and the
share of exactly zero input gradients.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from crp_jax.runner.evaluators.saturation import LOSSES, saturation_specs
from studies import common
from studies.cells import Cell, Table, stat
from studies.engine import Context, Outcome, Run


def saturation_evals(base: ml_collections.ConfigDict) -> dict[str, Any]:
  del base
  return {"saturation": True}


def saturation_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """A, and constant U(−ε, ε) with K = 1, 5, 10 (+ clean)."""
  ks = [(f"K={k}", lambda s, k=k: common.constant(base, s, k)) for k in (1, 5, 10)]
  return [Run(g, s, make(s)) for g, make in [("A", lambda s: common.standard(base, s)), *ks]
          for s in common.seeds(seeds)]


def _per_model(d) -> dict[str, float]:
  """One run's saturation numbers, flat: ``clean_subset``, each attack's name, ``zero_grad-<loss>``."""
  sec = d.results["evaluation"]["saturation"]
  return {"clean_subset": sec["clean_subset"], **sec["accuracy"],
          **{f"zero_grad-{loss}": v for loss, v in sec["zero_gradient"].items()}}


def saturation(ctx: Context) -> Outcome:
  """Rows: the models; columns: the clean subset, each attack under each loss, the zero-gradient shares."""
  specs = saturation_specs(ctx.base.eval)
  columns = [("No attack (attacked subset)", "clean_subset")] + [(s.label, s.name) for s in specs] + [
      (f"zero input gradient, {label} [% of examples]", f"zero_grad-{loss}") for loss, label in LOSSES]
  cells, extras = {}, {}
  for g, done in ctx.groups().items():
    per = [_per_model(d) for d in done]
    extras[g] = per
    for label, key in columns:
      cells[(g, label)] = Cell(stat([p[key] for p in per]))
  t = Table(f"Saturation test: the paper's attacks under two losses, with and without the random start, "
            f"ε = {ctx.base.eval.eps:.4g}; accuracy [%]", "Model", tuple(ctx.groups()), tuple(c for c, _ in columns),
            cells)
  return Outcome((t,), {}, extras, common.protocol_notes(ctx) + reading(extras, max(ctx.base.eval.pgd_steps)))


def reading(extras: dict[str, list[dict[str, float]]], n: int) -> tuple[str, ...]:
  """Whether the clipped-probability loss reproduces the paper's MNIST pattern (PGD-n = clean; G above A)."""
  mean = lambda g, k: float(np.mean([p[k] for p in extras[g]]))
  top = max((g for g in extras if g.startswith("K=")), key=lambda g: int(g.split("=")[1]), default=None)
  if top is None or "A" not in extras:
    return ()
  out = []
  for loss, label in LOSSES:
    for attack in (f"pgd{n}-{loss}", f"bim{n}-{loss}"):
      gap = mean(top, "clean_subset") - mean(top, attack)
      out.append(f"{label}, {attack}: {top} loses {100 * gap:.2f} points (paper: 0.00 at K = 10); "
                 f"{top} {100 * mean(top, attack):.2f}% vs A {100 * mean('A', attack):.2f}%.")
    out.append(f"{label}: {100 * mean(top, 'zero_grad-' + loss):.1f}% of {top}'s examples have an exactly zero "
               f"input gradient ({100 * mean('A', 'zero_grad-' + loss):.1f}% of A's).")
  for attack, what in ((f"pgd{n}-prob_ce", "with the random start"), (f"bim{n}-prob_ce", "from x (BIM)")):
    flat = mean(top, "clean_subset") - mean(top, attack) <= 0.01
    above = mean(top, attack) > mean("A", attack)
    out.append(f"Reading, clipped-probability loss {what}: PGD-{n} = clean within 1 point: "
               f"{'yes' if flat else 'no'}; {top} above A: {'yes' if above else 'no'} (the paper's MNIST pattern "
               f"needs both); the stable loss gives {top} {100 * mean(top, f'pgd{n}-ce'):.2f}% with the random "
               f"start and {100 * mean(top, f'bim{n}-ce'):.2f}% from x.")
  return tuple(out)
