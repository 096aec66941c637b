"""The saturation test: the paper's attacks under the stable and the clipped-probability loss, as an evaluator.

On with ``eval.saturation``. Many implementations compute the cross-entropy
as −log(clip(softmax(z)_y)) (Keras' ``categorical_crossentropy``): on a
confidently correct example its input gradient is exactly zero, and an
attack that starts at x stays there (PGD-n = clean). This evaluator runs
FGSM and the paper's PGD-n (the largest n) under both losses, with and
without the random start (BIM), on the attacked subset, and counts the
examples whose input gradient is exactly zero under each loss.

The stable-loss rows are the paper protocol's own specs (same key, so the
same numbers as its ``fgsm`` and ``pgd<n>``), and each clipped-probability
row starts from the same random point as its stable twin: the two losses
differ in nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from crp_jax import attacks
from crp_jax.attacks import AttackSpec
from crp_jax.data import Split, to_float
from crp_jax.runner.evaluators import batches
from crp_jax.runner.evaluators.base import Model
from crp_jax.runner.evaluators.batches import Measurements
from crp_jax.runner.evaluators.paper import black_box_specs

#: The losses compared: the stable log-softmax CE and the clipped-probability CE.
LOSSES: tuple[tuple[str, str], ...] = (("ce", "log-softmax CE"), ("prob_ce", "clipped-probability CE"))
#: BIM (no random start) rows draw nothing, but keep a key path of their own for clarity.
BIM_KEY = 13


def saturation_specs(cfg: ml_collections.ConfigDict) -> tuple[AttackSpec, ...]:
  """FGSM, PGD-n and BIM-n (n = max ``cfg.pgd_steps``) under each loss of :data:`LOSSES`.

  Names ``fgsm-<loss>``, ``pgd<n>-<loss>`` and ``bim<n>-<loss>``. FGSM and
  PGD-n are the paper protocol's specs with only the loss changed (same
  key path, so the same random start); BIM-n is PGD-n from x.
  """
  main = black_box_specs(cfg)
  fgsm = next(s for s in main if s.kind == "fgsm")
  n = max(cfg.pgd_steps)
  pgd = next(s for s in main if s.name == f"pgd{n}")
  out = []
  for loss, label in LOSSES:
    out.append(dataclasses.replace(fgsm, loss=loss, name=f"fgsm-{loss}", label=f"FGSM, {label}"))
    out.append(dataclasses.replace(pgd, loss=loss, name=f"pgd{n}-{loss}", label=f"PGD-{n}, {label}"))
    out.append(dataclasses.replace(pgd, loss=loss, random_start=False, key_path=(BIM_KEY,), name=f"bim{n}-{loss}",
                                   label=f"PGD-{n} from x (BIM), {label}"))
  return tuple(out)


def zero_gradients(module: nn.Module) -> Callable:
  """``(variables, images, labels, key) -> (B, L)`` bool: each loss of :data:`LOSSES` has an exactly zero input gradient."""
  def fn(variables, images, labels, key):
    del key
    x = to_float(images)
    out = []
    for loss, _ in LOSSES:
      total = lambda z, f=attacks.get_loss(loss): f(module.apply(variables, z, train=False), labels).sum()
      out.append(jnp.all(jax.grad(total)(x).reshape(len(x), -1) == 0, axis=-1))
    return jnp.stack(out, -1)
  return fn


class Saturation:
  """``eval.saturation``: accuracy under each saturation spec, and the share of exactly zero input
  gradients per loss, on the attacked subset."""

  name = "saturation"
  needs_gradients = False
  chain: tuple = ()
  transfer_specs: tuple = ()

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.clean = AttackSpec("clean", name="clean", label="No attack")
    self.attacks = saturation_specs(cfg)
    self.specs = (self.clean, *self.attacks)

  def measure(self, model: Model, test: Split, *, mesh: jax.sharding.Mesh, progress: bool = True) -> dict[str, float]:
    subset = batches.take(test, batches.subset_indices(test.num_examples, model.cfg.attack_subset))
    zero = batches.map_batches(zero_gradients(model.module), model.variables, subset.images, subset.labels,
                               model.key, batch_size=model.cfg.batch_size, mesh=mesh, desc="zero gradients",
                               progress=progress)
    return {loss: float(zero[:, i].mean()) for i, (loss, _) in enumerate(LOSSES)}

  def summarize(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    del num_classes
    return {"clean_subset": float(m.correct[self.clean].mean()),
            "accuracy": {s.name: float(m.correct[s].mean()) for s in self.attacks},
            "labels": {s.name: s.label for s in self.attacks},
            "zero_gradient": dict(m.extra[self.name]),
            "num_attacked": int(len(m.correct[self.clean]))}
