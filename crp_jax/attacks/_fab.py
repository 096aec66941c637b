"""FAB, the fast adaptive boundary attack (Croce & Hein 2020), L∞, L2 and L1, targeted (FAB-T) and untargeted.

FAB is a minimum-norm attack: it looks for the adversarial point closest to
``x``, and an ε-bounded evaluation counts an example as broken when the
smallest perturbation found has norm ≤ ε. Each step linearises the decision
boundary between the label and one other class at the current iterate and
projects both the iterate and the original point onto that hyperplane
(inside the pixel box); a convex combination of the two projections, biased
towards the original point, is the next iterate. A point found
misclassified is recorded if it is closer than the best so far and the
iterate steps back towards ``x``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from crp_jax import _checks
from crp_jax.attacks import _core
from crp_jax.attacks._core import Clip, LogitsFn, Norm

_FLOOR = 1e-8  # smallest step length in the bias α, as in the reference
_DUAL_TINY = 1e-12


_norm_rows = _core.lp_norm


def project_to_hyperplane(t: jax.Array, w: jax.Array, r: jax.Array, norm: Norm,
                          lo: float, hi: float) -> jax.Array:
  r"""The smallest step ``d`` with ``w·d = r`` that keeps ``t + d`` in the box ``[lo, hi]^D``.

  Solves :math:`\min_d \|d\|_p \ \text{s.t.}\ w^\top d = r,\ lo \le t + d \le hi` for
  ``p = ∞`` or ``2``, per row. With ``s = sign(r)`` every coordinate moves
  in the direction ``s·sign(w_i)`` by at most its room ``u_i`` (the distance
  to the box face in that direction), and the optimum has the form

  .. math::
    d_i = s\,\mathrm{sign}(w_i) \min(\lambda c_i, u_i), \qquad
    c_i = 1\ (L_\infty), \quad c_i = |w_i|\ (L_2),

  for the smallest :math:`\lambda \ge 0` whose progress
  :math:`g(\lambda) = \sum_i |w_i| \min(\lambda c_i, u_i)` reaches ``|r|``.
  ``g`` is piecewise linear with breakpoints :math:`u_i / c_i`, so sorting
  them and a cumulative sum give ``λ`` exactly. If the box cannot reach the
  hyperplane (``g(∞) < |r|``), every coordinate moves by its full room: the
  box point closest to it along ``w``. L1 (:func:`_l1_step`) is greedy
  instead: the coordinates of largest ``|w_i|`` move by their full room
  first.

  Args:
    t: ``(N, D)`` points inside the box.
    w: ``(N, D)`` hyperplane normals.
    r: ``(N,)`` required progress ``w·d``.
    norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    lo, hi: the box.

  Returns:
    ``(N, D)`` the step ``d``.
  """
  s = jnp.where(r >= 0, 1.0, -1.0).astype(t.dtype)[:, None]
  direction = s * jnp.sign(w)
  room = jnp.maximum(jnp.where(direction > 0, hi - t, t - lo), 0.0)
  a = jnp.abs(w)
  if norm == "l1":
    return direction * _l1_step(a, room, jnp.abs(r)[:, None])
  c = jnp.ones_like(a) if norm == "linf" else a
  # Coordinates with c = 0 never move and add no progress: a breakpoint at 0 is harmless.
  breaks = jnp.where(c > 0, room / jnp.where(c > 0, c, 1.0), 0.0)
  order = jnp.argsort(breaks, axis=1)
  take = lambda v: jnp.take_along_axis(v, order, axis=1)
  b_sorted, ac_sorted = take(breaks), take(a * c)
  reached = jnp.cumsum(take(a * room), axis=1)  # progress of the coordinates already at their room
  slope = jnp.sum(a * c, axis=1, keepdims=True) - jnp.cumsum(ac_sorted, axis=1)
  progress = reached + b_sorted * slope  # g at each breakpoint, nondecreasing
  target = jnp.abs(r)[:, None]
  k = jnp.sum(progress < target, axis=1, keepdims=True)  # breakpoints passed before |r| is reached
  prev = jnp.maximum(k - 1, 0)
  reached_prev = jnp.where(k > 0, jnp.take_along_axis(reached, prev, axis=1), 0.0)
  slope_prev = jnp.where(k > 0, jnp.take_along_axis(slope, prev, axis=1),
                         jnp.sum(a * c, axis=1, keepdims=True))
  lam = (target - reached_prev) / jnp.maximum(slope_prev, _DUAL_TINY)
  lam = jnp.where(k >= t.shape[1], b_sorted[:, -1:], lam)  # unreachable: full room everywhere
  return direction * jnp.minimum(lam * c, room)


def _l1_step(a: jax.Array, room: jax.Array, target: jax.Array) -> jax.Array:
  r"""``(N, D)`` how far each coordinate moves for the least L1 step with progress :math:`\sum_i a_i m_i = ` ``target``.

  Progress per unit of L1 norm is ``a_i``, so the coordinates move fully
  (by ``room``) in decreasing order of ``a`` and the last one partly; those
  with ``a_i = 0`` never move.
  """
  order = jnp.argsort(-a, axis=1)
  take = lambda v: jnp.take_along_axis(v, order, axis=1)
  a_s, room_s = take(a), take(room)
  gain = a_s * room_s
  need = target - (jnp.cumsum(gain, axis=1) - gain)  # progress still missing before each coordinate
  move = jnp.where((need > 0) & (a_s > 0), jnp.minimum(room_s, need / jnp.maximum(a_s, _DUAL_TINY)), 0.0)
  return jnp.take_along_axis(move, jnp.argsort(order, axis=1), axis=1)


def _dual_norm(g: jax.Array, norm: Norm) -> jax.Array:
  """``(..., D) -> (...)``: L1 for L∞, L2 for L2, L∞ for L1 (the distance to a hyperplane divides by it)."""
  if norm == "l1":
    return jnp.max(jnp.abs(g), axis=-1)
  return jnp.sum(jnp.abs(g), axis=-1) if norm == "linf" else jnp.sqrt(jnp.sum(g * g, axis=-1))


def boundary(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, target: jax.Array | None,
             norm: Norm) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""The linearised boundary FAB projects onto at ``x``: ``f = z_j − z_y``, ``∇f`` and the logits.

  Targeted (``target`` ``(N,)``): ``j`` is the target. Untargeted: of the
  classes ``j ≠ y``, the one whose linearised boundary is closest,
  :math:`\arg\min_j |f_j| / \|\nabla f_j\|_*` (one backward pass per class).

  Returns:
    ``f`` ``(N,)``, ``∇f`` ``(N, D)`` and the logits ``(N, C)`` at ``x``.
  """
  logits, grad_of = _linearised(logits_fn, x, y)
  num_classes = logits.shape[1]
  gap = lambda j: jnp.take_along_axis(logits, j[:, None], axis=1)[:, 0] - \
      jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  if target is not None:
    return gap(target), grad_of(target), logits
  grads = jax.vmap(lambda j: grad_of(jnp.full_like(y, j)))(jnp.arange(num_classes))  # (C, N, D)
  j = jnp.argmin(_distances(logits, y, grads, norm), axis=1)
  return gap(j), jnp.take_along_axis(jnp.swapaxes(grads, 0, 1), j[:, None, None], axis=1)[:, 0], logits


