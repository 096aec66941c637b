"""The evaluation runner: runs attack specs per example on the data mesh, and the transfer matrix.

Every number is computed per example first (a boolean "still correct"), so
a worst case over attacks, masking checks and reports are built on the same
examples. Which attacks run is the evaluation plan's business
(:mod:`crp_jax.runner.evaluators`); this module only runs
:class:`~crp_jax.attacks.AttackSpec` s. Attacks run in fixed-size batches
sharded along the ``data`` axis of the mesh; each attack compiles once, and
specs with equal settings run once. The radius ε and PGD's step η of the
gradient attacks are operands of their programs, not constants, so a sweep
over ε (the masking checks' ε grid, Fig. 3's curve) compiles each attack once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from crp_jax import attacks
from crp_jax.attacks import AttackSpec, _autoattack
from crp_jax.data import Split, to_float
from crp_jax.runner import distributed


class Measurements(NamedTuple):
  """Everything measured on one model, per example.

  Attributes:
    clean_full: ``(N,)`` bool, correct on each example of the whole test split.
    num_test: ``N``.
    correct: spec -> ``(n,)`` bool, still correct after the attack, on the
      attacked subset of ``n`` examples.
    gradients: ``(n, 3)`` :func:`gradient_stats` on the subset, or ``None``.
    transfer: spec -> source model -> ``(n,)`` bool, still correct under
      the spec's examples crafted on that source (empty with one model).
    chains: evaluator name -> its :attr:`chain` run in order on the subset
      (:class:`~crp_jax.attacks._autoattack.Chain`).
    extra: evaluator name -> what its own ``measure`` returned, for an
      evaluator that measures something other than attacks (certification).
  """
  clean_full: np.ndarray
  num_test: int
  correct: dict[AttackSpec, np.ndarray]
  gradients: np.ndarray | None = None
  transfer: dict[AttackSpec, dict[str, np.ndarray]] = {}
  chains: dict[str, _autoattack.Chain] = {}
  extra: dict[str, Any] = {}


def subset_indices(num_examples: int, size: int) -> np.ndarray:
  """A fixed subset of the test split, the same for every model and seed.

  ``size == 0`` or ``size >= num_examples`` selects the whole split.
  """
  if size == 0 or size >= num_examples:
    return np.arange(num_examples)
  return np.sort(np.random.default_rng(2024).permutation(num_examples)[:size])


def take(split: Split, indices: np.ndarray) -> Split:
  """The examples ``indices`` of ``split`` (their ids are kept)."""
  return Split(images=split.images[indices], labels=split.labels[indices], ids=split.ids[indices],
               num_classes=split.num_classes, image_shape=split.image_shape)


def map_batches(fn: Callable, variables: Any, images: np.ndarray, labels: np.ndarray,
                key: jax.Array, *, batch_size: int, mesh: Mesh, desc: str = "",
                progress: bool = True, operands: tuple[float, ...] = ()) -> np.ndarray:
  """Runs ``fn(variables, images, labels, key, *operands) -> (batch, ...)`` over all examples.

  Batches are sharded along the mesh's ``data`` axis, each process putting
  its own rows (:func:`~crp_jax.runner.distributed.global_batch`), and
  every process gets all the outputs. The last batch is
  padded with copies of the first examples (their results dropped), so
  every batch has one shape and ``fn`` compiles once. Batch ``b`` gets the
  key ``fold_in(key, b)``. ``operands`` are scalars passed replicated:
  calls with the same ``fn`` and new operand values reuse its program.

  Returns:
    ``(N, ...)`` numpy array, the concatenated per-example outputs.
  """
  n = len(labels)
  if n == 0:
    raise ValueError("no examples to evaluate")
  pad = (-n) % batch_size
  idx = np.concatenate([np.arange(n), np.arange(pad) % n])
  data = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  # Replicated outputs, so every process can fetch the whole batch's results.
  jitted = jax.jit(fn, in_shardings=(replicated, data, data, replicated) + (replicated,) * len(operands),
                   out_shardings=replicated)
  variables = distributed.replicate(variables, mesh)
  scalars = [np.float32(v) for v in operands]
  out = []
  for b in tqdm(range(len(idx) // batch_size), desc=desc, disable=not progress, leave=False):
    sl = idx[b * batch_size:(b + 1) * batch_size]
    batch = [distributed.global_batch(data, a[sl]) for a in (images, labels)]
    # Fetched per batch, so the progress bar follows the work, not the dispatch.
    out.append(jax.device_get(jitted(variables, *batch, jax.random.fold_in(key, b), *scalars)))
  return np.concatenate(out)[:n]


def correct_under(model: nn.Module, spec: AttackSpec) -> Callable:
  """``(variables, images_uint8, labels, key) -> (batch,) bool``: correct after ``spec``'s attack."""

  def correct(variables, images, labels, key):
    logits_fn = lambda z: model.apply(variables, z, train=False)
    x_adv = attacks.run_attack(spec, logits_fn, to_float(images), labels, key=key)
    return jnp.argmax(logits_fn(x_adv), axis=-1) == labels

  return correct


