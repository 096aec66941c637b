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
  ``s`` is ``clip(x + ε·sign(u)), u ~ U(−1, 1)`` with key ``fold_in(key, s)``.
  If none fools the model, returns ``x``. Shapes: ``(B, ...) -> (B, ...)``;
  pixels in ``[0, 1]``.
  """
  _checks.attack_inputs(logits_fn, x, y, eps=eps)
  _checks.count(num_samples, "num_samples")

  def body(i, carry):
    x_adv, fooled = carry
    noise = eps * jnp.sign(jax.random.uniform(jax.random.fold_in(key, i), x.shape, minval=-1.0))
    cand = jnp.clip(x + noise, 0.0, 1.0)
    hit = jnp.argmax(logits_fn(cand), -1) != y
    return jnp.where(_core.rows_like(hit & ~fooled, x), cand, x_adv), fooled | hit

  # A fooled row never changes again, so the loop may stop once all are.
  fooled = jnp.argmax(logits_fn(x), -1) != y
  return _core.steps_until_done(num_samples, body, (x, fooled), lambda carry: carry[1])[0]