def _linearised(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Callable]:
  """The logits at ``x`` and ``grad_of(j) -> (N, D)``, the input gradient of ``z_j − z_y`` (one backward pass)."""
  logits, pullback = jax.vjp(logits_fn, x)
  onehot = lambda j: jax.nn.one_hot(j, logits.shape[1], dtype=logits.dtype)
  return logits, lambda j: pullback(onehot(j) - onehot(y))[0].reshape(x.shape[0], -1)


def _distances(logits: jax.Array, y: jax.Array, grads: jax.Array, norm: Norm) -> jax.Array:
  """``(N, C)`` distances ``|z_j − z_y| / ‖∇(z_j − z_y)‖_*`` to the linearised boundaries (``inf`` at ``y``)."""
  gaps = logits - jnp.take_along_axis(logits, y[:, None], axis=1)  # (N, C)
  dist = jnp.abs(gaps) / (_dual_norm(jnp.swapaxes(grads, 0, 1), norm) + _DUAL_TINY)
  return jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=jnp.bool_), jnp.inf, dist)


def malt_targets(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, k: int, norm: Norm) -> jax.Array:
  """``(N, k)`` MALT's targets: the classes whose linearised boundary at ``x`` is closest, closest first."""
  logits, grad_of = _linearised(logits_fn, x, y)
  grads = jax.vmap(lambda j: grad_of(jnp.full_like(y, j)))(jnp.arange(logits.shape[1]))  # (C, N, D)
  return jax.lax.top_k(-_distances(logits, y, grads, norm), k)[1]


