"""The gradient-masking checks, and the sweeps of attacks they read.

Models trained on random noise often *look* robust to FGSM and PGD while
their gradients are merely masked (Athalye et al. 2018; Carlini et al.
2019). The strong protocol runs attacks that do not trust the gradient's
scale (APGD-CE, APGD-T with the DLR loss; Croce & Hein 2020) or do not use
the gradient at all (Square; Andriushchenko et al. 2020); beside them, seven
checks each print PASS or FLAG with their numbers:

1. accuracy does not rise with more PGD/APGD steps or restarts;
2. accuracy falls monotonically in ε, to chance or below at a large ε,
   and to 0% for an unbounded attack;
3. FGSM never beats PGD;
4. neither Square nor a transfer attack beats the white-box attacks;
5. random noise of the same ε is weaker than the white-box attacks;
6. input gradients are not zero, and the model outputs logits.

The checks read typed :class:`Sweeps` and :class:`CheckInputs`, never
attack names.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import ml_collections
import numpy as np

from crp_jax.attacks import AttackSpec


class Check(NamedTuple):
  """One masking check: its verdict and the numbers behind it."""
  name: str
  passed: bool
  detail: str

  def line(self) -> str:
    return f"{'PASS' if self.passed else 'FLAG'}  {self.name}: {self.detail}"


class Sweeps(NamedTuple):
  """The attacks of checks 1, 2 and 5, each a spec.

  Attributes:
    pgd_steps: PGD-n at ε for each n of ``sweep_steps`` (step 2.5·ε/n, random start).
    apgd_steps: APGD-CE-n at ε for each n of ``sweep_apgd_steps``.
    restarts: PGD-n₀ at ε with ``sweep_restarts`` restarts (n₀ the first sweep step).
    eps: PGD-``eps_sweep_steps`` at each ε of ``eps_grid``.
    unbounded: PGD with the margin loss at ε = 1.
    noise: random sign noise at ε.
  """
  pgd_steps: tuple[AttackSpec, ...]
  apgd_steps: tuple[AttackSpec, ...]
  restarts: AttackSpec
  eps: tuple[AttackSpec, ...]
  unbounded: AttackSpec
  noise: AttackSpec

  def white_box(self) -> tuple[AttackSpec, ...]:
    """The gradient attacks at ε (with the strong APGDs, the white-box worst case)."""
    return (*self.pgd_steps, *self.apgd_steps, self.restarts)

  def at_eps(self) -> tuple[AttackSpec, ...]:
    """The sweeps' attacks inside the evaluation ball (not the ε sweep, not unbounded)."""
    return (*self.white_box(), self.noise)

  def all(self) -> tuple[AttackSpec, ...]:
    """Every spec, field by field in order."""
    return tuple(s for f in self for s in (f if isinstance(f, tuple) else (f,)))

  def replace_all(self, specs: tuple[AttackSpec, ...]) -> "Sweeps":
    """The same sweeps with ``specs`` (in :meth:`all`'s order) in place of theirs."""
    it = iter(specs)
    return Sweeps(*(tuple(next(it) for _ in f) if isinstance(f, tuple) else next(it) for f in self))


def _pgd(eps: float, num_steps: int, name: str, restarts: int = 1, loss: str = "ce") -> AttackSpec:
  # Madry et al.'s step rule: 2.5·ε/n lets every run cross the ball once.
  return AttackSpec("pgd", eps=eps, steps=num_steps, step_size=2.5 * eps / num_steps, restarts=restarts,
                    loss=loss, random_start=True, name=name)


