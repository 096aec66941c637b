"""The strong protocol (AutoAttack: APGD-CE, APGD-T, FAB-T, Square), the masking sweeps and checks, transfer."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from crp_jax.attacks import AttackSpec, autoattack_attacks, strong_attacks
from crp_jax.attacks._autoattack import budget
from crp_jax.runner.evaluators import masking
from crp_jax.runner.evaluators.batches import Measurements
from crp_jax.runner.evaluators.paper import paper_specs

#: The strong protocol's attacks draw from ``fold_in(eval key, 7)``.
STRONG_KEY = 7
#: AutoAttack's attacks that are not in the strong table (FAB-T; plus' others) from ``fold_in(eval key, 8)``.
AUTOATTACK_KEY = 8


def _keyed(specs: tuple[AttackSpec, ...], first: int) -> tuple[AttackSpec, ...]:
  """Gives the specs without a key path ``(STRONG_KEY, first), (STRONG_KEY, first + 1), ...`` in order."""
  out, i = [], first
  for s in specs:
    if not s.key_path:
      s, i = dataclasses.replace(s, key_path=(STRONG_KEY, i)), i + 1
    out.append(s)
  return tuple(out)


def autoattack_chain(cfg: ml_collections.ConfigDict, own: tuple[AttackSpec, ...]) -> tuple[AttackSpec, ...]:
  """``eval.autoattack``'s attacks in AutoAttack's order; those equal to one of ``own`` are that spec.

  So APGD-CE, APGD-T and Square, which the masking checks need on every
  example anyway, are measured once; the others (FAB-T in ``standard``)
  run only on the examples still robust.
  """
  if not cfg.get("autoattack"):
    return ()
  table = autoattack_attacks(cfg.autoattack, eps=cfg.eps, apgd_steps=cfg.apgd_steps, fab_steps=cfg.fab_steps,
                             num_targets=cfg.num_targets, square_queries=cfg.square_queries)
  mine = {s.name: s for s in own}
  out = []
  for s in table:
    as_own = dataclasses.replace(s, key_path=(STRONG_KEY, *s.key_path))
    out.append(as_own if mine.get(s.name) == as_own else
               dataclasses.replace(s, key_path=(AUTOATTACK_KEY, *s.key_path)))
  return tuple(out)


class StrongProtocol:
  """The strong protocol on the attacked subset, AutoAttack's number (``eval.autoattack``), the
  sweeps and checks of :mod:`crp_jax.runner.evaluators.masking`, and APGD-CE transfer from the other models."""

  name = "strong"
  needs_gradients = True

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.cfg = cfg
    table = strong_attacks(eps=cfg.eps, apgd_steps=cfg.apgd_steps, num_targets=cfg.num_targets,
                           square_queries=cfg.square_queries)
    self.apgd_ce, self.apgd_t, self.square = (dataclasses.replace(s, key_path=(STRONG_KEY, *s.key_path))
                                              for s in table)
    sweeps = masking.sweep_specs(cfg, self.apgd_ce)
    self.sweeps = sweeps.replace_all(_keyed(sweeps.all(), len(table)))
    # The first PGD sweep again, same key, returning its last iterate: check 7 (silent success).
    first = self.sweeps.pgd_steps[0]
    self.last_iterate = dataclasses.replace(first, last_iterate=True, name=f"{first.name}-last")
    self.specs = (self.apgd_ce, self.apgd_t, self.square, *self.sweeps.all(), self.last_iterate)
    # Run in order after ``specs``, each on the examples still robust (attacks.run_in_order).
    self.chain = autoattack_chain(cfg, (self.apgd_ce, self.apgd_t, self.square))
    # Crafted with the evaluation key itself on every other model.
    self.transfer_spec = dataclasses.replace(self.apgd_ce, key_path=())
    self.transfer_specs = (self.transfer_spec,)

  def summarize(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    paper = paper_specs(self.cfg)
    fgsm = next(s for s in paper if s.kind == "fgsm")
    transfer = m.transfer.get(self.transfer_spec, {})  # source -> (n,) bool under APGD-CE transfer
    c = masking.CheckInputs(self.sweeps, m.correct, m.correct[fgsm], m.correct[self.apgd_ce],
                                m.correct[self.apgd_t], m.correct[self.square], m.gradients, transfer)
    at_eps = (*paper, self.apgd_ce, self.apgd_t, self.square, *self.sweeps.at_eps())
    worst = c.apgd_ce & c.apgd_t & c.square
    if self.chain:
      worst = m.chains[self.name].robust_after[self.chain[-1].name]
    every = np.logical_and.reduce([m.correct[s] for s in at_eps] + list(transfer.values()) + [worst])
    checks = masking.masking_checks(c, self.cfg, num_classes) + [masking.check_silent_success(
        m.correct[self.last_iterate], m.correct[self.sweeps.pgd_steps[0]], self.last_iterate.steps)]
    acc = lambda s: float(m.correct[s].mean())
    return {"accuracy": {s.name: acc(s) for s in (*paper, *self.specs)},
            "labels": {s.name: s.label for s in (self.apgd_ce, self.apgd_t, self.square)},
            "worst_case": float(worst.mean()), "all_attacks": float(every.mean()),
            **self._autoattack_section(m, num_classes),
            "checks": [{"name": ch.name, "passed": ch.passed, "detail": ch.detail} for ch in checks],
            "num_flags": sum(not ch.passed for ch in checks),
            "transfer": {src: float(v.mean()) for src, v in transfer.items()},
            "curves": {"eps": [[s.eps, acc(s)] for s in self.sweeps.eps],
                       "pgd_steps": [[s.steps, acc(s)] for s in self.sweeps.pgd_steps],
                       "apgd_steps": [[s.steps, acc(s)] for s in self.sweeps.apgd_steps]}}

  def _autoattack_section(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    """``{"autoattack": ...}``: running robust accuracy after each attack, examples attacked, budgets."""
    if not self.chain:
      return {}
    chain = m.chains[self.name]
    return {"autoattack": {
        "version": self.cfg.autoattack, "attacks": [s.name for s in self.chain],
        "labels": {s.name: s.label for s in self.chain},
        "robust_after": {n: float(r.mean()) for n, r in chain.robust_after.items()},
        "attacked": dict(chain.attacked), "budgets": {s.name: budget(s, num_classes) for s in self.chain},
        "robust_accuracy": float(chain.robust_after[self.chain[-1].name].mean())}}
