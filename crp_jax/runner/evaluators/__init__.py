"""The evaluation plan: a registry of evaluators built from ``config.eval``, run once per model.

Each evaluator is one module with one class (see :mod:`.base`): it
declares the :class:`~crp_jax.attacks.AttackSpec` s it needs and turns
what they measured into its section of ``results.json``. Adding an
evaluation is one module here and its name in :data:`EVALUATORS`:

* ``paper`` (:mod:`.paper`): clean accuracy, FGSM and PGD-n as in §4.1;
* ``strong`` (:mod:`.strong`, with ``eval.strong``): APGD-CE, APGD-T,
  Square and their worst case, the masking sweeps and checks, transfer.

:func:`evaluate_models` runs a plan: every spec once per model on the
attacked subset (specs shared by evaluators run once), the gradient
statistics, the transfer attacks between models, then each summary.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh

from crp_jax.attacks import AttackSpec
from crp_jax.data import Split
from crp_jax.runner import evaluate
from crp_jax.runner.evaluators.base import Evaluator
from crp_jax.runner.evaluators.paper import PaperProtocol
from crp_jax.runner.evaluators.strong import StrongProtocol

#: name -> (evaluator class, whether ``config.eval`` turns it on).
EVALUATORS: dict[str, tuple[type, Callable[[ml_collections.ConfigDict], bool]]] = {
    "paper": (PaperProtocol, lambda cfg: True),
    "strong": (StrongProtocol, lambda cfg: bool(cfg.strong)),
}


def build_plan(cfg: ml_collections.ConfigDict) -> tuple[Evaluator, ...]:
  """The evaluators ``cfg`` (an eval config) turns on, in registry order."""
  return tuple(cls(cfg) for cls, enabled in EVALUATORS.values() if enabled(cfg))


class Model(NamedTuple):
  """A model to evaluate: its module, eval-mode variables, eval config and root key."""
  module: nn.Module
  variables: Any
  cfg: ml_collections.ConfigDict
  key: jax.Array


def measure(plan: tuple[Evaluator, ...], model: Model, test: Split, *, mesh: Mesh,
            progress: bool = True) -> evaluate.Measurements:
  """Runs every spec of ``plan`` on ``model``'s attacked subset, plus the full-split clean pass."""
  cfg = model.cfg
  indices = evaluate.subset_indices(test.num_examples, cfg.attack_subset)
  subset = evaluate.take(test, indices)
  common = dict(batch_size=cfg.batch_size, mesh=mesh, progress=progress)
  specs = {s: None for e in plan for s in e.specs}
  # Clean accuracy is measured once on the whole split; the subset's is a slice of it.
  clean = AttackSpec("clean", name="clean", label="No attack")
  full = evaluate.run_specs(model.module, model.variables, test, (clean,), model.key, **common)[clean]
  correct = evaluate.run_specs(model.module, model.variables, subset,
                               tuple(s for s in specs if s.kind != "clean"), model.key, **common)
  correct.update({s: full[indices] for s in specs if s.kind == "clean"})
  gradients = None
  if any(e.needs_gradients for e in plan):
    gradients = evaluate.map_batches(evaluate.gradient_stats(model.module), model.variables, subset.images,
                                     subset.labels, model.key, desc="gradients", **common)
  return evaluate.Measurements(full, int(test.num_examples), correct, gradients)


def transfer(plan: tuple[Evaluator, ...], models: dict[str, Model], test: Split, *, mesh: Mesh,
             progress: bool = True) -> dict[str, dict[str, Any]]:
  """``out[target][source]``: per-example correctness under each plan's transfer attack (first model's settings)."""
  spec = next((e.transfer_spec for e in plan if e.transfer_spec is not None), None)
  if spec is None or len(models) < 2:
    return {}
  first = next(iter(models.values()))
  subset = evaluate.take(test, evaluate.subset_indices(test.num_examples, first.cfg.attack_subset))
  return evaluate.transfer_matrix({n: (m.module, m.variables) for n, m in models.items()}, subset, spec,
                                  first.key, mesh=mesh, batch_size=first.cfg.batch_size, progress=progress)


def evaluate_models(models: dict[str, Model], test: Split, *, mesh: Mesh,
                    progress: bool = True) -> dict[str, dict[str, Any]]:
  """Each model's ``results["evaluation"]``: one section per evaluator of its plan."""
  plans = {n: build_plan(m.cfg) for n, m in models.items()}
  measured = {n: measure(plans[n], m, test, mesh=mesh, progress=progress) for n, m in models.items()}
  crossed = transfer(next(iter(plans.values())), models, test, mesh=mesh, progress=progress)
  out = {}
  for n, m in measured.items():
    m = m._replace(transfer=crossed.get(n, {}))
    out[n] = {e.name: e.summarize(m, test.num_classes) for e in plans[n]}
  return out
