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
import os
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from crp_jax import attacks
from crp_jax.attacks import AttackSpec, _autoattack, _chain_state
from crp_jax.data import Split, to_float
from crp_jax.runner import atomic, distributed


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


class Store(NamedTuple):
  """Each batch's results of an evaluation in ``folder``, written as they finish, so a killed one resumes.

  A result is saved under a tag that fingerprints everything it depends on
  (the attack's settings, its key, the examples' ids, ε and η, the batch
  size and, through ``salt``, the model's variables), one file per batch,
  atomically; an evaluation started again reads the batches it finds and
  computes only the rest. Every draw is per example, so the bits are those
  of an uninterrupted run. Single-process runs only (with several
  processes, each would need the same files).
  """

  folder: str
  salt: str

  def _path(self, tag: str, batch: int) -> str:
    return os.path.join(self.folder, f"{tag[:32]}-{batch}.npz")

  def load(self, tag: str, batch: int) -> np.ndarray | None:
    path = self._path(tag, batch)
    if not os.path.exists(path):
      return None
    with np.load(path, allow_pickle=False) as f:
      return f["result"]

  def save(self, tag: str, batch: int, array: np.ndarray) -> None:
    atomic.write_arrays(self._path(tag, batch), {"result": array})


def open_store(folder: str | None, variables: Any) -> Store | None:
  """A :class:`Store` in ``folder`` for a model with ``variables``; ``None`` without a folder or with several processes."""
  if folder is None or jax.process_count() > 1:
    return None
  os.makedirs(folder, exist_ok=True)
  return Store(folder, _chain_state.fingerprint(*jax.tree.leaves(variables)))


def _call(fn: Callable, per_example: bool, variables: Any, images: jax.Array, labels: jax.Array,
          ids: jax.Array, key: jax.Array, *operands: jax.Array) -> jax.Array:
  """``fn`` on one batch, with the examples' own keys (``per_example``) or the batch's key."""
  return fn(variables, images, labels, attacks.example_keys(key, ids) if per_example else key, *operands)


def map_batches(fn: Callable, variables: Any, images: np.ndarray, labels: np.ndarray,
                key: jax.Array, *, batch_size: int, mesh: Mesh, desc: str = "",
                progress: bool = True, operands: tuple[float, ...] = (),
                ids: np.ndarray | None = None, store: Store | None = None, tag: str = "") -> np.ndarray:
  """Runs ``fn(variables, images, labels, key, *operands) -> (batch, ...)`` over all examples.

  Batches are sharded along the mesh's ``data`` axis, each process putting
  its own rows (:func:`~crp_jax.runner.distributed.global_batch`), and
  every process gets all the outputs. The last batch is
  padded with copies of the first examples (their results dropped), so
  every batch has one shape and ``fn`` compiles once. With ``store``, each
  batch's result is saved under ``tag`` and read back instead of computed
  when it is there. Batch ``b`` gets the
  key ``fold_in(key, b)``; with ``ids`` (``(N,)`` the examples' ids) ``fn``
  gets ``(batch,)`` keys instead, ``fold_in(key, ids[i])`` for example
  ``i``, the same whatever the batch size. ``operands`` are scalars passed
  replicated: calls with the same ``fn`` and new operand values reuse its
  program.

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
  per_example = ids is not None
  # Replicated outputs, so every process can fetch the whole batch's results. `fn` is a static
  # argument of one top-level function, so calls with the same `fn` reuse its program.
  jitted = jax.jit(_call, static_argnums=(0, 1), out_shardings=replicated,
                   in_shardings=(replicated, data, data, data, replicated) + (replicated,) * len(operands))
  variables = distributed.replicate(variables, mesh)
  scalars = [np.float32(v) for v in operands]
  ids = np.asarray(ids if per_example else np.arange(n), np.int32)
  out = []
  for b in tqdm(range(len(idx) // batch_size), desc=desc, disable=not progress, leave=False):
    saved = store.load(tag, b) if store is not None else None
    if saved is not None:
      out.append(saved)
      continue
    sl = idx[b * batch_size:(b + 1) * batch_size]
    batch = [distributed.global_batch(data, a[sl]) for a in (images, labels, ids)]
    batch_key = key if per_example else jax.random.fold_in(key, b)
    # Fetched per batch, so the progress bar follows the work, not the dispatch.
    out.append(jax.device_get(jitted(fn, per_example, variables, *batch, batch_key, *scalars)))
    if store is not None:
      store.save(tag, b, out[-1])
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
              progress: bool = True, store: Store | None = None) -> dict[AttackSpec, np.ndarray]:
  """Per-example correctness of ``model`` on ``split`` under each spec, each keyed by ``spec.key(root_key)``.

  Example ``i`` draws from ``fold_in(spec.key(root_key), split.ids[i])``,
  so its draws are the same in any batch, subset or chunk of the split.

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
      key = spec.key(root_key)
      tag = "" if store is None else _chain_state.fingerprint(
          store.salt, spec.settings(), key, split.ids, operands, batch_size, mesh.devices.size)
      done[spec.settings()] = map_batches(fn, variables, split.images, split.labels, key,
                                          batch_size=batch_size, mesh=mesh, desc=spec.name,
                                          progress=progress, operands=operands, ids=split.ids,
                                          store=store, tag=tag)
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
                        progress=progress, ids=split.ids)
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
