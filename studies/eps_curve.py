"""Fig. 3: accuracy against ε for the top-1 and top-2 G models (PGD-20 with the paper's η, APGD-CE beside).

The numbers are the runs' ``eps_curve`` evaluator
(:mod:`crp_jax.runner.evaluators.eps_curve`) on the grid of
:func:`fig3_grid`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from studies import common
from studies.cells import Cell, Panel, Table, figure_png, series, stat
from studies.engine import Context, Outcome, Run, variant

#: The adversarially trained curves of Fig. 3: group name -> method.
ADVERSARIAL: dict[str, str] = {"PGD-AT": "pgd_at", "TRADES": "trades"}


def fig3_grid(base: ml_collections.ConfigDict) -> tuple[float, ...]:
  """ε of Fig. 3: 1–16 /255 for SVHN and CIFAR-10; on MNIST 0.05–0.4."""
  if common.pixel_units(base) > 1:
    return tuple(v / 255 for v in (1, 2, 4, 6, 8, 10, 12, 16))
  return (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


def fig3_evals(base: ml_collections.ConfigDict) -> dict[str, Any]:
  return {"eps_curve": fig3_grid(base)}


def fig3_runs(base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """G for each seed, and the adversarially trained curves of the paper's figure: PGD-AT and TRADES, seed 0."""
  return ([Run("G", s, common.constant(base, s)) for s in common.seeds(seeds)]
          + [Run(name, 0, variant(base, 0, method=method)) for name, method in ADVERSARIAL.items()])


def fig3(ctx: Context) -> Outcome:
  """PGD-20 accuracy against ε for the top-1 and top-2 G models (by PGD with the most steps), APGD-CE beside."""
  done = ctx.groups()["G"]
  key = common.top_key(ctx.base)
  score = lambda d: d.results["evaluation"]["paper"]["accuracy"][key]
  order = sorted(done, key=lambda d: -score(d))[:2]
  u = common.pixel_units(ctx.base)
  curve = lambda d: d.results["evaluation"]["eps_curve"]
  grid = tuple(curve(order[0])["eps"])
  per = {f"Ours top {i + 1} (seed {d.run.seed})": curve(d) for i, d in enumerate(order)}
  groups = ctx.groups()
  per.update({f"{name} (seed {groups[name][0].run.seed}, trained here)": curve(groups[name][0])
              for name in ADVERSARIAL if name in groups})
  xs = tuple(e * u for e in grid)
  lines = lambda which: tuple(series(n, xs, tuple(stat([y]) for y in v[which])) for n, v in per.items())
  unit = " (/255)" if u > 1 else ""
  panels = (Panel("PGD-20 (paper protocol)", f"ε{unit}", lines("pgd20")),
            Panel(f"APGD-CE-{ctx.base.eval.apgd_steps} (strong)", f"ε{unit}", lines("apgd")))
  cols = tuple(f"{e * u:.4g}" for e in grid)
  cells = {(n + suffix, col): Cell(stat([v[which][i]])) for n, v in per.items()
           for suffix, which in (("", "pgd20"), (", APGD-CE", "apgd")) for i, col in enumerate(cols)}
  rows = tuple(r for n in per for r in (n, f"{n}, APGD-CE"))
  t = Table(f"Accuracy [%] against ε{unit}: PGD-20 (paper's η, last iterate) and APGD-CE", "Model", rows, cols, cells)
  missing = [name for name in ADVERSARIAL if name not in groups]
  notes = ["G: the two best constant-perturbation models by PGD with the most steps (picked on the test set, as "
           "the paper does). " + (f"Not in this run (--groups): {', '.join(missing)}." if missing else
                                  "PGD-AT and TRADES: the library's baselines, trained with the same trainer.")]
  scores = [score(d) for d in done]
  if len(done) > 2 and sorted(scores, reverse=True)[1] == sorted(scores, reverse=True)[2]:
    notes.append(f"Top-2 pick is a tie: {sum(s == sorted(scores, reverse=True)[1] for s in scores)} seeds share "
                 f"{100 * sorted(scores, reverse=True)[1]:.2f} under PGD-{key[3:]}; the lowest seeds are shown.")
  return Outcome((t,), {"fig3.png": figure_png(panels, "Fig. 3: robustness against ε")},
                 {n: v["accuracy"] for n, v in per.items()}, tuple(notes))
