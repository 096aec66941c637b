"""Attacks as data: one frozen spec per attack, one function that runs any spec, and the strong table.

An :class:`AttackSpec` names an attack and every setting it runs with, so
an evaluation plan, a report and a parity tool read fields instead of
parsing names such as ``pgd20@eps``. :func:`strong_attacks` is the one
table of the strong protocol (APGD-CE, APGD-T, Square), used by
:func:`~crp_jax.attacks.strong_eval`, by the CLI's evaluation and by the
parity tool.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from crp_jax import _checks
from crp_jax.attacks import _apgd, _fab, _noise, _pgd, _square
from crp_jax.attacks._core import LogitsFn

#: The kinds of attack a spec can name.
KINDS: tuple[str, ...] = ("clean", "fgsm", "pgd", "apgd", "apgd_t", "fab", "square", "noise")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One attack and all its settings.

  Attributes:
    kind: one of :data:`KINDS` (``clean`` returns the input).
    eps: radius ε of the ball.
    steps: iterations (PGD, APGD, FAB, per target for APGD-T and FAB-T),
      queries (Square) or samples (noise).
    step_size: PGD's step η (unused by the others).
    restarts: PGD/APGD/FAB runs (per target for FAB-T); each example keeps its best.
    loss: ``ce``, ``margin``, ``dlr`` or ``prob_ce`` (FGSM, PGD, APGD; see
      :data:`~crp_jax.attacks._core.LOSSES`).
    random_start: PGD/APGD start at a uniform point of the ball, else at x.
    last_iterate: PGD returns each run's last iterate (the paper's Eq. 4),
      else its first misclassified or highest-loss iterate.
    num_targets: APGD-T's and FAB-T's target classes (0: untargeted FAB).
    norm: ``linf``, ``l2`` or ``l1``.
    name: unique key of the spec's results in ``results.json``.
    label: the row name in reports, e.g.
      ``PGD-20 (η=0.01, random start, last iterate)``.
    key_path: the attack's key is ``fold_in(root, *key_path)`` of the
      evaluation's root key, so a spec fixes its randomness.
    targeting: APGD-T's targets, ``logits`` (AutoAttack's) or ``malt``.
  """
  kind: str
  eps: float = 0.0
  steps: int = 0
  step_size: float = 0.0
  restarts: int = 1
  loss: str = "ce"
  random_start: bool = True
  last_iterate: bool = False
  num_targets: int = 0
  norm: str = "linf"
  name: str = ""
  label: str = ""
  key_path: tuple[int, ...] = ()
  targeting: str = "logits"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r}: unknown attack kind; choose one of {', '.join(KINDS)}")
    if self.targeting not in _apgd.TARGETING:
      raise ValueError(f"targeting={self.targeting!r}: choose one of {', '.join(_apgd.TARGETING)}")

  def settings(self) -> tuple:
    """What the attack computes: every field but ``name`` and ``label``.

    Two specs with equal settings give the same bits on the same inputs, so
    an evaluation runs them once.
    """
    return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "label"))

  def key(self, root: jax.Array) -> jax.Array:
    """This attack's PRNG key: ``root`` with :attr:`key_path` folded in."""
    for i in self.key_path:
      root = jax.random.fold_in(root, i)
    return root


Runner = Callable[..., jax.Array]


def _pgd_spec(s: AttackSpec, f: LogitsFn, x: jax.Array, y: jax.Array, k: jax.Array, **opts) -> jax.Array:
  return _pgd.pgd(f, x, y, key=k, eps=s.eps, step_size=s.step_size, num_steps=s.steps,
                  restarts=s.restarts, random_start=s.random_start, loss=s.loss, norm=s.norm,
                  last_iterate=s.last_iterate, **opts)


def _apgd_spec(s: AttackSpec, f: LogitsFn, x: jax.Array, y: jax.Array, k: jax.Array, **opts) -> jax.Array:
  return _apgd.apgd(f, x, y, key=k, eps=s.eps, norm=s.norm, num_steps=s.steps, loss=s.loss,
                    restarts=s.restarts, random_start=s.random_start, **opts)


def _apgd_t_spec(s: AttackSpec, f: LogitsFn, x: jax.Array, y: jax.Array, k: jax.Array, **opts) -> jax.Array:
  return _apgd.apgd_targeted(f, x, y, key=k, eps=s.eps, norm=s.norm, num_steps=s.steps,
                             num_targets=s.num_targets, restarts=s.restarts,
                             random_start=s.random_start, targeting=s.targeting, **opts)


def _fab_spec(s: AttackSpec, f: LogitsFn, x: jax.Array, y: jax.Array, k: jax.Array, **opts) -> jax.Array:
  return _fab.fab(f, x, y, key=k, eps=s.eps, norm=s.norm, num_steps=s.steps, num_targets=s.num_targets,
                  restarts=s.restarts, **opts)


_RUNNERS: dict[str, Runner] = {
    "clean": lambda s, f, x, y, k, **opts: x,
    "fgsm": lambda s, f, x, y, k, clip, early_stop: _pgd.fgsm(f, x, y, eps=s.eps, loss=s.loss, norm=s.norm,
                                                                           clip=clip),
    "pgd": _pgd_spec,
    "apgd": _apgd_spec,
    "apgd_t": _apgd_t_spec,
    "fab": _fab_spec,
    "square": lambda s, f, x, y, k, **opts: _square.square(f, x, y, key=k, eps=s.eps, num_queries=s.steps,
                                                           norm=s.norm, **opts),
    # Noise lies in [0, 1] by construction; it ignores ``clip``.
    "noise": lambda s, f, x, y, k, **opts: _noise.random_noise(f, x, y, key=k, eps=s.eps,
                                                               num_samples=s.steps),
}


