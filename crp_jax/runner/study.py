"""Studies: one per paper table or figure, each a list of ordinary pipeline runs plus an aggregation.

A :class:`Study` turns a base config (a dataset at a preset) into
:class:`Run` s, one config per (group, seed), and aggregates what they
measured into tables and figures (:mod:`crp_jax.runner.studies` holds the
registry). :func:`execute` runs each distinct run once through
:func:`crp_jax.runner.pipeline.run`, in ``<root>/<run name>``:

* the run name is read from the config (method, distribution, K, ε, seed)
  and ends in :func:`~crp_jax.runner.checkpoint.training_fingerprint`, so
  runs that differ in any training field never share a folder, and equal
  ones always do, whichever study asked for them (Table 1's uniform runs
  are Table 4's K = 10 and Table 7's G);
* a run whose ``results.json`` holds exactly its config is reused; one that
  stopped half-way resumes from its checkpoint; one whose evaluation
  fields changed keeps its weights and is evaluated again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections

from crp_jax import data
from crp_jax.runner import aggregate, atomic, checkpoint, config as config_lib, evaluate, evaluators, pipeline, train


class Run(NamedTuple):
  """One training run of a study: the group (a row or column of the table) and seed it stands for."""
  group: str
  seed: int
  config: ml_collections.ConfigDict


class Done(NamedTuple):
  """A finished run: its folder, its ``results.json`` record, and whether this call trained it."""
  run: Run
  workdir: str
  results: dict[str, Any]
  seconds: float
  reused: bool


class Outcome(NamedTuple):
  """What a study's aggregation produced: tables, PNG figures (file name -> bytes), per-seed extras, notes."""
  tables: tuple[aggregate.Table, ...]
  figures: dict[str, bytes]
  extras: dict[str, Any]
  notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Study:
  """A paper artefact: how to build its runs from a base config, and how to aggregate them.

  Attributes:
    name: the ``--study`` name, e.g. ``table1``.
    title: what it reproduces, for ``--list``.
    dataset: the paper's dataset for it (the default ``--dataset``).
    runs: ``(base config, seeds) -> runs``.
    aggregate: ``Context -> Outcome``.
    waits_for: why it cannot run yet (``""``: it can).
  """
  name: str
  title: str
  dataset: str
  runs: Callable[[ml_collections.ConfigDict, int], list[Run]]
  aggregate: Callable[["Context"], Outcome]
  waits_for: str = ""


def variant(base: ml_collections.ConfigDict, seed: int, **fields: Any) -> ml_collections.ConfigDict:
  """``base`` with ``seed`` and ``fields`` set, one method, no comparison."""
  c = ml_collections.ConfigDict(base.to_dict())
  c.compare_with, c.seed = "", seed
  for k, v in fields.items():
    c[k] = v
  return c


def run_name(config: ml_collections.ConfigDict) -> str:
  """``crp-uniform-K10-eps0.3-seed0-1a2b3c4d``: the settings a reader looks for, then the training fingerprint."""
  c = config
  what = "standard" if c.method == "standard" else (
      f"{c.method}-{c.distribution}-K{c.num_perturbations}-eps{c.perturbation_eps:.4g}"
      + ("" if c.include_clean else "-noclean"))
  return f"{what}-seed{c.seed}-{checkpoint.training_fingerprint(c.to_dict())}"


