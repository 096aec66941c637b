"""Auto-PGD: APGD-CE/DLR and the targeted APGD-T (Croce & Hein 2020)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax import _checks
from crp_jax.attacks import _core, _fab
from crp_jax.attacks._core import Best, Clip, LogitsFn, LogitsLossFn, Norm


def checkpoints(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  r"""Static step-size checkpoints of APGD as a mask over the ``num_steps`` iterations.

  The paper puts checkpoints at :math:`w_j = \lceil p_j N \rceil` with
  :math:`p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + \max(p_j - p_{j-1} - 0.03, 0.06)`;
  the windows :math:`w_j - w_{j-1}` therefore start at ``0.22 N`` and shrink
  by ``0.03 N`` down to ``0.06 N``. Integer window lengths follow the
  reference implementation.

  Returns:
    ``(is_checkpoint, window)``, both ``(num_steps,)``: whether iteration
    ``k`` (0-based) ends a window, and that window's length (0 elsewhere).

  >>> mask, window = checkpoints(100)
  >>> np.flatnonzero(mask)[:4] + 1, window[mask][:4]
  (array([22, 41, 57, 70]), array([22, 19, 16, 13], dtype=int32))
  """
  length = max(int(0.22 * num_steps), 1)
  shrink, shortest = max(int(0.03 * num_steps), 1), max(int(0.06 * num_steps), 1)
  is_checkpoint = np.zeros(num_steps, bool)
  window = np.zeros(num_steps, np.int32)
  end = length - 1
  while end < num_steps:  # a static schedule, not the attack loop
    is_checkpoint[end], window[end] = True, length
    length = max(length - shrink, shortest)
    end += length
  return is_checkpoint, window


class _State(NamedTuple):
  """Per-example APGD state; images are ``(B, *shape)``, the rest ``(B,)``."""

  x: jax.Array  # current iterate x^(k)
  x_prev: jax.Array  # x^(k-1), for the momentum term
  grad: jax.Array  # ∇f(x^(k))
  loss: jax.Array  # f of the latest iterate, to count increases
  step: jax.Array  # step size η
  x_max: jax.Array  # highest-loss point, where a halving restarts from
  grad_max: jax.Array
  loss_max: jax.Array
  best: Best  # returned point: first misclassified, else highest loss
  increases: jax.Array  # int, steps that increased f since the last checkpoint
  loss_max_at_check: jax.Array  # f_max at the last checkpoint
  halved_at_check: jax.Array  # bool, η was halved at the last checkpoint


def _momentum_step(s: _State, x0: jax.Array, eps: jax.Array, norm: Norm, clip: Clip,
                   alpha: jax.Array) -> jax.Array:
  r""":math:`z = P(x + η\,d(∇f))`, then :math:`P(x + α(z − x) + (1 − α)(x − x_{prev}))`."""
  step = _core.rows_like(s.step, s.x)
  z = _core.project(s.x + step * _core.ascent_direction(s.grad, norm), x0, eps, norm, clip)
  return _core.project(s.x + alpha * (z - s.x) + (1 - alpha) * (s.x - s.x_prev), x0, eps, norm,
                       clip)


def _checkpoint(s: _State, is_checkpoint: jax.Array, window: jax.Array, rho: float) -> _State:
  """At a checkpoint halve η where the loss stalled, and restart those examples from ``x_max``.

  Condition 1: fewer than ``ρ·window`` of the window's steps increased f.
  Condition 2: η was not halved at the previous checkpoint and f_max has not
  grown since (off at the first checkpoint, as in the reference code).
  """
  stalled = s.increases < rho * window
  stuck = ~s.halved_at_check & (s.loss_max_at_check >= s.loss_max)
  halve = is_checkpoint & (stalled | stuck)
  restart = _core.rows_like(halve, s.x)
  return s._replace(
      x=jnp.where(restart, s.x_max, s.x),
      grad=jnp.where(restart, s.grad_max, s.grad),
      step=jnp.where(halve, s.step / 2, s.step),
      increases=jnp.where(is_checkpoint, 0, s.increases),
      loss_max_at_check=jnp.where(is_checkpoint, s.loss_max, s.loss_max_at_check),
      halved_at_check=jnp.where(is_checkpoint, halve, s.halved_at_check),
  )


def _init_state(logits_fn: LogitsFn, loss_fn: LogitsLossFn, x: jax.Array, y: jax.Array,
                x_start: jax.Array, eps: jax.Array) -> _State:
  loss, logits, grad = _core.loss_and_grad(logits_fn, loss_fn, x_start, y)
  start = Best(x_start, loss, _core.misclassified(logits, y))
  return _State(
      x=x_start, x_prev=x_start, grad=grad, loss=loss,
      step=jnp.full(loss.shape, 2.0, x.dtype) * eps,
      x_max=x_start, grad_max=grad, loss_max=loss,
      best=_core.update_best(Best.empty(x), start),
      increases=jnp.zeros(loss.shape, jnp.int32), loss_max_at_check=loss,
      halved_at_check=jnp.ones(loss.shape, jnp.bool_))


def _apgd_run(logits_fn: LogitsFn, loss_fn: LogitsLossFn, x: jax.Array, y: jax.Array,
              x_start: jax.Array, eps: jax.Array, num_steps: int, norm: Norm, rho: float,
              clip: Clip, early_stop: bool) -> Best:
  """APGD from ``x_start`` around ``x`` for ``num_steps`` iterations; per row the best point."""
  is_checkpoint, window = checkpoints(num_steps)
  alpha = np.where(np.arange(num_steps) == 0, 1.0, 0.75)  # no momentum at k=0
  is_checkpoint, window, alpha = (jnp.asarray(is_checkpoint), jnp.asarray(window, x.dtype),
                                  jnp.asarray(alpha, x.dtype))

  def body(k: jax.Array, s: _State) -> _State:
    is_checkpoint_k, window_k, alpha_k = is_checkpoint[k], window[k], alpha[k]
    x_new = _momentum_step(s, x, eps, norm, clip, alpha_k)
    loss, logits, grad = _core.loss_and_grad(logits_fn, loss_fn, x_new, y)
    best = _core.update_best(s.best, Best(x_new, loss, _core.misclassified(logits, y)))
    better = loss > s.loss_max
    better_x = _core.rows_like(better, x)
    s = s._replace(
        x=x_new, x_prev=s.x, grad=grad, loss=loss, best=best,
        x_max=jnp.where(better_x, x_new, s.x_max),
        grad_max=jnp.where(better_x, grad, s.grad_max),
        loss_max=jnp.maximum(loss, s.loss_max),
        increases=s.increases + (loss > s.loss).astype(jnp.int32))
    return _checkpoint(s, is_checkpoint_k, window_k, rho)

  state = _init_state(logits_fn, loss_fn, x, y, x_start, eps)
  return _core.steps_until_done(num_steps, body, state, lambda s: s.best.adv, early_stop).best


# ----------------------------------------------------------------------------- L1
# L1-APGD (Croce & Hein 2021, "Mind the box"): sparse steps whose sparsity and size adapt
# at fixed checkpoints, no momentum, and a radius that shrinks from 3ε to ε over the run.


class _L1State(NamedTuple):
  """Per-example L1-APGD state; images ``(B, *shape)``, the rest ``(B,)``."""

  x: jax.Array
  grad: jax.Array
  step: jax.Array  # η, in L1 units
  topk: jax.Array  # fraction of coordinates a step moves
  sparsity: jax.Array  # ‖x_max − x0‖₀ at the last checkpoint
  x_max: jax.Array
  grad_max: jax.Array
  loss_max: jax.Array
  best: Best


def _sparse_step(s: _L1State, x0: jax.Array, eps: jax.Array, clip: Clip) -> jax.Array:
  r""":math:`P(x + \eta\, \mathrm{sign}(g \odot m) / \|m\|_0)`, ``m`` the top ``topk`` fraction of ``|g|``."""
  flat = jnp.abs(s.grad.reshape(s.grad.shape[0], -1))
  n = flat.shape[1]
  rank = jnp.clip(jnp.floor((1.0 - s.topk) * n), 0, n - 1).astype(jnp.int32)
  threshold = jnp.take_along_axis(jnp.sort(flat, axis=1), rank[:, None], axis=1)
  direction = jnp.sign(s.grad) * (flat >= threshold).reshape(s.grad.shape)
  direction = direction / _core.rows_like(_core.l1_norm(direction) + 1e-10, direction)
  return _core.project(s.x + _core.rows_like(s.step, s.x) * direction, x0, eps, "l1", clip)


def _support(v: jax.Array, x0: jax.Array) -> jax.Array:
  """``(B,)`` ‖v − x0‖₀, the number of coordinates moved, as floats."""
  return jnp.sum((v - x0).reshape(x0.shape[0], -1) != 0, axis=1).astype(x0.dtype)


def _l1_checkpoint(s: _L1State, x0: jax.Array, eps: jax.Array) -> _L1State:
  """Sparsity and step adapt: where ``x_max``'s support shrank by 5 % reset η to ε and restart from ``x_max``,
  else η /= 1.5 (within ``[ε/10, ε]``); the next steps move ``‖x_max − x0‖₀ / 1.5`` coordinates."""
  sparsity = _support(s.x_max, x0)
  shrank = sparsity / jnp.maximum(s.sparsity, 1.0) < 0.95
  back = _core.rows_like(shrank, x0)
  return s._replace(x=jnp.where(back, s.x_max, s.x), grad=jnp.where(back, s.grad_max, s.grad),
                    step=jnp.clip(jnp.where(shrank, eps, s.step / 1.5), eps / 10, eps),
                    topk=sparsity / sparsity.dtype.type(np.prod(x0.shape[1:])) / 1.5, sparsity=sparsity)


def _l1_stage(logits_fn: LogitsFn, loss_fn: LogitsLossFn, x: jax.Array, y: jax.Array, x_start: jax.Array,
              eps: jax.Array, num_steps: int, clip: Clip, early_stop: bool) -> _L1State:
  """``num_steps`` L1-APGD steps in the ball of radius ε from ``x_start`` (one start gradient, one per step)."""
  x_start = _core.project(x_start, x, eps, "l1", clip)
  loss, logits, grad = _core.loss_and_grad(logits_fn, loss_fn, x_start, y)
  sparsity = _support(x_start, x)
  s = _L1State(x_start, grad, jnp.full(loss.shape, 1.0, x.dtype) * eps,
               sparsity / sparsity.dtype.type(np.prod(x.shape[1:])) / 1.5, sparsity, x_start, grad, loss,
               Best(x_start, loss, _core.misclassified(logits, y)))
  period = max(int(0.04 * num_steps), 1)

  def body(k: jax.Array, s: _L1State) -> _L1State:
    x_new = _sparse_step(s, x, eps, clip)
    loss, logits, grad = _core.loss_and_grad(logits_fn, loss_fn, x_new, y)
    better = loss > s.loss_max
    bx = _core.rows_like(better, x)
    s = s._replace(x=x_new, grad=grad, x_max=jnp.where(bx, x_new, s.x_max),
                   grad_max=jnp.where(bx, grad, s.grad_max), loss_max=jnp.maximum(loss, s.loss_max),
                   best=_core.update_best(s.best, Best(x_new, loss, _core.misclassified(logits, y))))
    return jax.lax.cond((k + 1) % period == 0, lambda s: _l1_checkpoint(s, x, eps), lambda s: s, s)

  return _core.steps_until_done(num_steps, body, s, lambda s: s.best.adv, early_stop)


def l1_schedule(num_steps: int) -> tuple[tuple[float, int], ...]:
  """L1-APGD's radii (multiples of ε) and their steps: 3ε, 2ε, ε for ⌈0.3N⌉, ⌈0.3N⌉ and the rest.

  >>> l1_schedule(100)
  ((3.0, 30), (2.0, 30), (1.0, 40))
  """
  first = math.ceil(0.3 * num_steps)
  return ((3.0, first), (2.0, first), (1.0, max(num_steps - 2 * first, 0)))


def _apgd_l1_run(logits_fn: LogitsFn, loss_fn: LogitsLossFn, x: jax.Array, y: jax.Array,
                 x_start: jax.Array, eps: jax.Array, num_steps: int, clip: Clip, early_stop: bool) -> Best:
  """L1-APGD through :func:`l1_schedule`: each radius starts from the last one's highest-loss point;
  only the last (ε) counts, so only it stops early. ``num_steps + 3`` gradient evaluations."""
  s = None
  for factor, steps in l1_schedule(num_steps):
    last = factor == 1.0
    s = _l1_stage(logits_fn, loss_fn, x, y, x_start if s is None else s.x_max, factor * eps, steps, clip,
                  early_stop and last)
  return s.best


def _all_runs(logits_fn: LogitsFn, loss_fn: LogitsLossFn, key: jax.Array, x: jax.Array, x_runs: jax.Array,
              y_runs: jax.Array, eps: jax.Array, num_steps: int, norm: Norm, rho: float, clip: Clip,
              early_stop: bool, runs: int, random_start: bool) -> Best:
  """The ``B·runs`` rows of APGD (L∞, L2) or L1-APGD, each from its start; L1 starts in the 3ε ball."""
  if norm == "l1":
    start = _core.starts(key, x, 3.0 * eps, norm, clip, runs, random_start)
    return _apgd_l1_run(logits_fn, loss_fn, x_runs, y_runs, start, eps, num_steps, clip, early_stop)
  start = _core.starts(key, x, eps, norm, clip, runs, random_start)
  return _apgd_run(logits_fn, loss_fn, x_runs, y_runs, start, eps, num_steps, norm, rho, clip, early_stop)


def apgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array,
    norm: Norm = "linf",
    num_steps: int = 100,
    loss: str = "ce",
    restarts: int = 1,
    rho: float = 0.75,
    random_start: bool = True,
    clip: Clip = (0.0, 1.0),
    early_stop: bool = True,
) -> jax.Array:
  r"""APGD (Croce & Hein 2020): PGD with momentum and a step size set by the loss's progress.

  Starting from a random point of the ball with :math:`\eta = 2\epsilon`,

  .. math::
    z^{(k+1)} &= P(x^{(k)} + \eta\, d(\nabla f(x^{(k)}))), \\
    x^{(k+1)} &= P(x^{(k)} + \alpha (z^{(k+1)} - x^{(k)}) + (1 - \alpha)(x^{(k)} - x^{(k-1)})),

  with :math:`\alpha = 0.75` (1 at the first step), ``d = sign`` (L∞) or
  ``g/‖g‖₂`` (L2) and ``P`` the projection onto the ball and ``clip``. At the
  checkpoints of :func:`checkpoints` each example whose loss stalled gets
  η halved and restarts from its highest-loss point. Returns, per example,
  the first misclassified iterate, else the highest-loss one; restart ``r``
  uses key ``fold_in(key, r)`` and the first restart that succeeds wins.
  The restarts run as one batch of ``restarts·B`` rows.

  L1 (``norm="l1"``) is L1-APGD (Croce & Hein 2021): each step moves the
  ``k`` coordinates of largest ``|∇f|`` by :math:`\eta/k` each, then projects
  onto the L1 ball and the box exactly (:func:`~crp_jax.attacks._core.project_l1_box`);
  no momentum; every ``⌈0.04 N⌉`` steps ``k`` follows the support of the
  highest-loss point and η shrinks (or resets to ε and the run restarts
  from that point where the support shrank). The radius runs 3ε, 2ε, ε
  (:func:`l1_schedule`, AutoAttack's ``use_largereps``) from a Gaussian start
  projected onto the 3ε ball; only points of the last, ε, count. ``N + 3``
  gradient evaluations per run.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits, per-example independent.
    x: ``(B, *shape)`` inputs inside ``clip``.
    y: ``(B,)`` integer labels.
    key: PRNG key of the random starts: one key (row ``b`` draws from
      ``fold_in(key, b)``) or ``(B,)`` keys, one per example (:func:`~crp_jax.attacks.example_keys`).
    eps: radius ε.
    norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    num_steps: iterations N (static); N + 1 gradient evaluations (L1: N + 3).
    loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR, needs C ≥ 3) or ``"margin"``.
    restarts: number of runs (static).
    rho: ρ of condition 1.
    random_start: start at a uniform point of the ball; else at ``x``.
    clip: pixel range ``(lo, hi)``, or ``None``.
    early_stop: stop once every row is misclassified; the result is the
      same. ``False`` runs all ``num_steps`` (fixed work, for timing).

  Returns:
    ``(B, *shape)`` adversarial inputs inside the ball and ``clip``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[1., -1.], [-1., 1.]])
    >>> x, y = jnp.array([[0.55, 0.45]]), jnp.array([0])
    >>> x_adv = apgd(lambda x: x @ w, x, y, key=jax.random.key(0), eps=0.1, num_steps=10)
    >>> bool(jnp.argmax(x_adv @ w) != 0)
    True

  References:
    Croce, Hein, *Reliable Evaluation of Adversarial Robustness with an
    Ensemble of Diverse Parameter-free Attacks*, ICML 2020.
  """
  norm = _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps, norm_name=norm)
  _checks.count(num_steps, "num_steps")
  _checks.count(restarts, "restarts")
  loss_fn = _core.get_loss(loss)
  eps = _core.as_scalar(eps, x)
  x_runs, y_runs = _core.repeat_runs(x, restarts), _core.repeat_runs(y, restarts)
  best = _all_runs(logits_fn, loss_fn, key, x, x_runs, y_runs, eps, num_steps, norm, rho, clip, early_stop,
                   restarts, random_start)
  return _core.merge_runs(best, restarts).x


#: How APGD-T picks its targets: AutoAttack's highest logits, or MALT's closest linearised boundaries.
TARGETING: tuple[str, ...] = ("logits", "malt")


def apgd_targeted(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array,
    norm: Norm = "linf",
    num_steps: int = 100,
    num_targets: int = 9,
    restarts: int = 1,
    rho: float = 0.75,
    random_start: bool = True,
    clip: Clip = (0.0, 1.0),
    early_stop: bool = True,
    targeting: str = "logits",
) -> jax.Array:
  r"""APGD-T: APGD on the targeted DLR loss, once per target class (Croce & Hein 2020).

  For target ``t`` the loss is

  .. math::
    -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4})/2 + 10^{-12}},

  and the targets are, per example, the ``num_targets`` classes other than
  ``y`` with the highest clean logits (capped at C − 1; needs C ≥ 4), or with
  ``targeting="malt"`` those whose linearised boundary is closest (MALT,
  Melamed, Yehudai & Shamir, NeurIPS 2024): the smallest
  :math:`|z_y - z_t| / \|\nabla z_y - \nabla z_t\|_*` at ``x``, ``C`` more
  backward passes per example. Run
  ``r = t·restarts + k`` (target ``t``, restart ``k``) starts from a draw
  keyed by ``fold_in(key, r)``; each example keeps the first run, in that
  order, that misclassifies it, else its highest-loss point. Success is
  misclassification, not reaching ``t``. All ``num_targets·restarts`` runs go
  as one batch of that many times B rows: memory grows accordingly, lower
  the batch size for large models.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits, per-example independent.
    x: ``(B, *shape)`` inputs inside ``clip``.
    y: ``(B,)`` integer labels.
    key: PRNG key of the random starts: one key (row ``b`` draws from
      ``fold_in(key, b)``) or ``(B,)`` keys, one per example (:func:`~crp_jax.attacks.example_keys`).
    eps: radius ε.
    norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    num_steps: iterations per target (static).
    num_targets: number of target classes (static).
    restarts: runs per target (static).
    rho: ρ of APGD's condition 1.
    random_start: start at a uniform point of the ball; else at ``x``.
    clip: pixel range ``(lo, hi)``, or ``None``.
    early_stop: stop once every run of every example is misclassified;
      the result is the same. ``False`` runs all ``num_steps``.
    targeting: ``"logits"`` (AutoAttack's) or ``"malt"``.

  Returns:
    ``(B, *shape)`` adversarial inputs inside the ball and ``clip``.

  References:
    Croce, Hein, *Reliable Evaluation of Adversarial Robustness with an
    Ensemble of Diverse Parameter-free Attacks*, ICML 2020. Melamed,
    Yehudai, Shamir, *MALT Powers Up Adversarial Attacks*, NeurIPS 2024.
  """
  norm = _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps, norm_name=norm)
  if targeting not in TARGETING:
    raise ValueError(f"targeting={targeting!r}: choose one of {', '.join(TARGETING)}")
  _checks.count(num_steps, "num_steps")
  _checks.count(num_targets, "num_targets")
  _checks.count(restarts, "restarts")
  eps = _core.as_scalar(eps, x)
  logits = logits_fn(x)
  num_targets = min(num_targets, logits.shape[1] - 1)
  if targeting == "malt":
    targets = _fab.malt_targets(logits_fn, x, y, num_targets, norm)
  else:
    targets = _core.top_other_classes(logits, y, num_targets)

  runs = num_targets * restarts
  # Row b·runs + t·restarts + k: target t, restart k of example b.
  target = jnp.repeat(targets, restarts, axis=1).reshape(-1)
  loss_fn = functools.partial(_core.dlr_targeted_loss, target=target)
  x_runs, y_runs = _core.repeat_runs(x, runs), _core.repeat_runs(y, runs)
  best = _all_runs(logits_fn, loss_fn, key, x, x_runs, y_runs, eps, num_steps, norm, rho, clip, early_stop,
                   runs, random_start)
  return _core.merge_runs(best, runs).x
