"""Shared pieces of the attacks: per-example losses, balls, steps, best-point tracking.

Everything here works on a batch whose first axis indexes independent
examples; nothing reduces across examples, so the attacks shard over a data
mesh. Shapes: ``x`` is ``(B, *shape)``, ``y`` is ``(B,)`` integer labels,
logits are ``(B, C)``.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

LogitsFn = Callable[[jax.Array], jax.Array]
LogitsLossFn = Callable[[jax.Array, jax.Array], jax.Array]
Norm = Literal["linf", "l2", "l1"]
Clip = tuple[float, float] | None
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
_TINY = 1e-12


# ----------------------------------------------------------------------------- losses


def ce_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Cross-entropy ``−log softmax(z)_y``, ``(B, C), (B,) -> (B,)``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _true_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]


def _best_other_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
  is_true = jax.nn.one_hot(y, logits.shape[1], dtype=jnp.bool_)
  return jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=1)


def top_other_classes(logits: jax.Array, y: jax.Array, k: int) -> jax.Array:
  """``(B, k)`` the ``k`` highest-scoring classes other than ``y``, best first."""
  is_true = jax.nn.one_hot(y, logits.shape[1], dtype=jnp.bool_)
  return jax.lax.top_k(jnp.where(is_true, -jnp.inf, logits), k)[1]


def margin_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  r"""CW logit margin :math:`\max_{j \ne y} z_j - z_y`; ``> 0`` means misclassified."""
  return _best_other_logit(logits, y) - _true_logit(logits, y)


def _sorted_top(logits: jax.Array, k: int, min_classes: int, name: str) -> jax.Array:
  if logits.shape[1] < min_classes:
    raise ValueError(f"{name} needs at least {min_classes} classes, got {logits.shape[1]}")
  return jax.lax.top_k(logits, k)[0]


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  r"""Difference of logits ratio (Croce & Hein 2020), needs ``C >= 3``.

  .. math::
    \mathrm{DLR}(z, y) = -\frac{z_y - \max_{j \ne y} z_j}{z_{\pi_1} - z_{\pi_3} + 10^{-12}},

  with :math:`\pi` sorting the logits in decreasing order. Invariant to
  shifting and rescaling the logits.
  """
  top = _sorted_top(logits, 3, 3, "dlr_loss")
  return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + _TINY)


def dlr_targeted_loss(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
  r"""Targeted DLR of APGD-T, needs ``C >= 4``; ``target`` is ``(B,)``.

  .. math::
    -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4})/2 + 10^{-12}}.
  """
  top = _sorted_top(logits, 4, 4, "dlr_targeted_loss")
  scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY
  return (_true_logit(logits, target) - _true_logit(logits, y)) / scale


#: Keras' ``epsilon()``: the probability clip of :func:`prob_ce_loss`.
_PROB_CLIP = 1e-7


def prob_ce_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  r"""Cross-entropy computed in probability space, the Keras ``categorical_crossentropy`` way.

  .. math::
    \ell(z, y) = -\log \mathrm{clip}\big(\mathrm{softmax}(z)_y,\ 10^{-7},\ 1 - 10^{-7}\big),

  ``(B, C), (B,) -> (B,)``. Where the model is confident,
  ``softmax(z)_y > 1 − 10⁻⁷``, the clip is flat and the input gradient is
  exactly zero, so a gradient attack on this loss does not move such
  examples even though :func:`ce_loss` still has a gradient there.

  It exists only to reproduce a suspected bug of the paper's evaluation (an
  attack on Keras probabilities whose gradient saturates); do not use it
  to evaluate a model.
  """
  p_true = _true_logit(jax.nn.softmax(logits, axis=-1), y)
  return -jnp.log(jnp.clip(p_true, _PROB_CLIP, 1.0 - _PROB_CLIP))


LOSSES: dict[str, LogitsLossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss,
                                   "prob_ce": prob_ce_loss}


def get_loss(name: str) -> LogitsLossFn:
  if name not in LOSSES:
    raise ValueError(f"loss={name!r}: unknown; choose one of {', '.join(LOSSES)}")
  return LOSSES[name]


def misclassified(logits: jax.Array, y: jax.Array) -> jax.Array:
  """``(B,)`` bool, ``argmax z != y``: the attack's success criterion."""
  return jnp.argmax(logits, axis=1) != y


