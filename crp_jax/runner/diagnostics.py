"""The strong protocol and the gradient-masking report.

Models trained on random noise often *look* robust to FGSM and PGD while
their gradients are merely masked (Athalye et al. 2018; Carlini et al.
2019). This module runs attacks that do not trust the gradient's scale
(APGD-CE, APGD-T with the DLR loss; Croce & Hein 2020) or do not use the
gradient at all (Square; Andriushchenko et al. 2020), and six checks that
each print PASS or FLAG with their numbers:

1. accuracy does not rise with more PGD/APGD steps or restarts;
2. accuracy falls monotonically in ε, to chance or below at a large ε,
   and to 0% for an unbounded attack;
3. FGSM never beats PGD;
4. neither Square nor a transfer attack beats the white-box attacks;
5. random noise of the same ε is weaker than the white-box attacks;
6. input gradients are not zero, and the model outputs logits.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from crp_jax import attacks
from crp_jax.attacks._core import per_example as per_row, steps_until_done
from crp_jax.data import Split, to_float
from crp_jax.runner.evaluate import Attack, LogitsFn, evaluate_attacks, per_example


class Check(NamedTuple):
  """One masking check: its verdict and the numbers behind it."""
  name: str
  passed: bool
  detail: str

  def line(self) -> str:
    return f"{'PASS' if self.passed else 'FLAG'}  {self.name}: {self.detail}"


def strong_attacks(cfg: ml_collections.ConfigDict) -> dict[str, Attack]:
  """APGD-CE, APGD-T (DLR, top ``num_targets`` classes) and Square at ε, L∞."""
  return {
      "apgd-ce": lambda f, x, y, k: attacks.apgd(f, x, y, key=k, eps=cfg.eps, num_steps=cfg.apgd_steps,
                                                 loss="ce"),
      "apgd-t": lambda f, x, y, k: attacks.apgd_targeted(f, x, y, key=k, eps=cfg.eps,
                                                         num_steps=cfg.apgd_steps,
                                                         num_targets=cfg.num_targets),
      "square": lambda f, x, y, k: attacks.square(f, x, y, key=k, eps=cfg.eps,
                                                  num_queries=cfg.square_queries),
  }


def _pgd(eps: float, num_steps: int, restarts: int = 1, loss: str = "ce") -> Attack:
  # Madry et al.'s step rule: 2.5·ε/n lets every run cross the ball once.
  step = 2.5 * eps / num_steps
  return lambda f, x, y, k: attacks.pgd(f, x, y, key=k, eps=eps, step_size=step, num_steps=num_steps,
                                        restarts=restarts, random_start=True, loss=loss)


def sweep_attacks(cfg: ml_collections.ConfigDict) -> dict[str, Attack]:
  """Attacks of checks 1, 2 and 5: step, restart and ε sweeps, unbounded PGD, noise."""
  out: dict[str, Attack] = {f"pgd{n}@eps": _pgd(cfg.eps, n) for n in cfg.sweep_steps}
  # APGD-CE at cfg.apgd_steps is the strong protocol's own run: reused, not rerun.
  out.update({f"apgd{n}@eps": functools.partial(_apgd, eps=cfg.eps, num_steps=n)
              for n in cfg.sweep_apgd_steps if n != cfg.apgd_steps})
  n0 = cfg.sweep_steps[0]
  out[f"pgd{n0}x{cfg.sweep_restarts}@eps"] = _pgd(cfg.eps, n0, cfg.sweep_restarts)
  out.update({f"pgd{cfg.eps_sweep_steps}@{e:.4g}": _pgd(e, cfg.eps_sweep_steps) for e in cfg.eps_grid})
  out["unbounded"] = _pgd(1.0, cfg.unbounded_steps, loss="margin")
  out["noise"] = functools.partial(random_noise, eps=cfg.eps, num_samples=cfg.noise_samples)
  return out


def _apgd(f: LogitsFn, x: jax.Array, y: jax.Array, k: jax.Array, *, eps: float, num_steps: int):
  return attacks.apgd(f, x, y, key=k, eps=eps, num_steps=num_steps, loss="ce")


def random_noise(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *, eps: float,
                 num_samples: int) -> jax.Array:
  """The first of ``num_samples`` random sign perturbations ``x ± ε`` that fools the model.

  A corner of the ε cube is the strongest place for random L∞ noise. If
  none fools the model, returns ``x``. Shapes: ``(B, ...) -> (B, ...)``.
  """

  def body(i, carry):
    x_adv, fooled = carry
    noise = eps * jnp.sign(jax.random.uniform(jax.random.fold_in(key, i), x.shape, minval=-1.0))
    cand = jnp.clip(x + noise, 0.0, 1.0)
    hit = jnp.argmax(logits_fn(cand), -1) != y
    return jnp.where(per_row(hit & ~fooled, x), cand, x_adv), fooled | hit

  # A fooled row never changes again, so the loop may stop once all are.
  fooled = jnp.argmax(logits_fn(x), -1) != y
  return steps_until_done(num_samples, body, (x, fooled), lambda carry: carry[1])[0]


def gradient_stats(model: nn.Module) -> Callable:
  """``(variables, images, labels, key) -> (batch, 3)``: ‖∇ₓCE‖₁, logits row sum, min logit."""

  def fn(variables, images, labels, key):
    del key
    x = to_float(images)
    logits_fn = lambda z: model.apply(variables, z, train=False)
    loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(logits_fn(z), labels).sum()
    grad = jax.grad(loss)(x)
    logits = logits_fn(x)
    return jnp.stack([jnp.abs(grad).reshape(len(x), -1).sum(-1), logits.sum(-1), logits.min(-1)], -1)

  return fn


def _acc(correct: np.ndarray) -> float:
  return float(np.mean(correct))


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def _monotone(name: str, labels: list[str], accs: list[float], tol: float) -> Check:
  rises = [f"{a}→{b}" for a, b, x, y in zip(labels, labels[1:], accs, accs[1:]) if y > x + tol]
  detail = ", ".join(f"{l}: {_pct(a)}" for l, a in zip(labels, accs))
  return Check(name, not rises, detail + (f"; rises at {', '.join(rises)}" if rises else ""))


def check_steps(c: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, tol: float) -> list[Check]:
  """Check 1: more steps or restarts never help the model."""
  out = [_monotone("1a PGD accuracy vs steps", [f"{n}" for n in cfg.sweep_steps],
                   [_acc(c[f"pgd{n}@eps"]) for n in cfg.sweep_steps], tol)]
  if cfg.sweep_apgd_steps:
    out.append(_monotone("1b APGD-CE accuracy vs steps", [f"{n}" for n in cfg.sweep_apgd_steps],
                         [_acc(c[f"apgd{n}@eps"]) for n in cfg.sweep_apgd_steps], tol))
  n0, r = cfg.sweep_steps[0], cfg.sweep_restarts
  out.append(_monotone(f"1c PGD-{n0} accuracy vs restarts", ["1", f"{r}"],
                       [_acc(c[f"pgd{n0}@eps"]), _acc(c[f"pgd{n0}x{r}@eps"])], tol))
  return out


def check_eps(c: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, tol: float,
              num_classes: int) -> list[Check]:
  """Check 2: accuracy falls in ε, to chance at the largest ε and to 0 unbounded."""
  keys = [f"pgd{cfg.eps_sweep_steps}@{e:.4g}" for e in cfg.eps_grid]
  accs = [_acc(c[k]) for k in keys]
  mono = _monotone(f"2a PGD-{cfg.eps_sweep_steps} accuracy vs ε", [f"{e:.4g}" for e in cfg.eps_grid],
                   accs, tol)
  chance = Check("2b chance at the largest ε", accs[-1] <= 1 / num_classes + tol,
                 f"ε={cfg.eps_grid[-1]:.4g}: {_pct(accs[-1])} (chance {_pct(1 / num_classes)})")
  unb = _acc(c["unbounded"])
  return [mono, chance, Check("2c unbounded attack (ε=1) reaches 0%", unb == 0.0,
                              f"{_pct(unb)} after PGD-{cfg.unbounded_steps}")]


def _beats(name: str, weak: np.ndarray, strong: np.ndarray, weak_name: str, strong_name: str,
           tol: float) -> Check:
  """``weak`` must not break more than ``strong``: FLAG if its accuracy is lower."""
  extra = int(np.sum(~weak & strong))
  ok = _acc(weak) >= _acc(strong) - tol
  return Check(name, ok, f"{weak_name} {_pct(_acc(weak))} vs {strong_name} {_pct(_acc(strong))}; "
                         f"{extra} example(s) broken by {weak_name} but not by {strong_name}")


def masking_checks(c: dict[str, np.ndarray], grads: np.ndarray, cfg: ml_collections.ConfigDict,
                   num_classes: int, transfer: dict[str, np.ndarray] | None = None) -> list[Check]:
  """All six checks from per-example correctness ``c`` (attack -> (N,) bool).

  ``c`` needs the paper's ``fgsm``, the strong attacks and the sweeps;
  ``grads`` is the ``(N, 3)`` output of :func:`gradient_stats`.
  """
  tol = max(1 / len(grads), cfg.masking_tolerance)
  white = np.logical_and.reduce([v for k, v in c.items() if k.startswith(("pgd", "apgd")) and k.endswith("@eps")]
                                + [c["apgd-ce"], c["apgd-t"]])
  strongest_pgd = c[f"pgd{max(cfg.sweep_steps)}@eps"]
  checks = check_steps(c, cfg, tol) + check_eps(c, cfg, tol, num_classes)
  checks.append(_beats("3 FGSM never beats PGD", c["fgsm"], strongest_pgd, "FGSM",
                       f"PGD-{max(cfg.sweep_steps)}", tol))
  checks.append(_beats("4a Square never beats white-box", c["square"], white, "Square", "white-box", tol))
  for source, t in (transfer or {}).items():
    checks.append(_beats(f"4b transfer from {source} never beats white-box", t, white,
                         f"transfer({source})", "white-box", tol))
  noise = c["noise"]
  checks.append(Check("5 random noise is weaker than white-box", _acc(noise) >= _acc(white) - tol,
                      f"noise ({cfg.noise_samples} samples) {_pct(_acc(noise))} vs white-box "
                      f"{_pct(_acc(white))}"))
  return checks + gradient_checks(grads, cfg.zero_grad_threshold)


def gradient_checks(grads: np.ndarray, threshold: float) -> list[Check]:
  """Check 6: no vanishing input gradients; outputs are logits, not probabilities."""
  zero = float(np.mean(grads[:, 0] <= threshold))
  probs = bool(np.all(grads[:, 2] >= 0) and np.allclose(grads[:, 1], 1.0, atol=1e-3))
  return [Check("6a input gradients are not zero", zero <= 0.01,
                f"{_pct(zero)} of examples have ‖∇ₓ loss‖₁ ≤ {threshold:g}"),
          Check("6b the model outputs logits, not probabilities", not probs,
                "rows sum to 1 and are non-negative" if probs else
                f"row sums range {grads[:, 1].min():.3g}..{grads[:, 1].max():.3g}")]


def diagnose(model: nn.Module, variables: Any, subset: Split, cfg: ml_collections.ConfigDict,
             key: jax.Array, *, mesh: Mesh, progress: bool = True) -> dict[str, np.ndarray]:
  """Per-example results of the strong protocol and the sweeps on ``subset``.

  Returns attack name -> ``(N,)`` bool "still correct", plus ``"gradients"``:
  the ``(N, 3)`` output of :func:`gradient_stats`.
  """
  named = {**strong_attacks(cfg), **sweep_attacks(cfg)}
  c = evaluate_attacks(model, variables, subset, named, jax.random.fold_in(key, 7),
                       batch_size=cfg.batch_size, mesh=mesh, progress=progress)
  if cfg.apgd_steps in cfg.sweep_apgd_steps:
    c[f"apgd{cfg.apgd_steps}@eps"] = c["apgd-ce"]
  c["gradients"] = per_example(gradient_stats(model), variables, subset.images, subset.labels, key,
                               batch_size=cfg.batch_size, mesh=mesh, desc="gradients",
                               progress=progress)
  return c


def _at_eps(name: str) -> bool:
  """Whether attack ``name`` works inside the evaluation ball (not a sweep to other ε)."""
  return name not in ("gradients", "unbounded") and ("@" not in name or name.endswith("@eps"))


def summarize(c: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, num_classes: int,
              transfer: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
  """Accuracies, the strong worst case (APGD-CE ∧ APGD-T ∧ Square) and the checks.

  ``c`` holds the output of :func:`diagnose` plus the paper protocol's
  ``fgsm``; ``transfer`` maps a source model to per-example correctness
  under its transferred examples.
  """
  worst = c["apgd-ce"] & c["apgd-t"] & c["square"]
  every = np.logical_and.reduce([v for k, v in c.items() if _at_eps(k)] + list((transfer or {}).values()))
  checks = masking_checks(c, c["gradients"], cfg, num_classes, transfer)
  return {"accuracy": {k: _acc(v) for k, v in c.items() if k != "gradients"},
          "worst_case": _acc(worst), "all_attacks": _acc(every),
          "checks": [{"name": ch.name, "passed": ch.passed, "detail": ch.detail} for ch in checks],
          "num_flags": sum(not ch.passed for ch in checks)}
