"""Three of the *Indicators of Attack Failure* (Pintor et al., NeurIPS 2022), per example.

An attack that reports an example as robust may have failed rather than
the model having resisted. Each indicator here names the examples where an
attack's own behaviour says so:

* **silent success**: an iterate of the attack was misclassified, but the
  point it returns is not (PGD returning its last iterate, as the paper's
  protocol does, can walk out of a misclassified region it had reached);
* **incomplete optimisation**: the loss of the attack's trajectory still
  rises over its last steps, so more steps may break the example;
* **unstable predictions**: the model's prediction changes between two
  identical forward passes (a randomised defence) or under noise far
  below ε, so a gradient attack follows a surface it cannot trust.

Each returns an :class:`Indicator`: PASS/FLAG and the indices of the
examples it concerns. The trajectories are PGD's with a fixed start (the
same key), so a shorter run is a prefix of a longer one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax import _checks
from crp_jax.attacks import _core, _pgd
from crp_jax.attacks._core import Clip, LogitsFn, Norm


class Indicator(NamedTuple):
  """One indicator of attack failure: ``passed`` false where some example trips it."""

  name: str
  passed: bool
  examples: np.ndarray   # (k,) indices of the examples it concerns
  detail: str

  def line(self) -> str:
    return f"{'PASS' if self.passed else 'FLAG'}  {self.name}: {self.detail}"


def _indicator(name: str, flags: np.ndarray, what: str) -> Indicator:
  examples = np.flatnonzero(np.asarray(flags, bool))
  shown = ", ".join(str(i) for i in examples[:10]) + (" ..." if examples.size > 10 else "")
  detail = f"{examples.size} of {np.size(flags)} examples {what}" + (f" (examples {shown})" if examples.size else "")
  return Indicator(name, examples.size == 0, examples, detail)


def silent_success(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: float,
                   step_size: float, num_steps: int, random_start: bool = True, norm: Norm = "linf",
                   clip: Clip = (0.0, 1.0)) -> Indicator:
  """Examples whose PGD trajectory was misclassified at some iterate while its last iterate is not.

  Two runs of the same PGD (same key, every step): the last iterate, and the
  first misclassified iterate. ``(B, *shape)`` inputs, ``(B,)`` labels.
  """
  _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps)
  common = dict(key=key, eps=eps, step_size=step_size, num_steps=num_steps, random_start=random_start, norm=norm,
                clip=clip, early_stop=False)
  last = _core.correct(logits_fn, _pgd.pgd(logits_fn, x, y, last_iterate=True, **common), y)
  best = _core.correct(logits_fn, _pgd.pgd(logits_fn, x, y, last_iterate=False, **common), y)
  return _indicator("silent success", np.asarray(last & ~best),
                    f"were misclassified at an iterate of PGD-{num_steps} but not at its last")


def incomplete_optimisation(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: float,
                            step_size: float, num_steps: int, window: int | None = None, tol: float = 1e-3,
                            random_start: bool = True, norm: Norm = "linf",
                            clip: Clip = (0.0, 1.0)) -> Indicator:
  r"""Examples still correct after PGD-n whose cross-entropy rose over the last ``window`` steps.

  With :math:`\ell_k` the loss at iterate ``k`` of one trajectory (same key),
  an example is flagged if it is classified correctly at ``x^{(n)}`` and
  :math:`\ell_n - \ell_{n-w} > \mathrm{tol} \cdot \max(1, |\ell_{n-w}|)`;
  ``window`` defaults to ``max(1, n // 10)``.
  """
  _checks.attack_inputs(logits_fn, x, y, clip=clip, eps=eps)
  window = max(1, num_steps // 10) if window is None else _checks.count(window, "window")
  if window >= num_steps:
    raise ValueError(f"window: {window} must be smaller than num_steps ({num_steps})")
  common = dict(key=key, eps=eps, step_size=step_size, random_start=random_start, norm=norm, clip=clip,
                last_iterate=True)
  end = _pgd.pgd(logits_fn, x, y, num_steps=num_steps, **common)
  before = _pgd.pgd(logits_fn, x, y, num_steps=num_steps - window, **common)
  loss_end, loss_before = _core.ce_loss(logits_fn(end), y), _core.ce_loss(logits_fn(before), y)
  rising = (loss_end - loss_before) > tol * jnp.maximum(1.0, jnp.abs(loss_before))
  return _indicator("incomplete optimisation", np.asarray(_core.correct(logits_fn, end, y) & rising),
                    f"are still correct after PGD-{num_steps} with the loss rising over its last {window} steps")


def unstable_predictions(logits_fn: LogitsFn, x: jax.Array, *, key: jax.Array, noise: float = 1e-3,
                         draws: int = 4, clip: Clip = (0.0, 1.0)) -> Indicator:
  """Examples whose predicted class changes between two forward passes or under uniform noise of ``±noise``.

  ``logits_fn`` is called as it is (not traced), so a randomised model's
  Python-side randomness shows. Draw ``d`` of example ``i`` uses
  ``fold_in(fold_in(key, i), d)``.
  """
  _checks.attack_inputs(logits_fn, x, jnp.zeros(len(x), jnp.int32), clip=clip, eps=noise)
  _checks.count(draws, "draws")
  pred = np.asarray(jnp.argmax(logits_fn(x), 1))
  changed = np.asarray(jnp.argmax(logits_fn(x), 1)) != pred
  keys = _core.example_keys(key, jnp.arange(len(x)))
  for d in range(draws):
    u = _core.per_row(_core.fold_rows(keys, d), lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0))
    changed |= np.asarray(jnp.argmax(logits_fn(_core.clip_box(x + noise * u, clip)), 1)) != pred
  return _indicator("unstable predictions", changed,
                    f"change class between two forward passes or under noise of ±{noise:g} ({draws} draws)")


def attack_failure(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: float,
                   num_steps: int = 100, norm: Norm = "linf", clip: Clip = (0.0, 1.0)) -> tuple[Indicator, ...]:
  """The three indicators with PGD-n at ε (step ``2.5·ε/n``, random start), keys ``fold_in(key, 0..2)``."""
  step = 2.5 * eps / num_steps
  pgd_args = dict(eps=eps, step_size=step, num_steps=num_steps, norm=norm, clip=clip)
  return (silent_success(logits_fn, x, y, key=jax.random.fold_in(key, 0), **pgd_args),
          incomplete_optimisation(logits_fn, x, y, key=jax.random.fold_in(key, 1), **pgd_args),
          unstable_predictions(logits_fn, x, key=jax.random.fold_in(key, 2), clip=clip))
