"""Loss flatness around test examples (§4.4): ℓ(x + δ) − ℓ(x) over random draws of δ, as an evaluator.

On with ``eval.flatness.draws > 0``. δ follows ``eval.flatness``'s law
(U(−ε, ε) or N(0, ε²), the training perturbations' family), and x + δ is
clipped to [0, 1]. The whole test split is measured, in batches of
``eval.batch_size`` keyed ``fold_in(fold_in(eval key, FLATNESS_KEY), b)``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from crp_jax.data import Split, to_float
from crp_jax.runner.evaluators import batches
from crp_jax.runner.evaluators.base import Model
from crp_jax.runner.evaluators.batches import Measurements

#: The flatness draws come from ``fold_in(eval key, FLATNESS_KEY)``.
FLATNESS_KEY = 11


def loss_difference(module: nn.Module, draws: int, eps: float, distribution: str) -> Callable:
  """``(variables, images, labels, key) -> (B,)``: the mean over ``draws`` of ℓ(clip(x + δ)) − ℓ(x).

  ℓ is the softmax cross-entropy of ``module`` in eval mode; δ has the
  shape of ``x`` (B, H, W, C), drawn from U(−ε, ε) (``uniform``) or
  N(0, ε²) (``gaussian``) with one key for the whole batch.
  """
  def fn(variables, images, labels, key):
    x = to_float(images)
    loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(module.apply(variables, z, train=False),
                                                                     labels)
    shape = (draws, *x.shape)
    unit = (jax.random.uniform(key, shape, x.dtype, -1.0, 1.0) if distribution == "uniform"
            else jax.random.normal(key, shape, x.dtype))
    perturbed = jax.lax.map(loss, jnp.clip(x[None] + eps * unit, 0.0, 1.0))
    return (perturbed - loss(x)[None]).mean(0)
  return fn


class Flatness:
  """``eval.flatness``: per test example the mean of ℓ(x + δ) − ℓ(x) over the draws; the section holds
  its mean and variance over the whole test split."""

  name = "flatness"
  needs_gradients = False
  specs: tuple = ()
  chain: tuple = ()
  transfer_specs: tuple = ()

  def __init__(self, cfg: ml_collections.ConfigDict):
    f = cfg.flatness
    self.draws, self.eps, self.distribution = int(f.draws), float(f.eps), str(f.distribution)

  def measure(self, model: Model, test: Split, *, mesh: jax.sharding.Mesh, progress: bool = True) -> dict[str, Any]:
    fn = loss_difference(model.module, self.draws, self.eps, self.distribution)
    diffs = batches.map_batches(fn, model.variables, test.images, test.labels,
                                jax.random.fold_in(model.key, FLATNESS_KEY), batch_size=model.cfg.batch_size,
                                mesh=mesh, desc="flatness", progress=progress)
    return {"mean": float(diffs.mean()), "variance": float(diffs.var()), "num_examples": int(len(diffs)),
            "draws": self.draws, "eps": self.eps, "distribution": self.distribution}

  def summarize(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    del num_classes
    return dict(m.extra[self.name])
