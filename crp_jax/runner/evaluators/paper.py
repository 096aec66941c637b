"""The paper's protocol (§4.1): clean accuracy, FGSM and PGD-n with the paper's step η, at radius ε,
white-box and black-box (examples crafted on the other models of a comparison)."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from crp_jax.attacks import AttackSpec
from crp_jax.runner.evaluators.batches import Measurements


def paper_specs(cfg: ml_collections.ConfigDict) -> tuple[AttackSpec, ...]:
  """Clean, FGSM and PGD-n (η = ``cfg.step_size``) at ``cfg.eps``; attack ``i`` keyed ``(i,)``.

  The paper's PGD (Eq. 4) is Madry et al.'s: it starts at a uniform point
  of the ball (``cfg.random_start``, default ``True``; ``False`` is BIM)
  and returns its last iterate ``x^(n)`` (``last_iterate=True``), not the
  best point the strong protocol's PGD keeps. With
  ``cfg.extra_step_size > 0`` each PGD-n is also run with that step, a
  random start and the last iterate (the paper's η = 1/255 cannot cross
  the MNIST ball of ε = 0.3 in 20 steps).
  """
  main, extra = _attacks(cfg)
  return (AttackSpec("clean", name="clean", label="No attack"), *main, *extra)


def black_box_specs(cfg: ml_collections.ConfigDict) -> tuple[AttackSpec, ...]:
  """§4.1's black-box attacks, specs of :func:`paper_specs`: FGSM and each PGD-n at the paper's η."""
  return _attacks(cfg)[0]


def _attacks(cfg: ml_collections.ConfigDict) -> tuple[tuple[AttackSpec, ...], tuple[AttackSpec, ...]]:
  """(FGSM and PGD-n at η, PGD-n at ``extra_step_size``), attack ``i`` of both in order keyed ``(i,)``."""
  main = [AttackSpec("fgsm", eps=cfg.eps, name="fgsm", label="FGSM")]
  main += [_pgd(cfg, n, cfg.step_size, cfg.random_start, f"pgd{n}") for n in cfg.pgd_steps]
  extra = [_pgd(cfg, n, cfg.extra_step_size, True, f"pgd{n}-rs") for n in cfg.pgd_steps
           if cfg.extra_step_size]
  keyed = [dataclasses.replace(a, key_path=(i,)) for i, a in enumerate(main + extra)]
  return tuple(keyed[:len(main)]), tuple(keyed[len(main):])


def _pgd(cfg: ml_collections.ConfigDict, n: int, eta: float, random_start: bool, name: str) -> AttackSpec:
  start = "random start" if random_start else "no random start"
  return AttackSpec("pgd", eps=cfg.eps, steps=n, step_size=eta, restarts=cfg.restarts,
                    random_start=random_start, last_iterate=True, name=name,
                    label=f"PGD-{n} (η={eta:.4g}, {start}, last iterate)")


class PaperProtocol:
  """Clean accuracy on the whole test split, the paper's attacks on the fixed attacked subset, and
  the same FGSM and PGD-n crafted on every other model (§4.1's black-box setting)."""

  name = "paper"
  needs_gradients = False

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.specs = paper_specs(cfg)
    self.chain: tuple[AttackSpec, ...] = ()
    self.transfer_specs = black_box_specs(cfg)

  def summarize(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    """White-box ``accuracy`` per spec; with other models, ``transfer[spec][source]`` and its mean ``black_box``."""
    del num_classes
    out = {"clean_accuracy": float(m.clean_full.mean()), "num_test": m.num_test,
           "num_attacked": int(len(m.correct[self.specs[0]])),
           "accuracy": {s.name: float(m.correct[s].mean()) for s in self.specs},
           "labels": {s.name: s.label for s in self.specs}}
    crossed = {s: m.transfer[s] for s in self.transfer_specs if m.transfer.get(s)}
    if crossed:
      out["transfer"] = {s.name: {src: float(c.mean()) for src, c in by_source.items()}
                         for s, by_source in crossed.items()}
      out["black_box"] = {s.name: float(np.mean([c.mean() for c in by_source.values()]))
                          for s, by_source in crossed.items()}
    return out
