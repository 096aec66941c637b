"""The paper's protocol (§4.1): clean accuracy, FGSM and PGD-n with the paper's step η, at radius ε."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from crp_jax.attacks import AttackSpec
from crp_jax.runner.evaluate import Measurements


def paper_specs(cfg: ml_collections.ConfigDict) -> tuple[AttackSpec, ...]:
  """Clean, FGSM and PGD-n (η = ``cfg.step_size``) at ``cfg.eps``; attack ``i`` keyed ``(i,)``.

  With ``cfg.extra_step_size > 0`` each PGD-n is also run with that step
  and a random start (the standard protocol: the paper's η = 1/255 cannot
  cross the MNIST ball of ε = 0.3 in 100 steps).
  """
  attacks = [AttackSpec("fgsm", eps=cfg.eps, name="fgsm", label="FGSM")]
  for n in cfg.pgd_steps:
    attacks.append(_pgd(cfg, n, cfg.step_size, cfg.random_start, f"pgd{n}"))
  if cfg.extra_step_size:
    attacks += [_pgd(cfg, n, cfg.extra_step_size, True, f"pgd{n}-rs") for n in cfg.pgd_steps]
  keyed = [dataclasses.replace(a, key_path=(i,)) for i, a in enumerate(attacks)]
  return (AttackSpec("clean", name="clean", label="No attack"), *keyed)


def _pgd(cfg: ml_collections.ConfigDict, n: int, eta: float, random_start: bool, name: str) -> AttackSpec:
  label = f"PGD-{n} (η={eta:.4g}{', random start' if random_start else ''})"
  return AttackSpec("pgd", eps=cfg.eps, steps=n, step_size=eta, restarts=cfg.restarts,
                    random_start=random_start, name=name, label=label)


class PaperProtocol:
  """Clean accuracy on the whole test split, and the paper's attacks on the fixed attacked subset."""

  name = "paper"
  transfer_spec = None
  needs_gradients = False

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.specs = paper_specs(cfg)

  def summarize(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    del num_classes
    return {"clean_accuracy": float(m.clean_full.mean()), "num_test": m.num_test,
            "num_attacked": int(len(m.correct[self.specs[0]])),
            "accuracy": {s.name: float(m.correct[s].mean()) for s in self.specs},
            "labels": {s.name: s.label for s in self.specs}}