class Eot(NamedTuple):
  r"""A randomised model ``fn(x, key) -> (B, C)`` seen through ``draws`` fixed draws of its randomness.

  Called, it returns the mean logits over the draws (draw ``d`` keyed
  ``fold_in(key, d)``), a deterministic function every attack accepts. The
  gradient attacks (FGSM, PGD, APGD, APGD-T) then differentiate the loss
  averaged over the draws, :math:`rac{1}{D}\sum_d \ell(\mathrm{fn}(x, k_d), y)`:
  Expectation over Transformation (Athalye et al. 2018), with the same
  draws at every step (AutoAttack's ``rand`` version draws anew at each).
  """

  fn: Callable[[jax.Array, jax.Array], jax.Array]
  key: jax.Array
  draws: int

  def all_logits(self, x: jax.Array) -> jax.Array:
    """``(D, B, C)`` the logits of every draw."""
    return jax.vmap(lambda d: self.fn(x, jax.random.fold_in(self.key, d)))(jnp.arange(self.draws))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.mean(self.all_logits(x), axis=0)


def eot(fn: Callable[[jax.Array, jax.Array], jax.Array], *, key: jax.Array, draws: int = 20) -> Eot:
  """A randomised model ``fn(x, key) -> (B, C)`` as a :class:`Eot` logits function over ``draws`` draws.

  >>> import jax, jax.numpy as jnp
  >>> noisy = lambda x, k: x + 0.1 * jax.random.normal(k, x.shape)
  >>> f = eot(noisy, key=jax.random.key(0), draws=1000)
  >>> bool(jnp.allclose(f(jnp.array([[1.0, 0.0]])), jnp.array([[1.0, 0.0]]), atol=0.02))
  True
  """
  if not callable(fn):
    raise TypeError(f"fn: expected a callable fn(x, key) -> logits, got {type(fn).__name__}")
  if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
    raise ValueError(f"draws={draws!r}: must be an integer >= 1")
  return Eot(fn, key, draws)


