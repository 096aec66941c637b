"""Square Attack, L∞, L2 and L1 (Andriushchenko et al. 2020; L1: Croce & Hein 2021): score-based random search."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax import _checks
from crp_jax.attacks import _core
from crp_jax.attacks._core import Clip, LogitsFn

# Iterations after which p halves, from the paper (on its 10 000-query scale).
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_sizes(num_queries: int, p_init: float, height: int, width: int,
                 rescale_schedule: bool = False) -> np.ndarray:
  r"""Side of the square window at each of the ``num_queries − 2`` search iterations.

  ``p`` (the fraction of pixels changed) starts at ``p_init`` and halves
  after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000: at
  those iterations whatever the budget, as AutoAttack runs Square
  (``resc_schedule=False``), or with ``rescale_schedule`` at those points
  rescaled from 10 000 queries to ``num_queries``, as the Square Attack
  paper's code does. The side is :math:`\mathrm{round}(\sqrt{p\,h\,w})`
  clipped to ``[1, min(h, w)]``.

  >>> square_sizes(5000, 0.8, 28, 28)[[0, 11, 51, 201, 4997]]
  array([25, 18, 13,  9,  2], dtype=int32)
  >>> square_sizes(5000, 0.8, 28, 28, rescale_schedule=True)[[0, 6, 26, 101, 4997]]
  array([25, 18, 13,  9,  1], dtype=int32)
  """
  its = np.arange(max(num_queries - 2, 0))
  if rescale_schedule:
    its = (its / num_queries * 10_000).astype(np.int64)
  p = p_init / 2.0 ** np.searchsorted(_P_HALVINGS, its, side="left")
  side = np.round(np.sqrt(p * height * width))
  return np.clip(side, 1, min(height, width)).astype(np.int32)


class _State(NamedTuple):
  x_best: jax.Array  # (B, h, w, c)
  loss_best: jax.Array  # (B,) margin max_{j≠y} z_j − z_y, maximised
  done: jax.Array  # (B,) bool, x_best is misclassified
  queries: jax.Array  # (B,) int32


def _corners(keys: jax.Array, x: jax.Array, side: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(B, 1)`` top and left of a ``side × side`` square per example, uniform, drawn from ``keys[b]``."""
  height, width = x.shape[1:3]

  def corner(k):
    key_h, key_w = jax.random.split(k)
    return (jax.random.randint(key_h, (1,), 0, height - side + 1),
            jax.random.randint(key_w, (1,), 0, width - side + 1))

  return jax.vmap(corner)(keys)


def _window(keys: jax.Array, x: jax.Array, side: jax.Array) -> jax.Array:
  """``(B, h, w, 1)`` bool mask of one ``side × side`` square per example, at a uniform position drawn from ``keys[b]``."""
  return _mask(*_corners(keys, x, side), x, side)


def _mask(top: jax.Array, left: jax.Array, x: jax.Array, side: jax.Array) -> jax.Array:
  rows, cols = jnp.arange(x.shape[1])[None, :], jnp.arange(x.shape[2])[None, :]
  in_rows = (rows >= top) & (rows < top + side)
  in_cols = (cols >= left) & (cols < left + side)
  return in_rows[:, :, None, None] & in_cols[:, None, :, None]


def _candidate(keys: jax.Array, x: jax.Array, x_best: jax.Array, eps: jax.Array, side: jax.Array,
               clip: Clip) -> jax.Array:
  """``x_best`` with one square set to ``x ± ε`` (one sign per channel); row ``b`` draws from ``keys[b]``.

  If that changes nothing (the square already holds those values) the signs
  are flipped, as the reference code redraws until something changes.
  """
  mask = _window(_core.fold_rows(keys, 0), x, side)
  sign = _core.per_row(_core.fold_rows(keys, 1), lambda k: jax.random.rademacher(k, (1, 1) + x.shape[3:], x.dtype))
  proposal = jnp.where(mask, _core.clip_box(x + eps * sign, clip), x_best)
  unchanged = ~jnp.any(jnp.abs(proposal - x_best) > 1e-7, axis=(1, 2, 3))
  flipped = jnp.where(mask, _core.clip_box(x - eps * sign, clip), x_best)
  return jnp.where(_core.rows_like(unchanged, x), flipped, proposal)


# ----------------------------------------------------------------------------- L2


