"""Random sign noise at the corners of the ε cube: the baseline every white-box attack must beat."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crp_jax import _checks
from crp_jax.attacks import _core
from crp_jax.attacks._core import LogitsFn


def random_noise(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: float,
                 num_samples: int) -> jax.Array:
  """The first of ``num_samples`` random sign perturbations ``x ± ε`` that fools the model.

  A corner of the ε cube is the strongest place for random L∞ noise; sample
  ``s`` is ``clip(x + ε·sign(u)), u ~ U(−1, 1)``; row ``b`` draws it with
  ``fold_in(key_b, s)`` of its own key (:func:`~crp_jax.attacks.example_keys`).
  If none fools the model, returns ``x``. Shapes: ``(B, ...) -> (B, ...)``;
  pixels in ``[0, 1]``.
  """
  _checks.attack_inputs(logits_fn, x, y, eps=eps)
  _checks.count(num_samples, "num_samples")
  keys = _core.row_keys(key, x.shape[0])

  def body(i, carry):
    x_adv, fooled = carry
    draw = lambda k: jax.random.uniform(k, x.shape[1:], minval=-1.0)
    noise = eps * jnp.sign(_core.per_row(_core.fold_rows(keys, i), draw))
    cand = jnp.clip(x + noise, 0.0, 1.0)
    hit = jnp.argmax(logits_fn(cand), -1) != y
    return jnp.where(_core.rows_like(hit & ~fooled, x), cand, x_adv), fooled | hit

  # A fooled row never changes again, so the loop may stop once all are.
  fooled = jnp.argmax(logits_fn(x), -1) != y
  return _core.steps_until_done(num_samples, body, (x, fooled), lambda carry: carry[1])[0]