def finished_results(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The run's ``results.json`` record if it holds exactly ``config`` (evaluation included), else ``None``."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return None
  try:
    saved = atomic.read_json(path)
  except (OSError, ValueError):
    return None
  same = isinstance(saved, dict) and "config" in saved and not checkpoint.config_diff(
      checkpoint.with_new_fields(saved["config"]), config.to_dict())
  return saved if same else None


class Shard(NamedTuple):
  """``--shard=i/n``: this job runs the distinct runs ``k`` of a study with ``k % n == i`` (in study order).

  The subset is a pure function of the study's run list, so ``n`` jobs of
  a cluster's array job (``i = 0 .. n-1``) split the study without talking
  to each other; runs of other shards are reused once they are finished.
  """
  index: int = 0
  count: int = 1

  @classmethod
  def parse(cls, text: str) -> "Shard":
    """``"i/n"`` -> ``Shard(i, n)``; :class:`ConfigError` unless ``0 <= i < n``."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
      raise config_lib.ConfigError(f"--shard={text!r}: expected i/n, e.g. 0/4 for the first of 4 jobs")
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or index >= count:
      raise config_lib.ConfigError(f"--shard={text!r}: need 0 <= i < n")
    return cls(index, count)

  def owns(self, k: int) -> bool:
    return k % self.count == self.index

  def __str__(self) -> str:
    return f"{self.index}/{self.count}"


def _duration(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def execute(study: Study, runs: list[Run], *, root: str, progress: bool = False, command: str = "",
            log: Callable[[str], None] = print, shard: Shard = Shard()) -> list[Done]:
  """Runs (or reuses) the distinct runs of ``runs`` in ``<root>/<run name>``; one progress line per run.

  Only the runs ``shard`` owns are trained; another shard's run is reused
  if it is finished and left out of the result if not (compare with
  ``runs`` to see what is still missing).
  """
  unique = list({run_name(r.config): r for r in runs}.items())
  spent, trained, finished = 0.0, 0, {}
  for i, (name, r) in enumerate(unique):
    workdir = os.path.join(root, name)
    start = time.perf_counter()
    results = finished_results(workdir, r.config)
    reused = results is not None
    if not reused and not shard.owns(i):
      log(f"[{study.name} {i + 1}/{len(unique)}] {r.group}, seed {r.seed}: not finished yet "
          f"(shard {i % shard.count}/{shard.count} runs it)")
      continue
    if not reused:
      pipeline.run(r.config, workdir, progress=progress, allow_config_change=True, command=command)
      results = atomic.read_json(os.path.join(workdir, "results.json"))
      spent, trained = spent + time.perf_counter() - start, trained + 1
    seconds = time.perf_counter() - start
    left = sum(shard.owns(k) for k in range(i + 1, len(unique)))
    eta = f", ETA {_duration(spent / trained * left)}" if trained and left else ""
    what = "reused (already finished)" if reused else f"trained and evaluated in {_duration(seconds)}"
    log(f"[{study.name} {i + 1}/{len(unique)}] {r.group}, seed {r.seed}: {what}; {left} left{eta}")
    finished[name] = Done(r, workdir, results, seconds, reused)
  return [finished[run_name(r.config)]._replace(run=r) for r in runs if run_name(r.config) in finished]


def missing(runs: list[Run], done: list[Done]) -> list[Run]:
  """The distinct runs of ``runs`` that ``done`` lacks (those other shards have not finished)."""
  have = {run_name(d.run.config) for d in done}
  return list({run_name(r.config): r for r in runs if run_name(r.config) not in have}.values())


class Context:
  """What an aggregation reads: the finished runs by group, and their models and test split on demand.

  Measurements beyond the runs' own ``results.json`` (black-box matrices,
  flatness, saturation, sweeps) go through :meth:`cached`, so a study
  aggregated again does not recompute them.
  """

  def __init__(self, study: Study, base: ml_collections.ConfigDict, done: list[Done], *, cache_dir: str,
               progress: bool = False):
    self.study, self.base, self.done, self.cache_dir, self.progress = study, base, done, cache_dir, progress
    self._test: data.Split | None = None
    self._mesh: jax.sharding.Mesh | None = None

  def groups(self) -> dict[str, list[Done]]:
    out: dict[str, list[Done]] = {}
    for d in self.done:
      out.setdefault(d.run.group, []).append(d)
    return out

  @property
  def test(self) -> data.Split:
    if self._test is None:
      self._test = data.load_split(self.base.dataset, "test", data_dir=self.base.tfds_data_dir or None)
    return self._test

  @property
  def mesh(self) -> jax.sharding.Mesh:
    if self._mesh is None:
      self._mesh = train.make_mesh()
    return self._mesh

  def model(self, d: Done) -> evaluators.Model:
    """The trained model of ``d`` in eval mode, with its evaluation config and key."""
    t = pipeline.load_trained(os.path.join(d.workdir, d.run.config.method))
    return evaluators.Model(t.model, t.variables, t.config.eval, train.run_keys(t.config.seed)["eval"])

  def attacked_subset(self, m: evaluators.Model) -> data.Split:
    """The fixed attacked subset of the test split for ``m``'s evaluation config."""
    return evaluate.take(self.test, evaluate.subset_indices(self.test.num_examples, m.cfg.attack_subset))

  def attack(self, m: evaluators.Model, specs: tuple) -> dict:
    """Per-example correctness of ``m`` under each spec on its attacked subset (keys from ``m.key``)."""
    return evaluate.run_specs(m.module, m.variables, self.attacked_subset(m), specs, m.key,
                              batch_size=m.cfg.batch_size, mesh=self.mesh, progress=self.progress)

  def cached(self, what: str, runs: list[Done], settings: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, stored in the cache under ``what``, the runs' folders and ``settings``."""
    ident = json.dumps([what, [d.workdir for d in runs], settings], sort_keys=True, default=str)
    path = os.path.join(self.cache_dir, f"{what}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.json")
    if os.path.isfile(path):
      return atomic.read_json(path)
    value = compute()
    atomic.write_json(path, value)
    return value


def per_seed(done: list[Done]) -> list[dict[str, Any]]:
  """The per-seed numbers of ``study.json``: each run's accuracies, strong worst case, checks, training."""
  out = []
  for d in done:
    e = d.results["evaluation"]
    strong = e.get("strong") or {}
    out.append({"group": d.run.group, "seed": d.run.seed, "workdir": d.workdir, "config": d.results["config"],
                "training": d.results["training"], "clean_accuracy": e["paper"]["clean_accuracy"],
                "paper_protocol": e["paper"]["accuracy"], "labels": e["paper"]["labels"],
                "strong_worst_case": strong.get("worst_case"), "all_attacks": strong.get("all_attacks"),
                "num_flags": strong.get("num_flags"),
                "flags": [c["name"] for c in strong.get("checks", []) if not c["passed"]]})
  return out


def write_outputs(out_dir: str, study: Study, ctx: Context, outcome: Outcome, *, command: str,
                  seconds: float) -> str:
  """``table.md``, ``study.json`` and the figures of a study, each written atomically; returns the markdown."""
  os.makedirs(out_dir, exist_ok=True)
  base = ctx.base
  lines = [f"# {study.title}", "", f"Command: `{command}`", "",
           f"Dataset {base.dataset}, preset as in the command; {len({d.run.seed for d in ctx.done})} seed(s) per "
           f"setting (each seed: a new perturbation set and a new initialisation); mean ± sample std over "
           f"seeds. Wall time {_duration(seconds)} on {jax.device_count()} × {jax.devices()[0].device_kind}.", ""]
  lines += [t.markdown() for t in outcome.tables]
  lines += [f"- {n}" for n in outcome.notes]
  lines += [f"![{name}]({name})" for name in outcome.figures]
  text = "\n".join(lines) + "\n"
  for name, png in outcome.figures.items():
    atomic.atomic_write_bytes(os.path.join(out_dir, name), png)
  atomic.write_json(os.path.join(out_dir, "study.json"), {
      "study": study.name, "title": study.title, "command": command, "wall_seconds": seconds,
      "versions": pipeline.versions(), "device_count": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind, "base_config": base.to_dict(),
      "tables": [t.to_json() for t in outcome.tables], "runs": per_seed(ctx.done), "extras": outcome.extras,
      "notes": list(outcome.notes)})
  atomic.atomic_write_text(os.path.join(out_dir, "table.md"), text)
  return text


def group_key(group: str) -> str:
  """The short name ``--groups`` selects a group by: its label up to any bracket (``U(−0.3, 0.3)`` -> ``U``)."""
  return group.split("(")[0].strip()


def select_groups(runs: list[Run], keys: list[str]) -> list[Run]:
  """The runs of the groups named by ``keys`` (all for none); an unknown key raises :class:`ConfigError`."""
  if not keys:
    return runs
  known = list(dict.fromkeys(group_key(r.group) for r in runs))
  unknown = [k for k in keys if k not in known]
  if unknown:
    raise config_lib.ConfigError(f"--groups={','.join(keys)}: no group {unknown[0]!r}; this study has "
                                 f"{', '.join(known)}")
  return [r for r in runs if group_key(r.group) in keys]


def validate_runs(runs: list[Run]) -> None:
  """Every run's config checked before anything is written (:class:`~crp_jax.runner.config.ConfigError`)."""
  for r in runs:
    config_lib.validate(r.config)
