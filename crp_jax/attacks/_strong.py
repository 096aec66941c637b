"""The strong table on one batch, in one jittable call: clean, APGD-CE, APGD-T, Square and their worst case.

Not AutoAttack: it has no FAB-T, and runs every attack on every example
(static shapes, so it jits and shards). The number to report is
:func:`~crp_jax.attacks.autoattack`'s; this is the table's per-attack
view, which ``tools/parity.py`` compares with torchattacks' same three attacks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crp_jax import _checks
from crp_jax.attacks import _core
from crp_jax.attacks._core import Clip, LogitsFn, Norm
from crp_jax.attacks._spec import run_attack, strong_attacks


def strong_eval(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array,
    norm: Norm = "linf",
    apgd_steps: int = 100,
    num_targets: int = 9,
    square_queries: int = 5000,
    clip: Clip = (0.0, 1.0),
    early_stop: bool = True,
) -> dict[str, dict[str, jax.Array]]:
  r"""Robust accuracy under APGD-CE, APGD-T and Square (:func:`strong_attacks`) and their worst case.

  Three of AutoAttack ``standard``'s four attacks (no FAB-T, so its worst
  case is an upper bound on :func:`~crp_jax.attacks.autoattack`'s robust
  accuracy), each run on every example: an example counts as
  robust only if it is classified correctly clean and after every attack,

  .. math::
    \mathrm{worst\_case}_i = \mathrm{clean}_i \wedge \mathrm{apgd\text{-}ce}_i
    \wedge \mathrm{apgd\text{-}t}_i \wedge \mathrm{square}_i.

  Every attack runs on every example (static shapes, so jittable and
  shardable). The attacks are the table of
  :func:`~crp_jax.attacks.strong_attacks`, the one the CLI's evaluation and
  the parity tool run too; attack ``a`` uses key ``fold_in(key, a)``. Square
  runs in the given norm (its L2 or L1 version) and needs NHWC inputs.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits, per-example independent.
    x: ``(B, *shape)`` inputs inside ``clip`` (NHWC for Square).
    y: ``(B,)`` integer labels.
    key: PRNG key of all attacks (one key; row ``b`` of attack ``a`` draws
      from ``fold_in(fold_in(key, a), b)``).
    eps: radius ε.
    norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    apgd_steps: iterations of APGD-CE and of APGD-T per target (static).
    num_targets: target classes of APGD-T (static, capped at C − 1).
    square_queries: query budget of Square (static).
    clip: pixel range ``(lo, hi)``, or ``None``.
    early_stop: let each attack stop once it fooled every example (same result).

  Returns:
    ``{"correct": {name: (B,) bool}, "accuracy": {name: scalar}}`` for
    ``name`` in ``("clean", "apgd-ce", "apgd-t", "square", "worst_case")``.
  """
  norm = _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps, norm_name=norm)
  for name, value in (("apgd_steps", apgd_steps), ("num_targets", num_targets), ("square_queries", square_queries)):
    _checks.count(value, name)
  table = strong_attacks(eps=eps, apgd_steps=apgd_steps, num_targets=num_targets,
                         square_queries=square_queries, norm=norm)
  correct = {"clean": _core.correct(logits_fn, x, y)}
  for spec in table:
    x_adv = run_attack(spec, logits_fn, x, y, key=spec.key(key), clip=clip, early_stop=early_stop)
    correct[spec.name] = _core.correct(logits_fn, x_adv, y)
  correct["worst_case"] = jnp.all(jnp.stack(list(correct.values())), axis=0)
  accuracy = {name: jnp.mean(c.astype(jnp.float32)) for name, c in correct.items()}
  return {"correct": correct, "accuracy": accuracy}