class _State(NamedTuple):
  x1: jax.Array  # (N, *shape) current iterate
  best: jax.Array  # (N, *shape) closest misclassified point so far (x where none)
  best_norm: jax.Array  # (N,) its distance to x, inf where none
  steps: jax.Array  # (N,) int32 gradient steps taken


def _step(logits_fn: LogitsFn, s: _State, x0: jax.Array, y: jax.Array, target: jax.Array | None,
          norm: Norm, clip: tuple[float, float], alpha_max: float, eta: float, beta: float,
          frozen: jax.Array) -> _State:
  r"""One FAB step from ``s.x1`` (rows where ``frozen`` is set stay as they are).

  With ``d₁, d₀`` the projections of ``x1`` and ``x0`` onto the linearised
  boundary and :math:`\alpha = \min(\|d_1\| / (\|d_1\| + \|d_0\|), \alpha_{max})`,

  .. math::
    x_1 \leftarrow \mathrm{clip}\big((1 - \alpha)(x_1 + \eta d_1) + \alpha (x_0 + \eta d_0)\big),

  and a misclassified ``x1`` closer than the best is recorded, then pulled
  back to :math:`x_0 + \beta (x_1 - x_0)`.
  """
  n = x0.shape[0]
  flat = lambda v: v.reshape(n, -1)
  f, w, _ = boundary(logits_fn, s.x1, y, target, norm)
  # The hyperplane f(x1) + w·(z − x1) = 0, reached from x1 and from x0.
  d1 = project_to_hyperplane(flat(s.x1), w, -f, norm, *clip)
  d0 = project_to_hyperplane(flat(x0), w, jnp.sum(w * flat(s.x1 - x0), axis=1) - f, norm, *clip)
  a1 = jnp.maximum(_norm_rows(d1, norm), _FLOOR)
  a0 = jnp.maximum(_norm_rows(d0, norm), _FLOOR)
  alpha = _core.rows_like(jnp.clip(a1 / (a1 + a0), 0.0, alpha_max), x0)
  x1 = (1 - alpha) * (s.x1 + eta * d1.reshape(x0.shape)) + alpha * (x0 + eta * d0.reshape(x0.shape))
  x1 = _core.clip_box(x1, clip)
  adv = _core.misclassified(logits_fn(x1), y)
  dist = _norm_rows(x1 - x0, norm)
  better = adv & (dist < s.best_norm) & ~frozen
  new = _State(
      x1=jnp.where(_core.rows_like(adv, x0), x0 + beta * (x1 - x0), x1),
      best=jnp.where(_core.rows_like(better, x0), x1, s.best),
      best_norm=jnp.where(better, dist, s.best_norm),
      steps=s.steps + 1,
  )
  keep = _core.rows_like(frozen, x0)
  return _State(jnp.where(keep, s.x1, new.x1), new.best, new.best_norm,
                jnp.where(frozen, s.steps, new.steps))


def _start(keys: jax.Array, x: jax.Array, radius: jax.Array, norm: Norm, clip: Clip) -> jax.Array:
  """A restart's first iterate: ``x`` plus a random direction scaled to norm ``radius`` (``ε/2``); row ``b`` draws from ``keys[b]``."""
  if norm == "linf":
    t = _core.per_row(keys, lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0))
  else:
    t = _core.per_row(keys, lambda k: jax.random.normal(k, x.shape[1:], x.dtype))
  t = t / _core.rows_like(jnp.maximum(_norm_rows(t, norm), _DUAL_TINY), x)
  return _core.clip_box(x + radius * t, clip)


def _restart_points(key: jax.Array, x: jax.Array, runs: int, restarts: int, radius: jax.Array, norm: Norm,
                    clip: Clip) -> jax.Array:
  """``(B·runs, *shape)`` first iterates: run ``r`` of row ``b`` at ``x`` when ``r % restarts == 0`` (restart 0
  of each target draws nothing), else :func:`_start` with ``fold_in(key_b, r)``."""
  keys = _core.row_keys(key, x.shape[0])
  draw = lambda r: jnp.where(r % restarts == 0, x, _start(_core.fold_rows(keys, r), x, radius, norm, clip))
  return jax.vmap(draw, out_axes=1)(jnp.arange(runs)).reshape((-1,) + x.shape[1:])