def run_attack(spec: AttackSpec, logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array,
               clip: tuple[float, float] | None = (0.0, 1.0), early_stop: bool = True) -> jax.Array:
  """``(B, *shape)`` adversarial inputs of ``spec`` against ``logits_fn``, drawn with ``key`` as given.

  ``key`` is the attack's own key (:meth:`AttackSpec.key` of a root key);
  ``clip`` and ``early_stop`` are passed to the attack. Jittable: the spec
  is static.
  """
  return _RUNNERS[spec.kind](spec, logits_fn, x, y, key, clip=clip, early_stop=early_stop)


def strong_attacks(*, eps: float, apgd_steps: int = 100, num_targets: int = 9,
                   square_queries: int = 5000, norm: str = "linf") -> tuple[AttackSpec, ...]:
  """The strong protocol's attacks, AutoAttack-style: APGD-CE, APGD-T (DLR), Square (L∞, L2 or L1).

  Attack ``a`` of the table has ``key_path == (a,)``.
  """
  norm = _checks.norm(norm)
  table = [
      AttackSpec("apgd", eps=eps, steps=apgd_steps, loss="ce", norm=norm, name="apgd-ce",
                 label=f"APGD-CE ({apgd_steps} steps)"),
      AttackSpec("apgd_t", eps=eps, steps=apgd_steps, loss="dlr", num_targets=num_targets, norm=norm,
                 name="apgd-t",
                 label=f"APGD-T ({apgd_steps} steps, {num_targets} targets)"),
  ]
  table.append(AttackSpec("square", eps=eps, steps=square_queries, norm=norm, name="square",
                          label=f"Square ({square_queries} queries)"))
  return tuple(dataclasses.replace(s, key_path=(a,)) for a, s in enumerate(table))


#: APGD-T's targets in AutoAttack's L1 ``standard`` version (at most).
L1_TARGETS = 5

#: AutoAttack's versions (Croce & Hein 2020), as :func:`autoattack_attacks` builds them.
VERSIONS: tuple[str, ...] = ("standard", "plus", "rand")


def autoattack_attacks(version: str = "standard", *, eps: float, norm: str = "linf", apgd_steps: int = 100,
                       fab_steps: int = 100, num_targets: int = 9, square_queries: int = 5000,
                       restarts: int = 5) -> tuple[AttackSpec, ...]:
  """AutoAttack's attacks in its order: ``standard``, ``plus`` or ``rand``.

  ``standard``: APGD-CE, APGD-T (``num_targets``), FAB-T (``num_targets``),
  Square (``square_queries``), one run each; in L1, AutoAttack's L1 settings:
  APGD-CE with ``restarts`` runs and APGD-T with at most 5 targets, both
  L1-APGD (:func:`~crp_jax.attacks.apgd`), and L1 Square. ``plus``: APGD-CE and APGD-DLR
  with ``restarts`` runs, untargeted FAB with ``restarts`` runs, Square, then
  APGD-T and FAB-T. ``rand``: APGD-CE and APGD-DLR, one run each (for a
  randomised model, with EOT: :func:`~crp_jax.attacks.eot`). Square runs in the version's norm (L∞ or L2), as
  AutoAttack's does. The first three of ``standard`` are
  :func:`strong_attacks`' specs, keys included; FAB-T has ``key_path (3,)``,
  ``plus``' extra attacks ``(4,), (5,)``.
  """
  norm = _checks.norm(norm)
  if version not in VERSIONS:
    raise ValueError(f"version={version!r}: unknown AutoAttack version; choose one of {', '.join(VERSIONS)}")
  apgd_ce, apgd_t, *square = strong_attacks(eps=eps, apgd_steps=apgd_steps, num_targets=num_targets,
                                            square_queries=square_queries, norm=norm)
  fab_t = AttackSpec("fab", eps=eps, steps=fab_steps, num_targets=num_targets, norm=norm, name="fab-t",
                     label=f"FAB-T ({fab_steps} steps, {num_targets} targets)", key_path=(3,))
  if version == "standard" and norm == "l1":   # AutoAttack's L1 settings, both APGDs L1-APGD
    return (dataclasses.replace(apgd_ce, restarts=restarts, label=f"L1-APGD-CE ({apgd_steps} steps, {restarts} restarts)"),
            dataclasses.replace(apgd_t, num_targets=min(num_targets, L1_TARGETS),
                                label=f"L1-APGD-T ({apgd_steps} steps, {min(num_targets, L1_TARGETS)} targets)"),
            fab_t, *square)
  if version == "standard":
    return (apgd_ce, apgd_t, fab_t, *square)
  if version == "rand":   # for a randomised model seen through attacks.eot: the two untargeted APGDs
    return (apgd_ce, AttackSpec("apgd", eps=eps, steps=apgd_steps, loss="dlr", norm=norm, name="apgd-dlr",
                                label=f"APGD-DLR ({apgd_steps} steps)", key_path=(4,)))
  runs = f", {restarts} restarts"
  apgd_ce = dataclasses.replace(apgd_ce, restarts=restarts, label=f"APGD-CE ({apgd_steps} steps{runs})")
  apgd_dlr = AttackSpec("apgd", eps=eps, steps=apgd_steps, loss="dlr", restarts=restarts, norm=norm,
                        name="apgd-dlr", label=f"APGD-DLR ({apgd_steps} steps{runs})", key_path=(4,))
  fab = AttackSpec("fab", eps=eps, steps=fab_steps, num_targets=0, restarts=restarts, norm=norm, name="fab",
                   label=f"FAB ({fab_steps} steps{runs})", key_path=(5,))
  return (apgd_ce, apgd_dlr, fab, *square, apgd_t, fab_t)