def sweep_specs(cfg: ml_collections.ConfigDict, apgd_ce: AttackSpec) -> Sweeps:
  """The sweeps of ``cfg`` (an eval config), without keys.

  APGD-CE at the strong protocol's own step count is ``apgd_ce`` itself
  (the same settings), so it is not run twice.
  """
  apgd = tuple(dataclasses.replace(apgd_ce, name=f"apgd{n}@eps") if n == apgd_ce.steps else
               AttackSpec("apgd", eps=cfg.eps, steps=n, loss="ce", name=f"apgd{n}@eps")
               for n in cfg.sweep_apgd_steps)
  n0, r = cfg.sweep_steps[0], cfg.sweep_restarts
  return Sweeps(
      pgd_steps=tuple(_pgd(cfg.eps, n, f"pgd{n}@eps") for n in cfg.sweep_steps),
      apgd_steps=apgd,
      restarts=_pgd(cfg.eps, n0, f"pgd{n0}x{r}@eps", restarts=r),
      eps=tuple(_pgd(e, cfg.eps_sweep_steps, f"pgd{cfg.eps_sweep_steps}@{e:.4g}") for e in cfg.eps_grid),
      unbounded=_pgd(1.0, cfg.unbounded_steps, "unbounded", loss="margin"),
      noise=AttackSpec("noise", eps=cfg.eps, steps=cfg.noise_samples, name="noise"))


class CheckInputs(NamedTuple):
  """Per-example results (``(n,)`` bool, still correct) the checks read.

  ``transfer`` maps each other model to the strong protocol's own transfer
  attack (APGD-CE crafted on that model; check 4b), its entry of
  :attr:`~crp_jax.runner.evaluators.batches.Measurements.transfer`.
  """
  sweeps: Sweeps
  correct: dict[AttackSpec, np.ndarray]
  fgsm: np.ndarray
  apgd_ce: np.ndarray
  apgd_t: np.ndarray
  square: np.ndarray
  gradients: np.ndarray
  transfer: dict[str, np.ndarray]

  def of(self, spec: AttackSpec) -> np.ndarray:
    return self.correct[spec]

  def white_box(self) -> np.ndarray:
    return np.logical_and.reduce([self.of(s) for s in self.sweeps.white_box()] + [self.apgd_ce, self.apgd_t])


def _acc(correct: np.ndarray) -> float:
  return float(np.mean(correct))


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def _monotone(name: str, labels: list[str], accs: list[float], tol: float) -> Check:
  rises = [f"{a}→{b}" for a, b, x, y in zip(labels, labels[1:], accs, accs[1:]) if y > x + tol]
  detail = ", ".join(f"{l}: {_pct(a)}" for l, a in zip(labels, accs))
  return Check(name, not rises, detail + (f"; rises at {', '.join(rises)}" if rises else ""))


def check_steps(c: CheckInputs, tol: float) -> list[Check]:
  """Check 1: more steps or restarts never help the model."""
  sw = c.sweeps
  out = [_monotone("1a PGD accuracy vs steps", [f"{s.steps}" for s in sw.pgd_steps],
                   [_acc(c.of(s)) for s in sw.pgd_steps], tol)]
  if sw.apgd_steps:
    out.append(_monotone("1b APGD-CE accuracy vs steps", [f"{s.steps}" for s in sw.apgd_steps],
                         [_acc(c.of(s)) for s in sw.apgd_steps], tol))
  first = sw.pgd_steps[0]
  out.append(_monotone(f"1c PGD-{first.steps} accuracy vs restarts", ["1", f"{sw.restarts.restarts}"],
                       [_acc(c.of(first)), _acc(c.of(sw.restarts))], tol))
  return out


def check_eps(c: CheckInputs, tol: float, num_classes: int) -> list[Check]:
  """Check 2: accuracy falls in ε, to chance at the largest ε and to 0 unbounded."""
  sw = c.sweeps
  accs = [_acc(c.of(s)) for s in sw.eps]
  mono = _monotone(f"2a PGD-{sw.eps[0].steps} accuracy vs ε", [f"{s.eps:.4g}" for s in sw.eps], accs, tol)
  chance = Check("2b chance at the largest ε", accs[-1] <= 1 / num_classes + tol,
                 f"ε={sw.eps[-1].eps:.4g}: {_pct(accs[-1])} (chance {_pct(1 / num_classes)})")
  unb = _acc(c.of(sw.unbounded))
  return [mono, chance, Check("2c unbounded attack (ε=1) reaches 0%", unb == 0.0,
                              f"{_pct(unb)} after PGD-{sw.unbounded.steps}")]