def final_search(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, best: jax.Array, found: jax.Array,
                 num_steps: int) -> jax.Array:
  r"""Bisection on the segment from ``x`` to ``best`` for the misclassified point closest to ``x``.

  Keeps :math:`x + h (x_{best} - x)` with the smallest ``h ∈ (0, 1]`` found
  misclassified in ``num_steps`` halvings (each one forward pass); rows
  without a point (``found`` false) are returned unchanged. It can only
  shorten the perturbation: ``h = 1`` is ``best`` itself.
  """
  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    adv = _core.misclassified(logits_fn(x + _core.rows_like(mid, x) * (best - x)), y)
    return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)

  ones = jnp.ones(x.shape[:1], x.dtype)
  _, hi = jax.lax.fori_loop(0, num_steps, body, (0.0 * ones, ones))
  return jnp.where(_core.rows_like(found, x), x + _core.rows_like(hi, x) * (best - x), best)


class FabResult(NamedTuple):
  """What :func:`fab_with_info` found.

  Attributes:
    x_adv: ``(B, *shape)`` the closest misclassified point found (within ε
      when ε is given), else ``x``.
    norm: ``(B,)`` ``‖x_adv − x‖`` where one was found, ``inf`` elsewhere.
    steps: ``(B,)`` int32 gradient steps spent on each example, over its runs.
  """

  x_adv: jax.Array
  norm: jax.Array
  steps: jax.Array


def fab_with_info(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array | None,
    norm: Norm = "linf",
    num_steps: int = 100,
    num_targets: int = 9,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    final_search_steps: int = 10,
    clip: tuple[float, float] = (0.0, 1.0),
    early_stop: bool = True,
) -> FabResult:
  r"""FAB (Croce & Hein 2020): the smallest L∞, L2 or L1 perturbation found that misclassifies each example.

  Targeted (FAB-T, ``num_targets > 0``): run ``t`` aims at the boundary with
  the ``t``-th most likely other class at ``x`` (AutoAttack's choice);
  untargeted (``num_targets=0``): each step picks the class whose linearised
  boundary is closest. Each of the ``num_steps`` steps is :func:`_step`:

  .. math::
    x_1 \leftarrow \mathrm{clip}\big((1 - \alpha)(x_1 + \eta\, d_1) + \alpha (x + \eta\, d_0)\big),
    \quad \alpha = \min\Big(\frac{\|d_1\|}{\|d_1\| + \|d_0\|}, \alpha_{max}\Big),

  with ``d₁, d₀`` the exact minimal steps from ``x₁`` and from ``x`` onto the
  linearised boundary inside the box (:func:`project_to_hyperplane`). A
  misclassified iterate closer than the best is kept and the iterate is
  pulled back to :math:`x + \beta (x_1 - x)`. Restart 0 starts at ``x``,
  restart ``k > 0`` at ``x`` plus a random perturbation of norm ``ε/2``
  (AutoAttack's rule). Then :func:`final_search` bisects the segment from
  ``x`` to the best point (AutoAttack's code has no such step;
  ``final_search_steps=0`` leaves it out).

  All ``max(num_targets, 1)·restarts`` runs go as one batch, example-major,
  like APGD-T; each example keeps the smallest perturbation of its runs.
  Examples misclassified at ``x`` are returned as they are, norm 0.

  Args:
    logits_fn: ``(B, *shape) -> (B, C)`` logits, per-example independent.
    x: ``(B, *shape)`` inputs inside ``clip``.
    y: ``(B,)`` integer labels.
    key: PRNG key of the random restarts (restart 0 draws nothing): one key
      (row ``b`` draws from ``fold_in(key, b)``) or ``(B,)`` keys, one per example.
    eps: the radius an ε-bounded evaluation counts success in, or ``None``
      for the pure minimum-norm attack. With ε, a run stops changing once
      it holds a point within ε (so ``early_stop`` returns the same bits and
      the returned point is the first within ε, not the smallest); without
      it, every run takes all ``num_steps`` and only ``restarts=1`` is allowed
      (the restarts' radius is ε/2).
    norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    num_steps: steps per run (static).
    num_targets: FAB-T's target classes (capped at C − 1), 0 for untargeted FAB.
    restarts: runs per target (static).
    alpha_max, eta, beta: the largest bias towards ``x``, the overshoot and
      the backward step (AutoAttack's 0.1, 1.05, 0.9).
    final_search_steps: bisection steps after the loop (static).
    clip: the pixel box ``(lo, hi)``; FAB's projections need one.
    early_stop: stop once every run has a point within ε (same result).

  Returns:
    A :class:`FabResult`; with ε, ``x_adv`` is ``x`` where no point within ε was found.

  References:
    Croce, Hein, *Minimally distorted Adversarial Examples with a Fast
    Adaptive Boundary Attack*, ICML 2020.
  """
  if clip is None:
    raise ValueError("clip=None: fab needs a pixel box clip=(lo, hi) for its projections")
  norm = _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps, norm_name=norm)
  _checks.count(num_steps, "num_steps")
  _checks.count(num_targets, "num_targets", 0)   # 0: untargeted FAB
  _checks.count(restarts, "restarts")
  _checks.count(final_search_steps, "final_search_steps", 0)
  if eps is None and restarts > 1:
    raise ValueError("fab: restarts > 1 start at radius eps/2, so they need eps (got eps=None)")
  logits = logits_fn(x)
  targeted = num_targets > 0
  num_targets = min(num_targets, logits.shape[1] - 1) if targeted else 1
  runs = num_targets * restarts
  # Row b·runs + t·restarts + k: target t, restart k of example b.
  target = (jnp.repeat(_core.top_other_classes(logits, y, num_targets), restarts, axis=1).reshape(-1)
            if targeted else None)
  x0, y0 = _core.repeat_runs(x, runs), _core.repeat_runs(y, runs)
  radius = jnp.inf if eps is None else _core.as_scalar(eps, x)
  within = lambda s: s.best_norm <= radius if eps is not None else jnp.zeros_like(s.best_norm, bool)
  starts = x0 if restarts == 1 else _restart_points(key, x, runs, restarts, 0.5 * radius, norm, clip)
  clean_adv = _core.misclassified(logits, y)
  clean_adv = _core.repeat_runs(clean_adv, runs)
  init = _State(starts, x0, jnp.where(clean_adv, 0.0, jnp.inf).astype(x.dtype),
                jnp.zeros(x0.shape[:1], jnp.int32))
  body = lambda _, s: _step(logits_fn, s, x0, y0, target, norm, clip, alpha_max, eta, beta, within(s))
  s = _core.steps_until_done(num_steps, body, init, within, early_stop and eps is not None)
  found = jnp.isfinite(s.best_norm) & ~clean_adv
  best = final_search(logits_fn, x0, y0, s.best, found, final_search_steps)
  best_norm = jnp.where(found, _norm_rows(best - x0, norm), s.best_norm)
  return _merge(best, best_norm, s.steps, runs, x, radius)


