"""FGSM and PGD (§2, Eq. 3–4 of the paper)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from crp_jax import _checks
from crp_jax.attacks import _core
from crp_jax.attacks._core import Best, Clip, LogitsFn, LogitsLossFn, Norm


def fgsm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    eps: float | jax.Array,
    loss: str = "ce",
    norm: Norm = "linf",
    clip: Clip = (0.0, 1.0),
) -> jax.Array:
  r"""Fast gradient sign method (Goodfellow et al. 2014; Eq. 3 of the paper).

  .. math::
    x_{adv} = \mathrm{clip}\big(x + \epsilon\,\mathrm{sign}(\nabla_x \ell(f(x), y))\big).

  With ``norm="l2"`` it is the fast gradient method (FGM), one step of
  length ε along :math:`\nabla/\|\nabla\|_2`; with ``"l1"`` the step moves
  the coordinate of largest :math:`|\nabla|` by ε. Either is then clipped
  to the box.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits.
    x: ``(B, *shape)`` inputs inside ``clip``.
    y: ``(B,)`` integer labels.
    eps: radius ε.
    loss: ``ℓ``, a name of ``LOSSES``: ``"ce"`` (cross-entropy of the
      logits), ``"margin"``, ``"dlr"`` or ``"prob_ce"`` (only to reproduce
      a saturated Keras loss, see :func:`~crp_jax.attacks._core.prob_ce_loss`).
    norm: ``"linf"`` (FGSM), ``"l2"`` (FGM) or ``"l1"``.
    clip: pixel range ``(lo, hi)``, or ``None``.

  Returns:
    ``(B, *shape)`` adversarial inputs, ``‖x_adv − x‖ ≤ ε`` in ``norm``.

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
  norm = _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps, norm_name=norm)
  loss_fn = _core.get_loss(loss)
  eps = _core.as_scalar(eps, x)
  _, _, grad = _core.loss_and_grad(logits_fn, loss_fn, x, y)
  return _core.project(x + eps * _core.ascent_direction(grad, norm), x, eps, norm, clip)


def projected_ascent(logits_fn: LogitsFn, loss_fn: Callable[[jax.Array, Any], jax.Array], x: jax.Array,
                     target: Any, x_start: jax.Array, *, eps: float | jax.Array, step_size: float | jax.Array,
                     num_steps: int, norm: Norm = "linf", clip: Clip = (0.0, 1.0)) -> jax.Array:
  r"""The last iterate of ``num_steps`` projected ascent steps on a per-example loss, from ``x_start``.

  .. math::
    x^{(k+1)} = \Pi_{B_\epsilon(x) \cap [lo, hi]^d}\big(x^{(k)} + \alpha\, d(\nabla_{x^{(k)}}
    \textstyle\sum_b \ell(f(x^{(k)})_b, t_b))\big),

  with ``d`` the sign (L∞), the normalised gradient (L2) or the top coordinate (L1). The loop is a
  ``lax.fori_loop`` (compiled once, whatever ``num_steps``) with no best
  point and no early stop: it is PGD with ``last_iterate=True`` for any
  loss, which is what adversarial training needs (TRADES maximises a KL
  divergence to the clean prediction, not a loss of the label).

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits, per-example independent.
    loss_fn: ``(logits (B, C), target) -> (B,)``, maximised.
    x: ``(B, *shape)`` centres of the balls, inside ``clip``.
    target: what ``loss_fn`` compares the logits with: ``(B,)`` labels, or
      ``(B, C)`` probabilities, or any pytree of per-row arrays.
    x_start: ``(B, *shape)`` first iterate, inside the ball and ``clip``.
    eps, step_size: radius ε and step α.
    num_steps: number of steps (static).
    norm, clip: as in :func:`pgd`.

  Returns:
    ``(B, *shape)`` ``x^(num_steps)``, inside the ball and ``clip``.
  """
  norm = _checks.norm(norm)
  _checks.nonnegative(eps)
  _checks.nonnegative(step_size, "step_size")
  _checks.count(num_steps, "num_steps", 0)
  _checks.images(x, clip)
  _checks.images(x_start, clip, "x_start")
  eps, step_size = _core.as_scalar(eps, x), _core.as_scalar(step_size, x)

  def step(_, x_k: jax.Array) -> jax.Array:
    grad = _core.loss_and_grad(logits_fn, loss_fn, x_k, target)[2]
    return _core.project(x_k + step_size * _core.ascent_direction(grad, norm), x, eps, norm, clip)

  return jax.lax.fori_loop(0, num_steps, step, x_start)