def _beats(name: str, weak: np.ndarray, strong: np.ndarray, weak_name: str, strong_name: str,
           tol: float) -> Check:
  """``weak`` must not break more than ``strong``: FLAG if its accuracy is lower."""
  extra = int(np.sum(~weak & strong))
  ok = _acc(weak) >= _acc(strong) - tol
  return Check(name, ok, f"{weak_name} {_pct(_acc(weak))} vs {strong_name} {_pct(_acc(strong))}; "
                         f"{extra} example(s) broken by {weak_name} but not by {strong_name}")


def masking_checks(c: CheckInputs, cfg: ml_collections.ConfigDict, num_classes: int) -> list[Check]:
  """Checks 1 to 6; ``cfg`` (an eval config) gives the tolerances (check 7 needs the last-iterate run:
  :func:`check_silent_success`)."""
  tol = max(1 / len(c.gradients), cfg.masking_tolerance)
  white = c.white_box()
  strongest = max(c.sweeps.pgd_steps, key=lambda s: s.steps)
  checks = check_steps(c, tol) + check_eps(c, tol, num_classes)
  checks.append(_beats("3 FGSM never beats PGD", c.fgsm, c.of(strongest), "FGSM", f"PGD-{strongest.steps}",
                       tol))
  checks.append(_beats("4a Square never beats white-box", c.square, white, "Square", "white-box", tol))
  for source, t in c.transfer.items():
    checks.append(_beats(f"4b transfer from {source} never beats white-box", t, white,
                         f"transfer({source})", "white-box", tol))
  noise = c.of(c.sweeps.noise)
  checks.append(Check("5 random noise is weaker than white-box", _acc(noise) >= _acc(white) - tol,
                      f"noise ({c.sweeps.noise.steps} samples) {_pct(_acc(noise))} vs white-box "
                      f"{_pct(_acc(white))}"))
  return checks + gradient_checks(c.gradients, cfg.zero_grad_threshold)


def check_silent_success(last: np.ndarray, best: np.ndarray, steps: int) -> Check:
  """Check 7 (an indicator of attack failure, Pintor et al. 2022): the same PGD-n run (same start) returning
  its last iterate never misses an example one of its iterates broke; ``(n,)`` bool, still correct."""
  silent = np.flatnonzero(np.asarray(last, bool) & ~np.asarray(best, bool))
  shown = ", ".join(str(i) for i in silent[:10]) + (" ..." if silent.size > 10 else "")
  return Check("7 no silent success (PGD's last iterate)", silent.size == 0,
               f"{silent.size} example(s) misclassified at an iterate of PGD-{steps} but correct at its last"
               + (f" (examples {shown} of the attacked subset)" if silent.size else ""))


#: Below this L1 norm a cross-entropy input gradient counts as saturated (reported, not flagged).
SATURATED_GRADIENT = 1e-8


def gradient_checks(grads: np.ndarray, threshold: float) -> list[Check]:
  """Check 6: no vanishing input gradients; outputs are logits, not probabilities.

  6a flags more than 1% of examples whose CE input gradient has L1 norm at
  most ``threshold`` (default 0: exactly zero, as from a clipped
  probability, a quantised input or underflow). FGSM, PGD and APGD step
  along the gradient's sign, so only a zero gradient stops them; a
  confident model's CE gradient can be tiny (below
  :data:`SATURATED_GRADIENT`) and still point the right way. That share is
  printed beside the verdict: a PGD-AT LeNet robust at 94% under every
  attack has 5–8% of such examples, and the attacks lose nothing there.
  """
  zero = float(np.mean(grads[:, 0] <= threshold))
  tiny = float(np.mean(grads[:, 0] <= SATURATED_GRADIENT))
  probs = bool(np.all(grads[:, 2] >= 0) and np.allclose(grads[:, 1], 1.0, atol=1e-3))
  bound = "= 0" if threshold == 0 else f"≤ {threshold:g}"
  return [Check("6a input gradients are not zero", zero <= 0.01,
                f"{_pct(zero)} of examples have ‖∇ₓ loss‖₁ {bound} ({_pct(tiny)} have a saturated "
                f"‖∇ₓ loss‖₁ ≤ {SATURATED_GRADIENT:g}, which sign-based attacks still follow)"),
          Check("6b the model outputs logits, not probabilities", not probs,
                "rows sum to 1 and are non-negative" if probs else
                f"row sums range {grads[:, 1].min():.3g}..{grads[:, 1].max():.3g}")]
