"""FGSM and PGD (§2, Eq. 3–4 of the paper)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crp_jax.attacks import _core
from crp_jax.attacks._core import Best, Clip, LogitsFn, LogitsLossFn, Norm


def fgsm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    eps: float | jax.Array,
    clip: Clip = (0.0, 1.0),
) -> jax.Array:
  r"""Fast gradient sign method (Goodfellow et al. 2014; Eq. 3 of the paper).

  .. math::
    x_{adv} = \mathrm{clip}\big(x + \epsilon\,\mathrm{sign}(\nabla_x \ell_{CE}(f(x), y))\big).

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits.
    x: ``(B, *shape)`` inputs inside ``clip``.
    y: ``(B,)`` integer labels.
    eps: L∞ radius ε.
    clip: pixel range ``(lo, hi)``, or ``None``.

  Returns:
    ``(B, *shape)`` adversarial inputs, ``‖x_adv − x‖∞ ≤ ε``.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([[1., -1.], [-1., 1.]])
    >>> x, y = jnp.array([[0.6, 0.4]]), jnp.array([0])
    >>> fgsm(lambda x: x @ w, x, y, eps=0.1)
    Array([[0.5, 0.5]], dtype=float32)

  References:
    Goodfellow, Shlens, Szegedy, *Explaining and Harnessing Adversarial
    Examples*, ICLR 2015.
  """
  eps = _core.as_scalar(eps, x)
  _, _, grad = _core.loss_and_grad(logits_fn, _core.ce_loss, x, y)
  return _core.project(x + eps * jnp.sign(grad), x, eps, "linf", clip)


def _pgd_run(logits_fn: LogitsFn, loss_fn: LogitsLossFn, x: jax.Array, y: jax.Array,
             x_start: jax.Array, eps: jax.Array, step_size: jax.Array, num_steps: int,
             norm: Norm, clip: Clip, early_stop: bool) -> Best:
  """PGD from ``x_start`` around ``x``; per row the best of the ``num_steps + 1`` iterates."""
  def body(_, carry):
    x_k, best = carry
    loss, logits, grad = _core.loss_and_grad(logits_fn, loss_fn, x_k, y)
    best = _core.update_best(best, Best(x_k, loss, _core.misclassified(logits, y)))
    x_next = x_k + step_size * _core.ascent_direction(grad, norm)
    return _core.project(x_next, x, eps, norm, clip), best

  x_last, best = _core.steps_until_done(num_steps, body, (x_start, Best.empty(x)),
                                        lambda carry: carry[1].adv, early_stop)
  # The last iterate needs only a forward pass.
  logits = logits_fn(x_last)
  return _core.update_best(best, Best(x_last, loss_fn(logits, y), _core.misclassified(logits, y)))


def pgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array,
    step_size: float | jax.Array,
    num_steps: int,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    norm: Norm = "linf",
    clip: Clip = (0.0, 1.0),
    early_stop: bool = True,
) -> jax.Array:
  r"""Projected gradient ascent (Madry et al. 2018; Eq. 4 of the paper).

  From a random start in the ball, ``num_steps`` times

  .. math::
    x^{(k+1)} = \Pi_{B_\epsilon(x) \cap [lo, hi]^d}\big(x^{(k)} + \alpha\, d(\nabla \ell(x^{(k)}))\big),

  with ``d(g) = sign(g)`` for L∞ and ``g/‖g‖₂`` for L2. Per example the run
  returns the first misclassified iterate, else the one of highest loss
  (not just the last). Restart ``r`` starts from a draw with key
  ``fold_in(key, r)``; across restarts each example keeps the first
  adversarial point, else the highest-loss one, so more restarts never give
  a worse point. The restarts run as one batch of ``restarts·B`` rows.

  Jit it with the model closed over, e.g.
  ``jax.jit(lambda x, y, k: pgd(f, x, y, key=k, eps=0.3, step_size=0.01, num_steps=40))``.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits, per-example independent.
    x: ``(B, *shape)`` inputs inside ``clip``.
    y: ``(B,)`` integer labels.
    key: PRNG key of the random starts.
    eps: radius ε.
    step_size: step α.
    num_steps: number of gradient steps (static).
    restarts: number of runs (static).
    random_start: start at a uniform point of the ball; else at ``x``.
    loss: ``"ce"`` (cross-entropy) or ``"margin"`` (``max_{j≠y} z_j − z_y``).
    norm: ``"linf"`` or ``"l2"``.
    clip: pixel range ``(lo, hi)``, or ``None``.
    early_stop: stop once every row is misclassified. The result is the
      same (a row keeps its first misclassified point); ``False`` runs all
      ``num_steps`` (fixed work, for timing).

  Returns:
    ``(B, *shape)`` adversarial inputs inside the ball and ``clip``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[1., -1.], [-1., 1.]])
    >>> x, y = jnp.array([[0.55, 0.45]]), jnp.array([0])
    >>> x_adv = pgd(lambda x: x @ w, x, y, key=jax.random.key(0), eps=0.1,
    ...             step_size=0.05, num_steps=5)
    >>> bool(jnp.argmax(x_adv @ w) != 0), bool(jnp.abs(x_adv - x).max() <= 0.1 + 1e-6)
    (True, True)

  References:
    Madry, Makelov, Schmidt, Tsipras, Vladu, *Towards Deep Learning Models
    Resistant to Adversarial Attacks*, ICLR 2018.
  """
  _core.check_norm(norm)
  loss_fn = _core.get_loss(loss)
  eps, step_size = _core.as_scalar(eps, x), _core.as_scalar(step_size, x)

  x_runs, y_runs = _core.repeat_runs(x, restarts), _core.repeat_runs(y, restarts)
  start = _core.starts(key, x, eps, norm, clip, restarts, random_start)
  best = _pgd_run(logits_fn, loss_fn, x_runs, y_runs, start, eps, step_size, num_steps, norm, clip,
                  early_stop)
  return _core.merge_runs(best, restarts).x