def _pgd_run(logits_fn: LogitsFn, loss_fn: LogitsLossFn, x: jax.Array, y: jax.Array,
             x_start: jax.Array, eps: jax.Array, step_size: jax.Array, num_steps: int,
             norm: Norm, clip: Clip, early_stop: bool, last_iterate: bool) -> Best:
  """PGD from ``x_start`` around ``x``: per row the last iterate, or the best of the ``num_steps + 1``."""
  def step(x_k: jax.Array, grad: jax.Array) -> jax.Array:
    return _core.project(x_k + step_size * _core.ascent_direction(grad, norm), x, eps, norm, clip)

  if last_iterate:
    # No best point and no early stop: a later iterate may be classified correctly again.
    x_last = projected_ascent(logits_fn, loss_fn, x, y, x_start, eps=eps, step_size=step_size,
                              num_steps=num_steps, norm=norm, clip=clip)
  else:
    def body(_, carry):
      x_k, best = carry
      loss, logits, grad = _core.loss_and_grad(logits_fn, loss_fn, x_k, y)
      return step(x_k, grad), _core.update_best(best, Best(x_k, loss, _core.misclassified(logits, y)))

    x_last, best = _core.steps_until_done(num_steps, body, (x_start, Best.empty(x)),
                                          lambda carry: carry[1].adv, early_stop)
  # The last iterate needs only a forward pass.
  logits = logits_fn(x_last)
  last = Best(x_last, loss_fn(logits, y), _core.misclassified(logits, y))
  return last if last_iterate else _core.update_best(best, last)


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
    last_iterate: bool = False,
) -> jax.Array:
  r"""Projected gradient ascent (Madry et al. 2018; Eq. 4 of the paper).

  From a random start in the ball (or from ``x``: BIM), ``num_steps`` times

  .. math::
    x^{(k+1)} = \Pi_{B_\epsilon(x) \cap [lo, hi]^d}\big(x^{(k)} + \alpha\, d(\nabla \ell(x^{(k)}))\big),

  with ``d(g) = sign(g)`` for L∞ and ``g/‖g‖₂`` for L2. Two variants say
  which iterate a run returns:

  * ``last_iterate=False`` (the default, the strong protocol's): per example
    the first misclassified iterate of ``x^(0) … x^(n)``, else the one of
    highest loss. This is the attacker's best point: an example counts as
    broken if any iterate broke it, so the reported accuracy is an upper
    bound that does not depend on where the run happened to stop.
  * ``last_iterate=True`` (the paper's protocol): the last iterate
    ``x^(n)``, as Eq. 4 is written and as reference PGD code returns it.
    Every step runs (``early_stop`` is ignored), since an example
    misclassified at step ``k`` may be classified correctly again later;
    such examples count as correct, so on the same run this accuracy is
    at least the default variant's.

  Restart ``r`` starts from a draw with key ``fold_in(key, r)``; across
  restarts each example keeps the first adversarial run's point (its best
  or last iterate), else the highest-loss one. The restarts run as one
  batch of ``restarts·B`` rows.

  Jit it with the model closed over, e.g.
  ``jax.jit(lambda x, y, k: pgd(f, x, y, key=k, eps=0.3, step_size=0.01, num_steps=40))``.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits, per-example independent.
    x: ``(B, *shape)`` inputs inside ``clip``.
    y: ``(B,)`` integer labels.
    key: PRNG key of the random starts: one key (row ``b`` draws from
      ``fold_in(key, b)``) or ``(B,)`` keys, one per example (:func:`~crp_jax.attacks.example_keys`).
    eps: radius ε.
    step_size: step α.
    num_steps: number of gradient steps (static).
    restarts: number of runs (static).
    random_start: start at a uniform point of the ball; else at ``x``
      (BIM, "PGD without the random starts").
    loss: ``"ce"`` (cross-entropy), ``"margin"`` (``max_{j≠y} z_j − z_y``),
      ``"dlr"``, or ``"prob_ce"`` (only to reproduce a saturated Keras loss).
    norm: ``"linf"``, ``"l2"`` or ``"l1"`` (L1 steps move the coordinate of largest
      ``|∇|``; :func:`~crp_jax.attacks.apgd`'s L1-APGD is the strong L1 attack).
    clip: pixel range ``(lo, hi)``, or ``None``.
    early_stop: stop once every row is misclassified. The result is the
      same (a row keeps its first misclassified point); ``False`` runs all
      ``num_steps`` (fixed work, for timing). Ignored with ``last_iterate``.
    last_iterate: return each run's last iterate instead of its best point.

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
    Kurakin, Goodfellow, Bengio, *Adversarial Examples in the Physical
    World*, 2016 (BIM).
  """
  norm = _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps, norm_name=norm)
  _checks.nonnegative(step_size, "step_size")
  _checks.count(num_steps, "num_steps", 0)   # 0: the random start alone
  _checks.count(restarts, "restarts")
  loss_fn = _core.get_loss(loss)
  eps, step_size = _core.as_scalar(eps, x), _core.as_scalar(step_size, x)

  x_runs, y_runs = _core.repeat_runs(x, restarts), _core.repeat_runs(y, restarts)
  start = _core.starts(key, x, eps, norm, clip, restarts, random_start)
  runs = _pgd_run(logits_fn, loss_fn, x_runs, y_runs, start, eps, step_size, num_steps, norm, clip,
                  early_stop, last_iterate)
  if restarts == 1:   # nothing to merge; with last_iterate the merge's forward pass would be dead work
    return runs.x
  return _core.merge_runs(runs, restarts).x
