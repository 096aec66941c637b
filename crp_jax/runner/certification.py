"""Certified accuracy of saved models by randomized smoothing (:mod:`crp_jax.certify`), for ``experiments.certify``.

The noise counts run through :func:`crp_jax.runner.evaluate.map_batches`
(rows sharded on the mesh, one compile, padded last batch); each test
example's noise is keyed by its id, so it does not depend on how the test
split is cut. Every model gets the same noise (common random numbers), so
differences between models are not noise draws.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from crp_jax import certify, data
from crp_jax.data import Split, to_float
from crp_jax.runner import aggregate, atomic, distributed, evaluate, pipeline, train

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


@dataclasses.dataclass(frozen=True)
class CertifySpec:
  """One certification: σ, CERTIFY's n0, n, α, samples per row per step, examples, radii, noise seed.

  ``num_examples`` test examples (0: all) are the fixed subset of
  :func:`crp_jax.runner.evaluate.subset_indices`; ``rows`` is the examples
  per call (0: one per device).
  """
  sigma: float
  n0: int = 100
  n: int = 100_000
  alpha: float = 0.001
  batch_size: int = 1000
  num_examples: int = 500
  rows: int = 0
  radii: tuple[float, ...] = DEFAULT_RADII
  seed: int = 0

  def check(self) -> None:
    """Raises ``ValueError`` in one line on a spec :func:`crp_jax.certify.certify` would refuse."""
    certify.check_arguments(sigma=self.sigma, alpha=self.alpha, batch_size=self.batch_size, n0=self.n0, n=self.n)
    if self.num_examples < 0 or self.rows < 0:
      raise ValueError(f"num_examples={self.num_examples}, rows={self.rows}: must be >= 0")
    if not self.radii or any(r < 0 for r in self.radii):
      raise ValueError(f"radii={self.radii}: give radii >= 0")


def _counts(module: Any, key: jax.Array, sigma: float, num: int, batch_size: int) -> Callable:
  """``(variables, images_uint8, ids, key) -> (rows, classes)`` noise counts (``key`` unused: ids key the noise)."""
  def fn(variables, images, ids, unused_key):
    del unused_key
    logits_fn = lambda z: module.apply(variables, z, train=False)
    return certify.sample_counts(logits_fn, to_float(images), key=key, sigma=sigma, num=num,
                                 batch_size=batch_size, ids=ids)
  return fn


def certify_model(model: pipeline.Trained, test: Split, spec: CertifySpec, *, mesh: jax.sharding.Mesh,
                  progress: bool = True, name: str = "") -> tuple[certify.Certificate, np.ndarray]:
  """CERTIFY on ``spec``'s subset of ``test``: the :class:`~crp_jax.certify.Certificate` and the labels."""
  subset = evaluate.take(test, evaluate.subset_indices(test.num_examples, spec.num_examples))
  rows = spec.rows or mesh.devices.size
  if rows % mesh.devices.size:
    rows += mesh.devices.size - rows % mesh.devices.size
  key = jax.random.key(spec.seed)

  def noise_counts(draw: int, num: int, what: str) -> np.ndarray:
    fn = _counts(model.model, jax.random.fold_in(key, draw), spec.sigma, num, min(spec.batch_size, num))
    return evaluate.map_batches(fn, model.variables, subset.images, subset.ids, key, batch_size=rows, mesh=mesh,
                                desc=f"{what} {name}", progress=progress)

  counts0, counts = noise_counts(0, spec.n0, "select"), noise_counts(1, spec.n, "certify")
  return certify.certificate_from_counts(counts0, counts, sigma=spec.sigma, alpha=spec.alpha), subset.labels


def summary(cert: certify.Certificate, labels: np.ndarray, spec: CertifySpec, seconds: float) -> dict[str, Any]:
  """Certified accuracy at each radius, abstention rate, smoothed accuracy, mean certified radius, speed."""
  correct = cert.prediction == labels
  samples = len(labels) * (spec.n0 + spec.n)
  return {"certified_accuracy": dict(zip(map(str, spec.radii), certify.certified_accuracy(cert, labels, spec.radii))),
          "abstain_rate": float(np.mean(cert.prediction == certify.ABSTAIN)),
          "smoothed_accuracy": float(np.mean(correct)),
          "mean_radius_correct": float(np.sum(np.where(correct, cert.radius, 0.0)) / max(1, correct.sum())),
          "num_examples": int(len(labels)), "seconds": seconds, "noisy_forwards_per_second": samples / seconds,
          "radius": cert.radius.tolist(), "prediction": cert.prediction.tolist(), "label": labels.tolist()}


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
  series = tuple(aggregate.Series(name, spec.radii, tuple(aggregate.stat([v]) for v in r["certified_accuracy"].values()))
                 for name, r in results.items())
  return aggregate.figure_png([aggregate.Panel(f"σ = {spec.sigma:g}", "L2 radius", series)],
                              "Certified accuracy (randomized smoothing)")


def run(workdirs: list[str], spec: CertifySpec, *, command: str = "", progress: bool = True) -> str:
  """Certifies every model under ``workdirs``; writes ``certify-sigma<σ>.json|md|png`` into the first."""
  spec.check()
  distributed.agree("models and certification settings", [workdirs, dataclasses.asdict(spec)])
  dirs = pipeline.named_model_dirs(workdirs)
  models = {name: pipeline.load_trained(d) for name, d in dirs.items()}
  first = next(iter(models.values())).config
  test = data.load_split(first.dataset, "test", data_dir=first.tfds_data_dir or None)
  mesh = train.make_mesh()
  results = {}
  for name, model in models.items():
    start = time.perf_counter()
    cert, labels = certify_model(model, test, spec, mesh=mesh, progress=progress, name=name)
    results[name] = {**summary(cert, labels, spec, time.perf_counter() - start), "workdir": dirs[name],
                     "method": model.config.method, "distribution": model.config.distribution,
                     "perturbation_eps": model.config.perturbation_eps}
  stem = os.path.join(workdirs[0], f"certify-sigma{spec.sigma:g}")
  text = markdown(results, spec, command)
  atomic.write_json(stem + ".json", {"spec": dataclasses.asdict(spec), "command": command,
                                     "versions": pipeline.versions(), "device_count": jax.device_count(),
                                     "device_kind": jax.devices()[0].device_kind, "models": results})
  atomic.atomic_write_text(stem + ".md", text)
  atomic.atomic_write_bytes(stem + ".png", figure(results, spec))
  distributed.sync("crp_jax-certify-written")
  return text