def _pattern(top: jax.Array, left: jax.Array, x: jax.Array, side: jax.Array, flip: jax.Array) -> jax.Array:
  r"""``(B, h, w, 1)`` the L2 attack's "meta pseudo-Gaussian" in each example's ``side × side`` window, unit norm.

  The window's top ``⌊s/2⌋`` rows and the rest are two rectangles of
  opposite sign; a pixel at Chebyshev distance ``d`` from its rectangle's
  centre gets :math:`\sum_{k=d}^{K-1} (k+1)^{-2}` with ``K = ⌊s/2⌋ + 1``: nested
  squares whose weights fall off with the distance. ``flip`` ``(B, 1)``
  bool swaps rows and columns. Zero outside the window.
  """
  rows = jnp.arange(x.shape[1])[None, :, None] - top[:, :, None]   # (B, h, 1)
  cols = jnp.arange(x.shape[2])[None, None, :] - left[:, :, None]  # (B, 1, w)
  i, j = jnp.where(flip[:, :, None], cols, rows), jnp.where(flip[:, :, None], rows, cols)
  half = side // 2
  upper = i < half
  i_in = jnp.where(upper, i, i - half)
  height = jnp.where(upper, half, side - half)
  d = jnp.maximum(jnp.abs(i_in - height // 2), jnp.abs(j - side // 2))
  inverse_squares = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.arange(1, max(x.shape[1:3]) + 2) ** 2)])
  value = inverse_squares[half + 1] - inverse_squares[jnp.clip(d, 0, half + 1)]
  inside = (i >= 0) & (i < side) & (j >= 0) & (j < side)
  pattern = jnp.where(inside, jnp.where(upper, value, -value), 0.0).astype(x.dtype)[..., None]
  return pattern / _core.rows_like(_core.l2_norm(pattern) + 1e-12, pattern)


def _channel_norms(v: jax.Array, norm: str = "l2") -> jax.Array:
  """``(B, 1, 1, c)`` the L2 (or L1) norm of each example's each channel."""
  if norm == "l1":
    flat = jnp.abs(v).reshape(v.shape[0], -1, v.shape[3])
    return _core.scan_sum(flat)[:, :, None, :]
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))


def _candidate_lp(keys: jax.Array, x: jax.Array, x_best: jax.Array, eps: jax.Array, side: jax.Array,
                  clip: Clip, norm: str) -> jax.Array:
  r"""``x_best`` with its perturbation moved between two random windows, its L2 (or L1) norm kept at most ε.

  With ``δ = x_best − x`` and windows ``W₁, W₂``, per channel: the mass
  :math:`\nu = \|\delta_{W_1 \cup W_2}\|` plus an even share of the unused
  budget goes into ``W₁`` along a random-signed pattern (:func:`_pattern`)
  plus ``W₁``'s old direction, and ``W₂`` is emptied (Andriushchenko et al.
  2020, the L2 update). L2 adds in squares, :math:`\sqrt{\nu^2 + (\epsilon^2 - \|\delta\|^2)/c}`;
  L1 adds the norms, :math:`\nu + (\epsilon - \|\delta\|_1)/c`, and the result is
  projected onto the L1 ball and the box (the L1 Square of Croce & Hein 2021).
  """
  top1, left1 = _corners(_core.fold_rows(keys, 0), x, side)
  top2, left2 = _corners(_core.fold_rows(keys, 1), x, side)
  flip = _core.per_row(_core.fold_rows(keys, 2), lambda k: jax.random.bernoulli(k, shape=(1,)))
  sign = _core.per_row(_core.fold_rows(keys, 3), lambda k: jax.random.rademacher(k, (1, 1) + x.shape[3:], x.dtype))
  w1, w2 = _mask(top1, left1, x, side), _mask(top2, left2, x, side)
  delta = x_best - x
  nu = _channel_norms(jnp.where(w1 | w2, delta, 0.0), norm)
  old = jnp.where(w1, delta, 0.0)
  direction = _pattern(top1, left1, x, side, flip) * sign + old / (_channel_norms(old, norm) + 1e-10)
  direction = direction / (_channel_norms(direction, norm) + 1e-12)
  if norm == "l1":
    spare = jnp.maximum(eps - _core.l1_norm(delta), 0.0)
    scale = nu + _core.rows_like(spare, x) / x.shape[3]
    return _core.project(x + jnp.where(w1, direction * scale, jnp.where(w2, 0.0, delta)), x, eps, "l1", clip)
  spare = jnp.maximum(eps ** 2 - _core.l2_norm(delta) ** 2, 0.0)
  scale = jnp.sqrt(jnp.maximum(nu ** 2 + _core.rows_like(spare, x) / x.shape[3], 0.0))
  new = jnp.where(w1, direction * scale, jnp.where(w2, 0.0, delta))
  return _onto_sphere(x, new, eps, clip)


