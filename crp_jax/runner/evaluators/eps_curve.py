"""Accuracy against the radius ε (Fig. 3): the paper's PGD-20 and APGD-CE at each ε of a grid, as an evaluator.

On with a non-empty ``eval.eps_curve`` (the grid). PGD-20 uses the
paper's η (``eval.step_size``), its start and the last iterate; APGD-CE
``eval.apgd_steps`` steps. Attack ``i`` of the grid is keyed
``(EPS_CURVE_KEY, 2i)`` (PGD-20) and ``(EPS_CURVE_KEY, 2i + 1)`` (APGD-CE),
on the attacked subset.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from crp_jax.attacks import AttackSpec
from crp_jax.runner.evaluators.batches import Measurements

EPS_CURVE_KEY = 17
PGD_STEPS = 20


def eps_curve_specs(cfg: ml_collections.ConfigDict) -> tuple[AttackSpec, ...]:
  """PGD-20 (``pgd20@<ε>``) and APGD-CE (``apgd@<ε>``) at each ε of ``cfg.eps_curve``, in grid order."""
  out = []
  for i, eps in enumerate(cfg.eps_curve):
    out.append(AttackSpec("pgd", eps=eps, steps=PGD_STEPS, step_size=cfg.step_size, random_start=cfg.random_start,
                          last_iterate=True, name=f"pgd{PGD_STEPS}@{eps:.4g}", key_path=(EPS_CURVE_KEY, 2 * i)))
    out.append(AttackSpec("apgd", eps=eps, steps=cfg.apgd_steps, name=f"apgd@{eps:.4g}",
                          key_path=(EPS_CURVE_KEY, 2 * i + 1)))
  return tuple(out)


class EpsCurve:
  """``eval.eps_curve``: accuracy under PGD-20 and APGD-CE at each ε of the grid, on the attacked subset."""

  name = "eps_curve"
  needs_gradients = False
  chain: tuple = ()
  transfer_specs: tuple = ()

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.grid = tuple(float(e) for e in cfg.eps_curve)
    self.specs = eps_curve_specs(cfg)

  def summarize(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    del num_classes
    acc = {s.name: float(m.correct[s].mean()) for s in self.specs}
    return {"eps": list(self.grid), "pgd20": [acc[f"pgd{PGD_STEPS}@{e:.4g}"] for e in self.grid],
            "apgd": [acc[f"apgd@{e:.4g}"] for e in self.grid], "accuracy": acc}
