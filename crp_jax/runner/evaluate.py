"""Robustness evaluation on the data mesh: clean, FGSM and PGD-n (the paper's protocol).

Every number is computed per example first (a boolean "still correct"), so
a worst case over attacks, masking diagnostics and reports can be built on
the same examples. Attacks run in fixed-size batches sharded along the
``data`` axis of the mesh; each attack compiles once.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from crp_jax import attacks
from crp_jax.data import Split, to_float

LogitsFn = Callable[[jax.Array], jax.Array]
#: ``attack(logits_fn, x, y, key) -> x_adv``; ``None`` means the clean input.
Attack = Callable[[LogitsFn, jax.Array, jax.Array, jax.Array], jax.Array] | None


def subset_indices(num_examples: int, size: int) -> np.ndarray:
  """A fixed subset of the test split, the same for every model and seed.

  ``size == 0`` or ``size >= num_examples`` selects the whole split.
  """
  if size == 0 or size >= num_examples:
    return np.arange(num_examples)
  return np.sort(np.random.default_rng(2024).permutation(num_examples)[:size])


def paper_attacks(cfg: ml_collections.ConfigDict) -> dict[str, Attack]:
  """The paper's protocol (§4.1): FGSM and PGD-n with step η, at radius ε.

  With ``cfg.extra_step_size > 0`` each PGD-n is also run with that step
  and a random start (the standard protocol: the paper's η = 1/255 cannot
  cross the MNIST ball of ε = 0.3 in 100 steps).
  """
  out: dict[str, Attack] = {
      "clean": None,
      "fgsm": lambda f, x, y, k: attacks.fgsm(f, x, y, eps=cfg.eps),
  }
  for n in cfg.pgd_steps:
    out[f"pgd{n}"] = functools.partial(_pgd, eps=cfg.eps, step_size=cfg.step_size, num_steps=n,
                                       restarts=cfg.restarts, random_start=cfg.random_start)
  if cfg.extra_step_size:
    for n in cfg.pgd_steps:
      out[f"pgd{n}-rs"] = functools.partial(_pgd, eps=cfg.eps, step_size=cfg.extra_step_size,
                                            num_steps=n, restarts=cfg.restarts, random_start=True)
  return out


def _pgd(f: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, **kw: Any) -> jax.Array:
  return attacks.pgd(f, x, y, key=key, **kw)


def attack_label(name: str, cfg: ml_collections.ConfigDict) -> str:
  """A human-readable row name such as ``PGD-100 (η=0.0039)``."""
  if name.startswith("pgd"):
    rs = name.endswith("-rs")
    n = name[3:].removesuffix("-rs")
    eta = cfg.extra_step_size if rs else cfg.step_size
    return f"PGD-{n} (η={eta:.4g}{', random start' if rs or cfg.random_start else ''})"
  return {"clean": "No attack", "fgsm": "FGSM"}.get(name, name)


def make_correct_fn(model: nn.Module, attack: Attack) -> Callable:
  """``(variables, images_uint8, labels, key) -> (batch,) bool``: correct after ``attack``."""

  def correct(variables, images, labels, key):
    logits_fn = lambda z: model.apply(variables, z, train=False)
    x = to_float(images)
    x_adv = x if attack is None else attack(logits_fn, x, labels, key)
    return jnp.argmax(logits_fn(x_adv), axis=-1) == labels

  return correct


def per_example(fn: Callable, variables: Any, images: np.ndarray, labels: np.ndarray,
                key: jax.Array, *, batch_size: int, mesh: Mesh, desc: str = "",
                progress: bool = True) -> np.ndarray:
  """Runs ``fn(variables, images, labels, key) -> (batch, ...)`` over all examples.

  Batches are sharded along the mesh's ``data`` axis. The last batch is
  padded with copies of the first examples (their results dropped), so
  every batch has one shape and ``fn`` compiles once. Batch ``b`` gets the
  key ``fold_in(key, b)``.

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
  jitted = jax.jit(fn, in_shardings=(replicated, data, data, replicated), out_shardings=data)
  variables = jax.device_put(variables, replicated)
  out = []
  for b in tqdm(range(len(idx) // batch_size), desc=desc, disable=not progress, leave=False):
    sl = idx[b * batch_size:(b + 1) * batch_size]
    # Fetched per batch, so the progress bar follows the work, not the dispatch.
    out.append(jax.device_get(jitted(variables, images[sl], labels[sl], jax.random.fold_in(key, b))))
  return np.concatenate(out)[:n]


def evaluate_attacks(model: nn.Module, variables: Any, split: Split, named: dict[str, Attack],
                     key: jax.Array, *, batch_size: int, mesh: Mesh,
                     progress: bool = True) -> dict[str, np.ndarray]:
  """Per-example correctness of ``model`` under each attack of ``named``."""
  return {name: per_example(make_correct_fn(model, attack), variables, split.images,
                                    split.labels, jax.random.fold_in(key, i), batch_size=batch_size,
                                    mesh=mesh, desc=name, progress=progress)
          for i, (name, attack) in enumerate(named.items())}


def take(split: Split, indices: np.ndarray) -> Split:
  """The examples ``indices`` of ``split`` (their ids are kept)."""
  return Split(images=split.images[indices], labels=split.labels[indices], ids=split.ids[indices],
               num_classes=split.num_classes, image_shape=split.image_shape)


def paper_protocol(model: nn.Module, variables: Any, test: Split, cfg: ml_collections.ConfigDict,
                   key: jax.Array, *, mesh: Mesh, progress: bool = True) -> dict[str, Any]:
  """Clean accuracy on the whole test split, and the paper's attacks on a fixed subset.

  Returns a dict with ``clean_accuracy`` (full split), ``num_test``,
  ``num_attacked``, ``accuracy`` (name -> fraction on the subset) and
  ``correct`` (name -> per-example bool array, not for JSON).
  """
  full = per_example(make_correct_fn(model, None), variables, test.images, test.labels, key,
                             batch_size=cfg.batch_size, mesh=mesh, desc="clean", progress=progress)
  indices = subset_indices(test.num_examples, cfg.attack_subset)
  subset = take(test, indices)
  named = {k: v for k, v in paper_attacks(cfg).items() if v is not None}
  correct = {"clean": full[indices], **evaluate_attacks(model, variables, subset, named, key,
                                                        batch_size=cfg.batch_size, mesh=mesh,
                                                        progress=progress)}
  return {"clean_accuracy": float(full.mean()), "num_test": int(test.num_examples),
          "num_attacked": int(subset.num_examples),
          "accuracy": {k: float(v.mean()) for k, v in correct.items()}, "correct": correct,
          "labels": {k: attack_label(k, cfg) for k in correct}}


def transfer_matrix(models: dict[str, tuple[nn.Module, Any]], split: Split, attack: Attack,
                    key: jax.Array, *, mesh: Mesh, batch_size: int,
                    progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
  """Black-box transfer between every ordered pair of models, in one pass per source.

  Adversarial examples are crafted with ``attack`` against each source and
  evaluated on every other model (the paper's protocol of attacking each
  model with examples from the others, and Table 8's standard and
  adversarially trained sources).

  Returns:
    ``out[target][source]``: ``(N,)`` bool, target still correct.
  """
  out: dict[str, dict[str, np.ndarray]] = {t: {} for t in models}
  for s_name, (s_model, s_vars) in models.items():
    craft = _crafter(s_model, attack)
    x_adv = per_example(craft, s_vars, split.images, split.labels, key, batch_size=batch_size,
                        mesh=mesh, desc=f"craft on {s_name}", progress=progress)
    for t_name, (t_model, t_vars) in models.items():
      if t_name != s_name:
        out[t_name][s_name] = per_example(_correct_on_float(t_model), t_vars, x_adv, split.labels, key,
                                          batch_size=batch_size, mesh=mesh, progress=False)
  return out


def _crafter(model: nn.Module, attack: Attack) -> Callable:
  def craft(variables, images, labels, key):
    return attack(lambda z: model.apply(variables, z, train=False), to_float(images), labels, key)
  return craft


def _correct_on_float(model: nn.Module) -> Callable:
  def correct(variables, x, labels, key):
    del key
    return jnp.argmax(model.apply(variables, x, train=False), axis=-1) == labels
  return correct
