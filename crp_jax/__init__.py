"""crp_jax: Constant Random Perturbations in JAX.

The public API: the stateless perturbation set, the ball loss, compiled
attacks and the paper's models. Names load on first use (PEP 562), so
``import crp_jax.runner.process``, which the entry points run before they
re-execute themselves with tuned settings, does not import JAX twice.
"""

from __future__ import annotations

import importlib
from typing import Any

from crp_jax import cpu as _cpu

#: What ``import crp_jax`` did to ``XLA_FLAGS`` and malloc (:class:`crp_jax.cpu.CpuSettings`).
cpu_settings = _cpu.on_import()
configure_cpu = _cpu.configure_cpu

#: public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "attacks": ("crp_jax.attacks", None),
    "certify": ("crp_jax.certify", None),
    "models": ("crp_jax.models", None),
    "perturbations": ("crp_jax.perturbations", None),
    "ball_loss": ("crp_jax.losses", "ball_loss"),
    "pair_loss": ("crp_jax.losses", "pair_loss"),
    "get_model": ("crp_jax.models", "get_model"),
    "make_delta": ("crp_jax.perturbations", "make_delta"),
    "perturb": ("crp_jax.perturbations", "perturb"),
}

__all__ = sorted([*_EXPORTS, "configure_cpu", "cpu_settings"])
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