def _onto_sphere(x: jax.Array, delta: jax.Array, eps: jax.Array, clip: Clip) -> jax.Array:
  """``clip(x + ε δ/‖δ‖₂)``: the reference rescales every candidate to norm ε before the box clips it,
  so mass the box cut from the last point is spread over the rest of the perturbation."""
  scale = jnp.where(_core.l2_norm(delta) > 0, eps / (_core.l2_norm(delta) + 1e-12), 0.0)
  return _core.clip_box(x + delta * _core.rows_like(scale, x), clip)


def _init_lp(logits_fn: LogitsFn, keys: jax.Array, x: jax.Array, y: jax.Array, eps: jax.Array,
             clip: Clip, norm: str) -> "_State":
  """Query the clean input, then a grid of random-signed patterns in blocks of ``h // 5``: scaled to L2 norm ε,
  or (L1) projected onto the L1 ball and the box."""
  logits = logits_fn(x)
  clean = _State(x, _core.margin_loss(logits, y), _core.misclassified(logits, y),
                 jnp.ones(x.shape[:1], jnp.int32))
  block = max(x.shape[1] // 5, 1)
  delta = jnp.zeros_like(x)
  origin = jnp.zeros((x.shape[0], 1), jnp.int32)
  no_flip = jnp.zeros((x.shape[0], 1), bool)
  for b, (top, left) in enumerate((t, l) for t in range(0, x.shape[1] - block + 1, block)
                                  for l in range(0, x.shape[2] - block + 1, block)):
    sign = _core.per_row(_core.fold_rows(keys, b),
                         lambda k: jax.random.rademacher(k, (1, 1) + x.shape[3:], x.dtype))
    delta = delta + _pattern(origin + top, origin + left, x, jnp.int32(block), no_flip) * sign
  if norm == "l1":
    start = _core.project(x + delta, x, eps, "l1", clip)
  else:
    start = _onto_sphere(x, delta, eps, clip)
  return _query(logits_fn, clean._replace(loss_best=jnp.full_like(clean.loss_best, -jnp.inf)), start, y)


def _query(logits_fn: LogitsFn, s: _State, x_new: jax.Array, y: jax.Array) -> _State:
  """Evaluate ``x_new`` for the examples not yet fooled; keep it if the margin grew or it fools."""
  logits = logits_fn(x_new)
  loss, fooled = _core.margin_loss(logits, y), _core.misclassified(logits, y)
  active = ~s.done
  take = active & ((loss > s.loss_best) | fooled)
  return _State(
      x_best=jnp.where(_core.rows_like(take, x_new), x_new, s.x_best),
      loss_best=jnp.where(take, loss, s.loss_best),
      done=s.done | (active & fooled),
      queries=s.queries + active.astype(jnp.int32),
  )


def _init(logits_fn: LogitsFn, keys: jax.Array, x: jax.Array, y: jax.Array, eps: jax.Array,
          clip: Clip) -> _State:
  """Query the clean input (1 query), then vertical stripes ``x ± ε`` (1 more if still robust)."""
  logits = logits_fn(x)
  clean = _State(x, _core.margin_loss(logits, y), _core.misclassified(logits, y),
                 jnp.ones(x.shape[:1], jnp.int32))
  stripes = _core.per_row(keys, lambda k: jax.random.rademacher(k, (1,) + x.shape[2:], x.dtype))
  x_init = _core.clip_box(x + eps * stripes, clip)
  # −∞: the stripes replace the clean input whatever their margin, as in the reference.
  return _query(logits_fn, clean._replace(loss_best=jnp.full_like(clean.loss_best, -jnp.inf)),
                x_init, y)


def square_with_info(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array,
    num_queries: int = 5000,
    p_init: float = 0.8,
    norm: str = "linf",
    clip: Clip = (0.0, 1.0),
    early_stop: bool = True,
    rescale_schedule: bool = False,
) -> tuple[jax.Array, jax.Array]:
  r"""Square Attack (L∞, L2 or L1) and the number of model queries spent on each example.

  Gradient-free random search on the margin loss
  :math:`\max_{j \ne y} z_j - z_y`. From vertical stripes
  :math:`x \pm \epsilon`, each iteration sets one random ``s × s`` square per
  example to :math:`x \pm \epsilon` (one random sign per channel, ``s`` from
  :func:`square_sizes`) and keeps the change if the margin grows or the
  example becomes misclassified. Fooled examples stop querying. Every
  evaluation counts: 1 for the clean input, 1 for the stripes, 1 per
  iteration, so at most ``num_queries`` per example. Unlike the reference,
  the square may touch the last row and column.

  L2 (``norm="l2"``): the start is a grid of random-signed pseudo-Gaussian
  patterns scaled to norm ε, and each iteration moves the perturbation's mass
  from one random window into another along a new pattern
  (:func:`_candidate_lp`), in odd windows of at least 3 × 3, and is rescaled
  to norm ε before the box clips it, as in the reference; every point stays
  in the L2 ball and the box. L1 (``norm="l1"``, Croce & Hein 2021): the same
  moves with L1 masses, each candidate projected onto the L1 ball and the
  box (:func:`~crp_jax.attacks._core.project_l1_box`); the start is the
  grid of patterns projected there. For ``c > 1`` channels the reference
  scales the new window by ``c`` times the mass and projects back; this
  code shares the mass across channels as its L2 update does.

  Args:
    logits_fn: ``(B, h, w, c) -> (B, C)`` logits, per-example independent.
    x: ``(B, h, w, c)`` NHWC inputs inside ``clip``.
    y: ``(B,)`` integer labels.
    key: PRNG key of the search: one key (row ``b`` draws from
      ``fold_in(key, b)``) or ``(B,)`` keys, one per example.
    eps: radius ε.
    num_queries: query budget per example, ≥ 2 (static).
    p_init: initial fraction of pixels changed per iteration.
    norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    clip: pixel range ``(lo, hi)``, or ``None``.
    early_stop: stop the search once every example is fooled (the result
      is the same); ``False`` runs every iteration, for timing.
    rescale_schedule: shrink the windows on a schedule rescaled to
      ``num_queries`` (the Square Attack paper's code) instead of at fixed
      iterations (AutoAttack's); see :func:`square_sizes`.

  Returns:
    ``x_adv`` ``(B, h, w, c)`` inside the ball and ``clip``, and ``queries``
    ``(B,)`` int32, each ``≤ num_queries``.

  References:
    Andriushchenko, Croce, Flammarion, Hein, *Square Attack: a
    query-efficient black-box adversarial attack via random search*, ECCV 2020.
    Croce, Hein, *Mind the box: l1-APGD for sparse adversarial attacks on
    image classifiers*, ICML 2021 (the L1 version).
  """
  norm = _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps, norm_name=norm)
  if x.ndim != 4:
    raise ValueError(f"x: shape {x.shape}; square needs NHWC inputs (B, h, w, c)")
  _checks.count(num_queries, "num_queries", 2)   # the clean input and the stripes
  eps = _core.as_scalar(eps, x)
  sides = square_sizes(num_queries, p_init, x.shape[1], x.shape[2], rescale_schedule)
  if norm != "linf":   # two odd windows of at least 3 × 3 (the reference's), inside the image
    sides = np.clip(sides + (sides % 2 == 0), min(3, *x.shape[1:3]), min(x.shape[1:3])).astype(np.int32)
  sides = jnp.asarray(sides)
  keys = _core.row_keys(key, x.shape[0])
  init_keys, search_keys = _core.fold_rows(keys, 0), _core.fold_rows(keys, 1)
  if norm == "linf":
    init, candidate = _init, _candidate
  else:
    init = lambda *args: _init_lp(*args, norm)
    candidate = lambda *args: _candidate_lp(*args, norm)

  def body(i, s: _State) -> _State:
    x_new = candidate(_core.fold_rows(search_keys, i), x, s.x_best, eps, sides[i], clip)
    return _query(logits_fn, s, x_new, y)

  s = init(logits_fn, init_keys, x, y, eps, clip)
  if num_queries > 2:  # the loop body indexes `sides`, which is empty otherwise
    s = _core.steps_until_done(num_queries - 2, body, s, lambda s: s.done, early_stop)
  return s.x_best, s.queries


def square(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    eps: float | jax.Array,
    num_queries: int = 5000,
    p_init: float = 0.8,
    norm: str = "linf",
    clip: Clip = (0.0, 1.0),
    early_stop: bool = True,
    rescale_schedule: bool = False,
) -> jax.Array:
  """Square Attack (L∞, L2 or L1); :func:`square_with_info` without the query counts.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[1., -1.], [-1., 1.]])
    >>> f = lambda x: x.reshape(1, 2) @ w
    >>> x, y = jnp.array([0.55, 0.45]).reshape(1, 1, 2, 1), jnp.array([0])
    >>> x_adv = square(f, x, y, key=jax.random.key(0), eps=0.1, num_queries=50)
    >>> bool(jnp.argmax(f(x_adv)) != 0)
    True
  """
  return square_with_info(logits_fn, x, y, key=key, eps=eps, num_queries=num_queries,
                          p_init=p_init, norm=norm, clip=clip, early_stop=early_stop,
                          rescale_schedule=rescale_schedule)[0]
