"""The evaluation plan: a registry of evaluators built from ``config.eval``, run once per model.

Each evaluator is one module with one class (see :mod:`.base`): it
declares the :class:`~crp_jax.attacks.AttackSpec` s it needs and turns
what they measured into its section of ``results.json``. Adding an
evaluation is one module here and its name in :data:`EVALUATORS`:

* ``paper`` (:mod:`.paper`): clean accuracy, FGSM and PGD-n as in §4.1,
  white-box and black-box (FGSM and PGD-n crafted on the other models);
* ``strong`` (:mod:`.strong`, with ``eval.strong``): APGD-CE, APGD-T,
  Square, and AutoAttack's number (``eval.autoattack``: FAB-T on the
  examples they left), the masking sweeps and checks, APGD-CE transfer;
* ``certify`` (:mod:`.certified`, with ``eval.certify.sigma > 0``): the
  certified L2 accuracy of the smoothed model (randomized smoothing);
* ``flatness`` (:mod:`.flatness`, with ``eval.flatness.draws > 0``):
  ℓ(x + δ) − ℓ(x) over random draws around every test example (§4.4);
* ``saturation`` (:mod:`.saturation`, with ``eval.saturation``): the
  paper's attacks under the clipped-probability loss, with and without the
  random start, and the share of exactly zero input gradients;
* ``eps_curve`` (:mod:`.eps_curve`, with a non-empty ``eval.eps_curve``):
  PGD-20 and APGD-CE at each ε of a grid (Fig. 3).

Every per-model number a table or figure shows comes from one of these, so
it lands in the run's ``results.json``; the studies only read those files.

:func:`evaluate_models` runs a plan: every spec once per model on the
attacked subset (specs shared by evaluators run once), the gradient
statistics, every evaluator's :attr:`chain` in order on the examples still
robust (:func:`run_chain`), every evaluator's transfer attacks between
models (:func:`transfer`), then each summary.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from crp_jax import attacks
from crp_jax.attacks import AttackSpec, _autoattack
from crp_jax.data import Split
from crp_jax.runner import checkpoint
from crp_jax.runner.evaluators import batches
from crp_jax.runner.evaluators.base import Evaluator, Model
from crp_jax.runner.evaluators.certified import Certification
from crp_jax.runner.evaluators.eps_curve import EpsCurve
from crp_jax.runner.evaluators.flatness import Flatness
from crp_jax.runner.evaluators.paper import PaperProtocol
from crp_jax.runner.evaluators.saturation import Saturation
from crp_jax.runner.evaluators.strong import StrongProtocol

__all__ = ["EVALUATORS", "Entry", "Evaluator", "Model", "build_plan", "evaluate_models", "measure", "run_chain",
           "to_add", "transfer"]


class Entry(NamedTuple):
  """One registered evaluator: its class, whether ``config.eval`` turns it on, and the ``eval`` fields
  only it reads (changing those re-runs it alone; ``()``: it reads the shared fields)."""
  cls: type
  enabled: Callable[[ml_collections.ConfigDict], bool]
  fields: tuple[str, ...] = ()


#: name -> its entry, in the order the plan runs them.
EVALUATORS: dict[str, Entry] = {
    "paper": Entry(PaperProtocol, lambda cfg: True),
    "strong": Entry(StrongProtocol, lambda cfg: bool(cfg.strong)),
    "certify": Entry(Certification, lambda cfg: "certify" in cfg and cfg.certify.sigma > 0, ("certify",)),
    "flatness": Entry(Flatness, lambda cfg: "flatness" in cfg and cfg.flatness.draws > 0, ("flatness",)),
    "saturation": Entry(Saturation, lambda cfg: bool(cfg.get("saturation")), ("saturation",)),
    "eps_curve": Entry(EpsCurve, lambda cfg: bool(cfg.get("eps_curve")), ("eps_curve",)),
}


def to_add(saved: dict[str, Any], wanted: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """What a finished run evaluated with eval config ``saved`` lacks for ``wanted``.

  ``()``: nothing (the configs agree, or differ only in evaluators that
  ``saved`` ran and ``wanted`` leaves off); a tuple of names: the
  evaluators ``wanted`` turns on whose own fields differ (each can run
  alone, :func:`build_plan`'s ``only``); ``None``: a field the whole plan
  reads differs, so everything must run again.
  """
  owner = {f: name for name, e in EVALUATORS.items() for f in e.fields}
  have, want = checkpoint.flatten(saved), checkpoint.flatten(wanted.to_dict())
  changed = {k.split(".")[0] for k in set(have) | set(want) if have.get(k, "<absent>") != want.get(k, "<absent>")}
  if any(f not in owner for f in changed):
    return None
  names = {owner[f] for f in changed}
  return tuple(n for n in EVALUATORS if n in names and EVALUATORS[n].enabled(wanted))


def build_plan(cfg: ml_collections.ConfigDict, only: tuple[str, ...] | None = None) -> tuple[Evaluator, ...]:
  """The evaluators ``cfg`` (an eval config) turns on, in registry order; with ``only``, those of them named there."""
  return tuple(e.cls(cfg) for name, e in EVALUATORS.items() if e.enabled(cfg) and (only is None or name in only))


def measure(plan: tuple[Evaluator, ...], model: Model, test: Split, *, mesh: Mesh,
            progress: bool = True) -> batches.Measurements:
  """Runs every spec of ``plan`` on ``model``'s attacked subset, plus the full-split clean pass."""
  cfg = model.cfg
  indices = batches.subset_indices(test.num_examples, cfg.attack_subset)
  subset = batches.take(test, indices)
  common = dict(batch_size=cfg.batch_size, mesh=mesh, progress=progress)
  store = batches.open_store(model.state_dir, model.variables)
  specs = {s: None for e in plan for s in e.specs}
  # Clean accuracy is measured once on the whole split; the subset's is a slice of it.
  clean = AttackSpec("clean", name="clean", label="No attack")
  full = batches.run_specs(model.module, model.variables, test, (clean,), model.key, **common)[clean]
  correct = batches.run_specs(model.module, model.variables, subset,
                               tuple(s for s in specs if s.kind != "clean"), model.key, store=store, **common)
  correct.update({s: full[indices] for s in specs if s.kind == "clean"})
  gradients = None
  if any(e.needs_gradients for e in plan):
    gradients = batches.map_batches(batches.gradient_stats(model.module), model.variables, subset.images,
                                     subset.labels, model.key, desc="gradients", **common)
  chains = {e.name: run_chain(e.chain, full[indices], correct, model, subset, store=store, **common)
            for e in plan if e.chain}
  extra = {e.name: e.measure(model, test, mesh=mesh, progress=progress) for e in plan if hasattr(e, "measure")}
  return batches.Measurements(full, int(test.num_examples), correct, gradients, chains=chains, extra=extra)


def run_chain(specs: tuple[AttackSpec, ...], clean: np.ndarray, measured: dict[AttackSpec, np.ndarray],
              model: Model, subset: Split, store: batches.Store | None = None, **common) -> _autoattack.Chain:
  """``specs`` in order on the examples of ``subset`` still robust, AutoAttack's loop.

  A spec already in ``measured`` (run on the whole subset) is read there;
  the others run only on the examples every earlier spec failed on.
  """
  def run(spec: AttackSpec, idx: np.ndarray) -> tuple[np.ndarray, None]:
    if spec in measured:
      return measured[spec][idx], None
    part = batches.take(subset, idx)
    return batches.run_specs(model.module, model.variables, part, (spec,), model.key, store=store,
                             **common)[spec], None

  return _autoattack.run_in_order(specs, clean, run)


Transfer = dict[str, dict[AttackSpec, dict[str, np.ndarray]]]


def transfer(plan: tuple[Evaluator, ...], models: dict[str, Model], test: Split, *, mesh: Mesh,
             progress: bool = True, sources: tuple[str, ...] | None = None) -> Transfer:
  """Black-box accuracy among ``models``: every transfer spec of ``plan``, from every model (or those named
  in ``sources``) to every other.

  Each distinct spec of the evaluators' ``transfer_specs`` is crafted once
  per source model (key ``spec.key(first model's key)``) on the first
  model's attacked subset of ``test`` and evaluated on every other model
  (:func:`~crp_jax.runner.evaluators.batches.transfer_matrix`): §4.1's setting of
  attacking each model with examples crafted on the others. Usable on its
  own, e.g. for the black-box matrix among seeds without the white-box
  attacks. ``plan`` is the first model's (:func:`build_plan` of its config).

  Returns:
    ``out[target][spec][source]``: ``(n,)`` bool, ``target`` still correct on
    the ``n`` examples crafted on ``source``; ``{}`` with fewer than two
    models or no transfer spec.
  """
  specs = tuple(dict.fromkeys(s for e in plan for s in e.transfer_specs))
  if not specs or len(models) < 2:
    return {}
  first = next(iter(models.values()))
  subset = batches.take(test, batches.subset_indices(test.num_examples, first.cfg.attack_subset))
  pairs = {n: (m.module, m.variables) for n, m in models.items()}
  out: Transfer = {t: {} for t in models}
  for spec in specs:
    matrix = batches.transfer_matrix(pairs, subset, spec, first.key, mesh=mesh,
                                     batch_size=first.cfg.batch_size, progress=progress, sources=sources)
    for target, by_source in matrix.items():
      out[target][spec] = by_source
  return out


def evaluate_models(models: dict[str, Model], test: Split, *, mesh: Mesh, progress: bool = True,
                    only: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
  """Each model's ``results["evaluation"]``: one section per evaluator of its plan (``only``: just those named)."""
  plans = {n: build_plan(m.cfg, only) for n, m in models.items()}
  measured = {n: measure(plans[n], m, test, mesh=mesh, progress=progress) for n, m in models.items()}
  crossed = transfer(next(iter(plans.values())), models, test, mesh=mesh, progress=progress)
  out = {}
  for n, m in measured.items():
    m = m._replace(transfer=crossed.get(n, {}))
    out[n] = {e.name: e.summarize(m, test.num_classes) for e in plans[n]}
  return out