#: Attack kinds whose ε and η enter their programs as operands (their code is plain array arithmetic in both).
RADIUS_OPERAND_KINDS = ("fgsm", "pgd", "apgd", "apgd_t")


def _correct_at_radius(model: nn.Module, spec: AttackSpec) -> Callable:
  """:func:`correct_under` of ``spec`` with ``(eps, step_size)`` as two extra traced arguments."""

  def correct(variables, images, labels, key, eps, step_size):
    at = dataclasses.replace(spec, eps=eps, step_size=step_size)
    return correct_under(model, at)(variables, images, labels, key)

  return correct


def run_specs(model: nn.Module, variables: Any, split: Split, specs: tuple[AttackSpec, ...],
              root_key: jax.Array, *, batch_size: int, mesh: Mesh,
              progress: bool = True) -> dict[AttackSpec, np.ndarray]:
  """Per-example correctness of ``model`` on ``split`` under each spec, each keyed by ``spec.key(root_key)``.

  Specs with equal :meth:`~crp_jax.attacks.AttackSpec.settings` run once and share the result; specs
  of :data:`RADIUS_OPERAND_KINDS` that differ only in ε, η, key or name share one program.
  """
  done: dict[tuple, np.ndarray] = {}
  programs: dict[tuple, Callable] = {}
  out = {}
  for spec in specs:
    if spec.settings() not in done:
      fn, operands = correct_under(model, spec), ()
      if spec.kind in RADIUS_OPERAND_KINDS:
        shape = dataclasses.replace(spec, eps=0.0, step_size=0.0, key_path=(), name="", label="")
        fn = programs.setdefault(shape.settings(), _correct_at_radius(model, shape))
        operands = (spec.eps, spec.step_size)
      done[spec.settings()] = map_batches(fn, variables, split.images, split.labels, spec.key(root_key),
                                          batch_size=batch_size, mesh=mesh, desc=spec.name,
                                          progress=progress, operands=operands)
    out[spec] = done[spec.settings()]
  return out


def gradient_stats(model: nn.Module) -> Callable:
  """``(variables, images, labels, key) -> (batch, 3)``: ‖∇ₓCE‖₁, logits row sum, min logit."""

  def fn(variables, images, labels, key):
    del key
    x = to_float(images)
    logits_fn = lambda z: model.apply(variables, z, train=False)
    loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(logits_fn(z), labels).sum()
    grad = jax.grad(loss)(x)
    logits = logits_fn(x)
    return jnp.stack([jnp.abs(grad).reshape(len(x), -1).sum(-1), logits.sum(-1), logits.min(-1)], -1)

  return fn


def transfer_matrix(models: dict[str, tuple[nn.Module, Any]], split: Split, spec: AttackSpec,
                    root_key: jax.Array, *, mesh: Mesh, batch_size: int, progress: bool = True,
                    sources: tuple[str, ...] | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Black-box transfer between ordered pairs of models, in one pass per source.

  Adversarial examples are crafted with ``spec`` (key ``spec.key(root_key)``)
  against each source (every model, or those named in ``sources``) and
  evaluated on every other model (the paper's protocol of attacking each
  model with examples from the others, and Table 8's standard and
  adversarially trained sources).

  Returns:
    ``out[target][source]``: ``(N,)`` bool, target still correct.
  """
  key = spec.key(root_key)
  out: dict[str, dict[str, np.ndarray]] = {t: {} for t in models}
  for s_name, (s_model, s_vars) in models.items():
    if sources is not None and s_name not in sources:
      continue
    x_adv = map_batches(_crafter(s_model, spec), s_vars, split.images, split.labels, key,
                        batch_size=batch_size, mesh=mesh, desc=f"{spec.name} on {s_name}",
                        progress=progress)
    for t_name, (t_model, t_vars) in models.items():
      if t_name != s_name:
        out[t_name][s_name] = map_batches(_correct_on_float(t_model), t_vars, x_adv, split.labels, key,
                                          batch_size=batch_size, mesh=mesh, progress=False)
  return out


def _crafter(model: nn.Module, spec: AttackSpec) -> Callable:
  def craft(variables, images, labels, key):
    logits_fn = lambda z: model.apply(variables, z, train=False)
    return attacks.run_attack(spec, logits_fn, to_float(images), labels, key=key)
  return craft


def _correct_on_float(model: nn.Module) -> Callable:
  def correct(variables, x, labels, key):
    del key
    return jnp.argmax(model.apply(variables, x, train=False), axis=-1) == labels
  return correct
