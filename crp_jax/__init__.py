"""crp_jax: Constant Random Perturbations in JAX.

The public API: the stateless perturbation set, the ball loss, compiled
attacks and the paper's models. Importing changes nothing in the process
(no environment variable, JAX config or print); the CPU settings are
explicit calls (:mod:`crp_jax.cpu`). Names load on first use (PEP 562), so
``import crp_jax.runner.process``, which the entry points run before they
re-execute themselves with tuned settings, does not import JAX twice.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "attacks": ("crp_jax.attacks", None),
    "certify": ("crp_jax.certify", None),
    "cpu": ("crp_jax.cpu", None),
    "models": ("crp_jax.models", None),
    "perturbations": ("crp_jax.perturbations", None),
    "ball_loss": ("crp_jax.losses", "ball_loss"),
    "pair_loss": ("crp_jax.losses", "pair_loss"),
    "get_model": ("crp_jax.models", "get_model"),
    "make_delta": ("crp_jax.perturbations", "make_delta"),
    "perturb": ("crp_jax.perturbations", "perturb"),
    "compile_for_cpu": ("crp_jax.cpu", "compile_for_cpu"),
    "configure_cpu": ("crp_jax.cpu", "configure_cpu"),
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'crp_jax' has no attribute {name!r}")
  module, attr = _EXPORTS[name]
  value = importlib.import_module(module)
  value = value if attr is None else getattr(value, attr)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted([*globals(), *_EXPORTS])