def loss_and_grad(
    logits_fn: LogitsFn, loss_fn: LogitsLossFn, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example loss ``(B,)``, logits ``(B, C)`` and input gradient ``(B, *shape)``.

  Differentiates the *sum* of per-example losses: with a per-example model
  (BatchNorm in inference mode) row ``b`` of the gradient is ``∇_{x_b} ℓ_b``.
  With an :class:`Eot` model the loss is the mean over its draws and the
  logits their mean.
  """
  def total(x):
    if isinstance(logits_fn, Eot):
      draws = logits_fn.all_logits(x)
      loss = jnp.mean(jax.vmap(lambda z: loss_fn(z, y))(draws), axis=0)
      return jnp.sum(loss), (loss, jnp.mean(draws, axis=0))
    logits = logits_fn(x)
    loss = loss_fn(logits, y)
    return jnp.sum(loss), (loss, logits)

  (_, (loss, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
  return loss, logits, grad


# ----------------------------------------------------------------------------- metrics


def correct(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
  """``(B,)`` bool: is ``argmax logits_fn(x)`` the label ``y``.

  >>> import jax.numpy as jnp
  >>> correct(lambda x: x, jnp.array([[0., 1.], [1., 0.]]), jnp.array([1, 1]))
  Array([ True, False], dtype=bool)
  """
  return ~misclassified(logits_fn(x), y)


def accuracy(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
  """Scalar fraction of ``x`` classified as ``y``.

  >>> import jax.numpy as jnp
  >>> accuracy(lambda x: x, jnp.array([[0., 1.], [1., 0.]]), jnp.array([1, 1]))
  Array(0.5, dtype=float32)
  """
  return jnp.mean(correct(logits_fn, x, y).astype(jnp.float32))


# ----------------------------------------------------------------------------- balls


def rows_like(v: jax.Array, x: jax.Array) -> jax.Array:
  """Reshape a ``(B,)`` vector to broadcast against ``x`` (rank promotion is an error)."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - 1))


def l2_norm(v: jax.Array) -> jax.Array:
  """``(B,)`` Euclidean norm of each example."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim))))


def check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def clip_box(x: jax.Array, clip: Clip) -> jax.Array:
  return x if clip is None else jnp.clip(x, clip[0], clip[1])


def scan_sum(v: jax.Array, axis: int = 1) -> jax.Array:
  """Sum along ``axis`` (kept, size 1) as the last entry of a cumulative sum.

  XLA's vectorised reductions add a row's entries in an order that can
  depend on the number of rows (on CPU, ``jnp.sum`` of one row of a
  ``(128, 72)`` array differs in the last bit from the same row alone); the
  scan adds them in the same order whatever the batch, which keeps the L1
  attacks' per-example results batch-invariant.
  """
  return jax.lax.slice_in_dim(jnp.cumsum(v, axis=axis), v.shape[axis] - 1, v.shape[axis], axis=axis)


def l1_norm(v: jax.Array) -> jax.Array:
  """``(B,)`` sum of absolute values of each example (:func:`scan_sum`: batch-invariant)."""
  return scan_sum(jnp.abs(v.reshape(v.shape[0], -1)))[:, 0]


def lp_norm(v: jax.Array, norm: Norm) -> jax.Array:
  """``(B,)`` the L∞, L2 or L1 norm of each example of ``v`` ``(B, ...)``."""
  if norm == "linf":
    return jnp.max(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)
  return l2_norm(v) if norm == "l2" else l1_norm(v)


def project_l1_box(delta: jax.Array, lower: jax.Array, upper: jax.Array, eps: jax.Array) -> jax.Array:
  r"""Euclidean projection of ``δ`` onto :math:`\{d : \|d\|_1 \le \epsilon,\ lower \le d \le upper\}`.

  Needs ``lower ≤ 0 ≤ upper`` (the box holds the centre). By the KKT
  conditions the projection is a box-capped soft threshold,

  .. math::
    d_i = \mathrm{sign}(\delta_i) \min\big(\max(|\delta_i| - \lambda, 0),\ r_i\big),

  with ``r_i`` the room towards ``δ_i``'s side and ``λ = 0`` if that is
  already inside the ball, else the ``λ > 0`` where the L1 norm
  :math:`g(\lambda) = \sum_i \mathrm{clip}(|\delta_i| - \lambda, 0, r_i)` equals ε.
  ``g`` is piecewise linear, its slope falls by 1 at :math:`|\delta_i| - r_i`
  and rises by 1 at :math:`|\delta_i|`; sorting those ``2D`` breakpoints and
  summing ``g``'s decrease from the right gives ``λ`` exactly. A final
  rescale keeps float rounding inside the ball.

  Args:
    delta: ``(B, *shape)`` the step to project.
    lower, upper: ``(B, *shape)`` (or broadcastable) bounds of each coordinate.
    eps: radius ε.

  Returns:
    ``(B, *shape)`` the projected step.
  """
  n = delta.shape[0]
  u = delta.reshape(n, -1)
  a = jnp.abs(u)
  room = jnp.maximum(jnp.where(u > 0, jnp.broadcast_to(upper, delta.shape).reshape(n, -1),
                               -jnp.broadcast_to(lower, delta.shape).reshape(n, -1)), 0.0)
  room = jnp.minimum(room, a)  # past |δ_i| a coordinate's room changes nothing
  points = jnp.concatenate([a - room, a], axis=1)
  order = jnp.argsort(points, axis=1)
  p = jnp.take_along_axis(points, order, axis=1)
  kinks = jnp.take_along_axis(jnp.concatenate([-jnp.ones_like(a), jnp.ones_like(a)], axis=1), order, axis=1)
  slope = jnp.cumsum(kinks, axis=1)  # g's slope right of each breakpoint
  drop = jnp.concatenate([-slope[:, :-1] * (p[:, 1:] - p[:, :-1]), jnp.zeros((n, 1), u.dtype)], axis=1)
  g = jnp.flip(jnp.cumsum(jnp.flip(drop, axis=1), axis=1), axis=1)  # g at each breakpoint
  k = jnp.maximum(jnp.sum(g > eps, axis=1, keepdims=True) - 1, 0)
  at = lambda v: jnp.take_along_axis(v, k, axis=1)
  lam = at(p) + (at(g) - eps) / jnp.maximum(-at(slope), 1.0)
  lam = jnp.where(scan_sum(room) > eps, jnp.maximum(lam, 0.0), 0.0)
  d = jnp.sign(u) * jnp.clip(a - lam, 0.0, room)
  d = d * jnp.minimum(1.0, eps / (scan_sum(jnp.abs(d)) + _TINY))
  return d.reshape(delta.shape)


def project(x_adv: jax.Array, x: jax.Array, eps: jax.Array, norm: Norm, clip: Clip) -> jax.Array:
  """Project onto ``{x' : ‖x' − x‖ ≤ ε} ∩ [lo, hi]^d``.

  Projecting onto the ball and then clipping is exact for L∞ and L2: the
  ball is a product (L∞) or is shrunk towards ``x`` coordinate-wise by
  clipping (L2), so clipping never leaves the ball as long as ``x`` itself
  is inside ``clip``. L1 is not: clipping after the L1 projection would
  waste budget, so :func:`project_l1_box` projects onto the intersection.
  """
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  elif norm == "l2":
    scale = jnp.minimum(1.0, eps / (l2_norm(delta) + _TINY))
    delta = delta * rows_like(scale, x)
  else:
    lo, hi = (-jnp.inf, jnp.inf) if clip is None else clip
    delta = project_l1_box(delta, lo - x, hi - x, eps)
  return clip_box(x + delta, clip)


def ascent_direction(grad: jax.Array, norm: Norm) -> jax.Array:
  """Steepest-ascent unit step: ``sign(g)`` (L∞), ``g / ‖g‖₂`` (L2), or the sign of ``g``'s largest coordinate (L1)."""
  if norm == "linf":
    return jnp.sign(grad)
  if norm == "l2":
    return grad / rows_like(l2_norm(grad) + _TINY, grad)
  flat = grad.reshape(grad.shape[0], -1)
  top = jax.nn.one_hot(jnp.argmax(jnp.abs(flat), axis=1), flat.shape[1], dtype=grad.dtype)
  return (top * jnp.sign(flat)).reshape(grad.shape)


def random_start(key: jax.Array, x: jax.Array, eps: jax.Array, norm: Norm, clip: Clip) -> jax.Array:
  """A random point of the ε ball around each example, then clipped.

  L∞: ``δ ~ U(−ε, ε)^d``. L2: direction ``u = g/‖g‖`` with ``g ~ N(0, I)``
  and radius ``ε·U^{1/d}``, i.e. uniform in volume. L1: ``x + g``,
  ``g ~ N(0, I)``, projected onto the ball and the box (AutoAttack's L1
  start; it lies on the sphere). Row ``b`` draws from its own key
  (:func:`row_keys`), so its start does not depend on the other rows.
  """
  keys = row_keys(key, x.shape[0])
  if norm == "linf":
    delta = per_row(keys, lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0)) * eps
  elif norm == "l1":
    return project(x + per_row(keys, lambda k: jax.random.normal(k, x.shape[1:], x.dtype)), x, eps, norm, clip)
  else:
    def one(k):
      dir_key, radius_key = jax.random.split(k)
      return jax.random.normal(dir_key, x.shape[1:], x.dtype), jax.random.uniform(radius_key, (), x.dtype)
    g, u = jax.vmap(one)(keys)
    radius = eps * u ** (1.0 / x[0].size)
    delta = g * rows_like(radius / (l2_norm(g) + _TINY), x)
  return clip_box(x + delta, clip)


