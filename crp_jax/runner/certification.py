"""Certified accuracy of saved models by randomized smoothing (:mod:`crp_jax.certify`), for ``experiments.certify``.

The measurement is the evaluation plan's (:mod:`crp_jax.runner.evaluators.certified`):
the noise counts run through :func:`crp_jax.runner.evaluators.batches.map_batches`
(rows sharded on the mesh, one compile, padded last batch); each test
example's noise is keyed by its id, so it does not depend on how the test
split is cut. Every model gets the same noise (common random numbers), so
differences between models are not noise draws. This module adds the
table, JSON and plot of several saved models.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from crp_jax import certify
from crp_jax.runner import atomic, distributed, figures, meshes, pipeline, provenance
from crp_jax.runner.evaluators.certified import DEFAULT_RADII, CertifySpec, certify_model, summary

__all__ = ["DEFAULT_RADII", "CertifySpec", "certify_model", "summary", "markdown", "figure", "run"]


def markdown(results: dict[str, dict[str, Any]], spec: CertifySpec, command: str) -> str:
  """The certified-accuracy table: one row per model, one column per radius."""
  head = " | ".join(f"r = {r:g}" for r in spec.radii)
  lines = [f"# Certified accuracy (randomized smoothing, σ = {spec.sigma:g})", "", f"Command: `{command}`", "",
           f"CERTIFY (Cohen et al. 2019) with n0 = {spec.n0}, n = {spec.n:,}, α = {spec.alpha:g}, on "
           f"{next(iter(results.values()))['num_examples']} test examples; L2 radii in input units ([0, 1] "
           f"pixels). With n = {spec.n:,} no radius above {certify.max_radius(spec.sigma, spec.n, spec.alpha):.3f} "
           "can be certified (σ·Φ⁻¹(α^(1/n))). Each certified example holds with probability ≥ 1 − α.", "",
           f"| model | {head} | abstain | noisy forwards/s |", "|---|" + "---:|" * (len(spec.radii) + 2)]
  for name, r in results.items():
    cells = " | ".join(f"{100 * v:.1f}" for v in r["certified_accuracy"].values())
    lines.append(f"| {name} | {cells} | {100 * r['abstain_rate']:.1f} | {r['noisy_forwards_per_second']:,.0f} |")
  return "\n".join(lines) + "\n"


def figure(results: dict[str, dict[str, Any]], spec: CertifySpec) -> bytes:
  """PNG: certified accuracy vs L2 radius, one curve per model."""
  series = tuple(figures.Series(name, spec.radii, tuple(r["certified_accuracy"].values()), (0.0,) * len(spec.radii))
                 for name, r in results.items())
  return figures.figure_png([figures.Panel(f"σ = {spec.sigma:g}", "L2 radius", series)],
                            "Certified accuracy (randomized smoothing)")


def run(workdirs: list[str], spec: CertifySpec, *, command: str = "", progress: bool = True) -> str:
  """Certifies every model under ``workdirs``; writes ``certify-sigma<σ>.json|md|png`` into the first."""
  spec.check()
  distributed.agree("models and certification settings", [workdirs, dataclasses.asdict(spec)])
  dirs, models, test = pipeline.load_saved(workdirs)
  mesh = meshes.make_mesh()
  results = {}
  for name, model in models.items():
    start = time.perf_counter()
    cert, labels = certify_model(model.model, model.variables, test, spec, mesh=mesh, progress=progress, name=name)
    results[name] = {**summary(cert, labels, spec, time.perf_counter() - start), "workdir": dirs[name],
                     "method": model.config.method, "distribution": model.config.distribution,
                     "perturbation_eps": model.config.perturbation_eps}
  stem = os.path.join(workdirs[0], f"certify-sigma{spec.sigma:g}")
  text = markdown(results, spec, command)
  atomic.write_json(stem + ".json", {"spec": dataclasses.asdict(spec), **provenance.stamp(command),
                                     "models": results})
  atomic.atomic_write_text(stem + ".md", text)
  atomic.atomic_write_bytes(stem + ".png", figure(results, spec))
  distributed.sync("crp_jax-certify-written")
  return text
