"""What every evaluator provides: the attacks it needs and a summary of what they measured."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import ml_collections

from crp_jax.attacks import AttackSpec
from crp_jax.runner.evaluators.batches import Measurements


class Model(NamedTuple):
  """A model to evaluate: its module, eval-mode variables, eval config and root key.

  ``state_dir``: where the evaluation keeps each batch's results as it
  goes, so that one killed at any point resumes (``None``: it keeps none).
  """
  module: nn.Module
  variables: Any
  cfg: ml_collections.ConfigDict
  key: jax.Array
  state_dir: str | None = None


class Evaluator(Protocol):
  """One entry of the evaluation plan (big_vision style: one module, one class).

  The runner (:func:`crp_jax.runner.evaluators.measure`) runs the union of
  every evaluator's :attr:`specs` once per model, the gradient statistics if
  any evaluator asks for them, and the transfer attacks between models;
  then each evaluator turns the :class:`~crp_jax.runner.evaluators.batches.Measurements`
  into the JSON section ``results["evaluation"][name]``. The train loop and
  the pipeline never learn an attack's name.
  """

  #: The key of this evaluator's section in ``results.json``.
  name: str
  #: Attacks run on the attacked subset, each keyed by ``spec.key(eval key)``.
  specs: tuple[AttackSpec, ...]
  #: Attacks run after :attr:`specs`, in order, each on the examples still
  #: robust (:func:`crp_jax.attacks.run_in_order`: AutoAttack's loop); those
  #: also in :attr:`specs` are not run again. May be empty.
  chain: tuple[AttackSpec, ...]
  #: Each crafted once on every model of a comparison and evaluated on every
  #: other (:func:`crp_jax.runner.evaluators.transfer`); may be empty.
  transfer_specs: tuple[AttackSpec, ...]
  #: Whether :func:`~crp_jax.runner.evaluators.batches.gradient_stats` is needed.
  needs_gradients: bool

  def __init__(self, cfg: ml_collections.ConfigDict) -> None: ...

  def summarize(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    """The JSON-able section of this evaluator."""

  # Optional: an evaluator that measures something other than attacks (certification, flatness,
  # zero gradients) also defines
  #   measure(model: Model, test_split, *, mesh, progress) -> Any
  # which the runner calls once per model; its return value is ``Measurements.extra[name]``.