# ----------------------------------------------------------------------------- per-example keys
# An attack's randomness is drawn per example: row b of a batch draws only from its
# own key, so its draws are the same bits at any batch size, chunking, order or
# device count. One key means row b's key is fold_in(key, b); a caller that splits
# its data passes example_keys(key, ids) with each example's id instead.


def is_key_batch(key: jax.Array) -> bool:
  """Whether ``key`` holds one key per example (typed ``(B,)``, or raw ``uint32`` ``(B, 2)``)."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  return key.ndim == (1 if typed else 2)


def example_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
  """``(B,)`` keys, ``fold_in(key, ids[b])``: each example's own key, whatever batch it is in.

  Pass these as an attack's ``key`` when you run the attack on parts of a
  dataset (chunks, shards, a subset): example ``i`` then draws the same
  random starts, targets' starts and Square proposals wherever it lands.
  """
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids))


def row_keys(key: jax.Array, batch: int) -> jax.Array:
  """``(B,)`` keys of the rows: ``key`` as given if it holds ``B`` keys, else ``fold_in(key, b)`` for row ``b``."""
  if not is_key_batch(key):
    return example_keys(key, jnp.arange(batch))
  if key.shape[0] != batch:
    raise ValueError(f"key: {key.shape[0]} per-example keys for {batch} examples; pass one key, "
                     f"or one per example (crp_jax.attacks.example_keys)")
  return key


def fold_rows(keys: jax.Array, data: int | jax.Array) -> jax.Array:
  """``(B,)`` keys ``fold_in(keys[b], data)``: a new stream per row (a restart, an iteration)."""
  return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def per_row(keys: jax.Array, draw: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """``draw(keys[b])`` stacked over rows: ``(B, *draw's shape)``."""
  return jax.vmap(draw)(keys)


# ----------------------------------------------------------------------------- best point


class Best(NamedTuple):
  """Best point found so far per example: the first misclassified one, else the highest loss.

  Attributes:
    x: ``(B, *shape)`` the point.
    loss: ``(B,)`` the attack loss at ``x``.
    adv: ``(B,)`` bool, ``x`` is misclassified.
  """

  x: jax.Array
  loss: jax.Array
  adv: jax.Array

  @classmethod
  def empty(cls, x: jax.Array) -> "Best":
    batch = x.shape[:1]
    return cls(x, jnp.full(batch, -jnp.inf, x.dtype), jnp.zeros(batch, jnp.bool_))


def update_best(best: Best, new: Best) -> Best:
  """Per example take ``new`` unless ``best`` is already adversarial.

  A misclassified point beats any loss; among points that are not, the
  higher loss wins; once a point is adversarial it is kept (first success).
  """
  take = ~best.adv & (new.adv | (new.loss > best.loss))
  return Best(
      jnp.where(rows_like(take, best.x), new.x, best.x),
      jnp.where(take, new.loss, best.loss),
      best.adv | new.adv,
  )


# ----------------------------------------------------------------------------- loops


def steps_until_done(num_steps: int, body: Callable[[jax.Array, Any], Any], init: Any,
                     done: Callable[[Any], jax.Array], early_stop: bool = True) -> Any:
  """``lax.fori_loop(0, num_steps, body, init)`` that may stop once ``done(carry)`` is all True.

  For the attacks' loops, where a row whose ``done`` is set (it found a
  misclassified point) no longer changes the output: stopping early then
  returns the same result, bit for bit, in fewer steps. ``early_stop=False``
  always runs ``num_steps`` (fixed work, e.g. for benchmarks). On a data
  mesh the test reduces across shards once per step.
  """
  if not early_stop:
    return jax.lax.fori_loop(0, num_steps, body, init)

  def cond(carry):
    i, state = carry
    return (i < num_steps) & ~jnp.all(done(state))

  return jax.lax.while_loop(cond, lambda c: (c[0] + 1, body(c[0], c[1])), (0, init))[1]


# ----------------------------------------------------------------------------- runs
# Restarts (and APGD-T's targets) run as one batch of B·R rows, example-major:
# row b·R + r is run r of example b. One big batch is the fastest on CPU, and
# example-major rows keep every example's runs on its own shard of a data mesh.


def repeat_runs(a: jax.Array, num_runs: int) -> jax.Array:
  """``(B, ...) -> (B·R, ...)``, each example repeated once per run."""
  return jnp.repeat(a, num_runs, axis=0)


def starts(key: jax.Array, x: jax.Array, eps: jax.Array, norm: Norm, clip: Clip, num_runs: int,
           random: bool = True) -> jax.Array:
  """``(B·R, *shape)`` starting points: run ``r`` of row ``b`` draws :func:`random_start` with ``fold_in(key_b, r)``.

  ``key_b`` is row ``b``'s key (:func:`row_keys`). So run 0 starts at the
  same point whatever the number of runs, and a row's starts whatever the
  other rows.
  """
  if not random:
    return repeat_runs(x, num_runs)
  keys = row_keys(key, x.shape[0])
  if norm == "l1":   # the same draws, projected once on the (B·R) rows: vmapped, its sums lose batch invariance
    noise = jax.vmap(lambda r: per_row(fold_rows(keys, r), lambda k: jax.random.normal(k, x.shape[1:], x.dtype)),
                     out_axes=1)(jnp.arange(num_runs)).reshape((-1,) + x.shape[1:])
    x_runs = repeat_runs(x, num_runs)
    return project(x_runs + noise, x_runs, eps, norm, clip)
  draw = lambda r: random_start(fold_rows(keys, r), x, eps, norm, clip)
  stacked = jax.vmap(draw, out_axes=1)(jnp.arange(num_runs))  # (B, R, *shape)
  return stacked.reshape((-1,) + x.shape[1:])


def merge_runs(best: Best, num_runs: int) -> Best:
  """``(B·R)`` rows to ``(B)``: per example the first adversarial run, else the highest loss.

  The same rule as applying :func:`update_best` run after run, so more runs
  never give a worse point.
  """
  adv = best.adv.reshape(-1, num_runs)
  loss = best.loss.reshape(-1, num_runs)
  pick = jnp.where(jnp.any(adv, axis=1), jnp.argmax(adv, axis=1), jnp.argmax(loss, axis=1))

  def take(a: jax.Array) -> jax.Array:
    a = a.reshape((-1, num_runs) + a.shape[1:])
    index = pick.reshape((-1, 1) + (1,) * (a.ndim - 2))
    return jnp.take_along_axis(a, index, axis=1)[:, 0]

  return Best(take(best.x), take(best.loss), jnp.any(adv, axis=1))


def as_scalar(eps: float | jax.Array, x: jax.Array) -> jax.Array:
  return jnp.asarray(eps, x.dtype)