def _merge(best: jax.Array, best_norm: jax.Array, steps: jax.Array, runs: int, x: jax.Array,
           radius: jax.Array) -> FabResult:
  """``(B·runs)`` rows to ``(B)``: each example's smallest perturbation (``x`` if none within ε)."""
  norms = best_norm.reshape(-1, runs)
  pick = jnp.argmin(norms, axis=1)
  points = best.reshape((-1, runs) + best.shape[1:])
  point = jnp.take_along_axis(points, pick.reshape((-1, 1) + (1,) * (points.ndim - 2)), axis=1)[:, 0]
  norm = jnp.min(norms, axis=1)
  ok = norm <= radius
  return FabResult(jnp.where(_core.rows_like(ok, x), point, x), jnp.where(ok, norm, jnp.inf),
                   jnp.sum(steps.reshape(-1, runs), axis=1))


def fab(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: float | jax.Array,
        norm: Norm = "linf", num_steps: int = 100, num_targets: int = 9, restarts: int = 1,
        clip: tuple[float, float] = (0.0, 1.0), early_stop: bool = True, **options) -> jax.Array:
  """FAB-T (or FAB with ``num_targets=0``) at radius ε: :func:`fab_with_info`'s ``x_adv``.

  ``(B, *shape)`` inputs within ε of ``x`` that are misclassified where
  FAB found such a point, else ``x``; ``options`` go to :func:`fab_with_info`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[1., -1.], [-1., 1.]])
    >>> x, y = jnp.array([[0.55, 0.45]]), jnp.array([0])
    >>> x_adv = fab(lambda x: x @ w, x, y, key=jax.random.key(0), eps=0.1, num_targets=1)
    >>> bool(jnp.argmax(x_adv @ w) != 0), float(jnp.max(jnp.abs(x_adv - x))) <= 0.1
    (True, True)
  """
  return fab_with_info(logits_fn, x, y, key=key, eps=eps, norm=norm, num_steps=num_steps,
                       num_targets=num_targets, restarts=restarts, clip=clip, early_stop=early_stop,
                       **options).x_adv
