"""Certified L2 accuracy by randomized smoothing (:mod:`crp_jax.certify`), as an entry of the evaluation plan.

On with ``eval.certify.sigma > 0`` (off in every preset: CERTIFY with the
paper's n = 100,000 costs ``num_examples · (n0 + n)`` forward passes).
:class:`CertifySpec`, :func:`certify_model` and :func:`summary` are also
what ``python -m experiments.certify`` runs
(:mod:`crp_jax.runner.certification`), so the plan's section equals that
command's numbers for the same model and settings: the noise is keyed by
``(spec.seed, example id, sample)`` alone, not by the run's eval key, and
every model of a comparison gets the same noise.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from crp_jax import certify
from crp_jax.data import Split, to_float
from crp_jax.runner.evaluators import batches
from crp_jax.runner.evaluators.base import Model
from crp_jax.runner.evaluators.batches import Measurements

DEFAULT_RADII = certify.DEFAULT_RADII


@dataclasses.dataclass(frozen=True)
class CertifySpec:
  """One certification: σ, CERTIFY's n0, n, α, samples per row per step, examples, radii, noise seed.

  ``num_examples`` test examples (0: all) are the fixed subset of
  :func:`crp_jax.runner.batches.subset_indices`; ``rows`` is the examples
  per call (0: one per device).
  """
  sigma: float
  n0: int = certify.DEFAULT_N0
  n: int = certify.DEFAULT_N
  alpha: float = certify.DEFAULT_ALPHA
  batch_size: int = certify.DEFAULT_BATCH_SIZE
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

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> CertifySpec:
    """The spec of ``eval.certify`` (every field of this class but ``rows``)."""
    return cls(sigma=float(cfg.sigma), n0=int(cfg.n0), n=int(cfg.n), alpha=float(cfg.alpha),
               batch_size=int(cfg.batch_size), num_examples=int(cfg.num_examples),
               radii=tuple(float(r) for r in cfg.radii), seed=int(cfg.seed))


def _counts(module: nn.Module, key: jax.Array, sigma: float, num: int, batch_size: int) -> Callable:
  """``(variables, images_uint8, ids, key) -> (rows, classes)`` noise counts (``key`` unused: ids key the noise)."""
  def fn(variables, images, ids, unused_key):
    del unused_key
    logits_fn = lambda z: module.apply(variables, z, train=False)
    return certify.sample_counts(logits_fn, to_float(images), key=key, sigma=sigma, num=num,
                                 batch_size=batch_size, ids=ids)
  return fn


def certify_model(module: nn.Module, variables: Any, test: Split, spec: CertifySpec, *, mesh: jax.sharding.Mesh,
                  progress: bool = True, name: str = "") -> tuple[certify.Certificate, np.ndarray]:
  """CERTIFY on ``spec``'s subset of ``test``: the :class:`~crp_jax.certify.Certificate` and the labels.

  The counts run through :func:`~crp_jax.runner.batches.map_batches`
  (rows sharded on the mesh, one compile, padded last batch): n0 samples
  keyed ``fold_in(key(seed), 0)`` select the class, n fresh ones keyed
  ``fold_in(key(seed), 1)`` bound its probability.
  """
  subset = batches.take(test, batches.subset_indices(test.num_examples, spec.num_examples))
  rows = spec.rows or mesh.devices.size
  if rows % mesh.devices.size:
    rows += mesh.devices.size - rows % mesh.devices.size
  key = jax.random.key(spec.seed)

  def noise_counts(draw: int, num: int, what: str) -> np.ndarray:
    fn = _counts(module, jax.random.fold_in(key, draw), spec.sigma, num, min(spec.batch_size, num))
    return batches.map_batches(fn, variables, subset.images, subset.ids, key, batch_size=rows, mesh=mesh,
                                desc=f"{what} {name}".strip(), progress=progress)

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


class Certification:
  """``eval.certify``: CERTIFY (Cohen et al. 2019) on a fixed subset of the test split; the section holds
  the certified accuracy at each L2 radius, the abstention rate and the largest certifiable radius."""

  name = "certify"
  needs_gradients = False
  specs: tuple = ()
  chain: tuple = ()
  transfer_specs: tuple = ()

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.spec = CertifySpec.from_config(cfg.certify)

  def measure(self, model: Model, test: Split, *, mesh: jax.sharding.Mesh, progress: bool = True) -> dict[str, Any]:
    """Runs CERTIFY; its :func:`summary` is this evaluator's measurement."""
    start = time.perf_counter()
    cert, labels = certify_model(model.module, model.variables, test, self.spec, mesh=mesh, progress=progress)
    return summary(cert, labels, self.spec, time.perf_counter() - start)

  def summarize(self, m: Measurements, num_classes: int) -> dict[str, Any]:
    del num_classes
    return {**m.extra[self.name], "spec": dataclasses.asdict(self.spec),
            "max_radius": certify.max_radius(self.spec.sigma, self.spec.n, self.spec.alpha)}
