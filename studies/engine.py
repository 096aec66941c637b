"""The study engine: a study is a list of ordinary pipeline runs plus an aggregation of what they wrote.

A :class:`Study` turns a base config (a dataset at a preset) into
:class:`Run` s, one config per (group, seed); :mod:`studies.registry`
holds every study. :func:`execute` runs each distinct run once through
:func:`crp_jax.runner.pipeline.run`, in ``<root>/<run name>``:

* the run name is read from the config (method, distribution, K, ε, seed)
  and ends in :func:`~crp_jax.runner.checkpoint.training_fingerprint`, so
  runs that differ in any training field never share a folder, and equal
  ones always do, whichever study asked for them (Table 1's uniform runs
  are Table 4's K = 10 and Table 7's G);
* a run whose ``results.json`` holds its config is reused; one that lacks
  only evaluators a study turns on (flatness, saturation, the ε curve) gets
  just those added to its ``results.json``
  (:func:`~crp_jax.runner.pipeline.add_evaluations`); one that stopped
  half-way resumes from its checkpoint; one whose shared evaluation fields
  changed keeps its weights and is evaluated again.

:func:`cross_run` then measures what needs several models at once, the
black-box attacks between the seeds of a setting, into one file per group
beside the runs (:mod:`crp_jax.runner.black_box`). The aggregation
(:class:`Context` and the study's ``aggregate``) only reads those files:
it loads no checkpoint and runs no attack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, NamedTuple

import ml_collections

from crp_jax.runner import atomic, black_box, checkpoint, config as config_lib, evaluators, pipeline, provenance
from studies import cells


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
  tables: tuple[cells.Table, ...]
  figures: dict[str, bytes]
  extras: dict[str, Any]
  notes: tuple[str, ...] = ()


def _no_evals(base: ml_collections.ConfigDict) -> dict[str, Any]:
  del base
  return {}


@dataclasses.dataclass(frozen=True)
class Study:
  """A paper artefact: how to build its runs from a base config, and how to aggregate them.

  Attributes:
    name: the ``--study`` name, e.g. ``table1``.
    title: what it reproduces, for ``--list``.
    dataset: the paper's dataset for it (the default ``--dataset``).
    runs: ``(base config, seeds) -> runs``.
    aggregate: ``Context -> Outcome``; reads the runs' records only.
    evals: ``base config -> {eval field: value}``, the evaluators its table
      needs beyond the base config's (e.g. ``{"saturation": True}``).
    cross_runs: ``runs by group -> [CrossRun]``, the black-box measurements
      between its models (:func:`cross_run`; :func:`within_groups` for §4.1's
      seeds of a setting); none by default.
    waits_for: why it cannot run yet (``""``: it can).
  """
  name: str
  title: str
  dataset: str
  runs: Callable[[ml_collections.ConfigDict, int], list[Run]]
  aggregate: Callable[["Context"], Outcome]
  evals: Callable[[ml_collections.ConfigDict], dict[str, Any]] = _no_evals
  cross_runs: Callable[[dict[str, list[Done]]], list["CrossRun"]] = lambda groups: []
  waits_for: str = ""


def study_runs(study: Study, base: ml_collections.ConfigDict, seeds: int) -> list[Run]:
  """The study's runs, each with the evaluators the study needs turned on in its ``eval``."""
  c = ml_collections.ConfigDict(base.to_dict())
  for field, value in study.evals(base).items():
    c.eval[field] = value
  return study.runs(c, seeds)


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


def finished(workdir: str, config: ml_collections.ConfigDict) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
  """What the run in ``workdir`` still needs for ``config``.

  ``(record, ())``: finished, reuse ``results.json``'s record;
  ``(record, names)``: finished but for the evaluators ``names``;
  ``(None, ())``: train (or resume) and evaluate it with the pipeline.
  """
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return None, ()
  try:
    saved = atomic.read_json(path)
  except (OSError, ValueError):
    return None, ()
  if not isinstance(saved, dict) or "config" not in saved or "evaluation" not in saved:
    return None, ()
  have = checkpoint.with_new_fields(saved["config"])
  want = config.to_dict()
  if checkpoint.config_diff({**have, "eval": {}}, {**want, "eval": {}}):
    return None, ()
  names = evaluators.to_add(have["eval"], config.eval)
  return (None, ()) if names is None else (saved, names)


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


def _duration(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def execute(study: Study, runs: list[Run], *, root: str, progress: bool = False, command: str = "",
            log: Callable[[str], None] = print, shard: Shard = Shard()) -> list[Done]:
  """Runs (or reuses, or completes) the distinct runs of ``runs`` in ``<root>/<run name>``; one line per run.

  Only the runs ``shard`` owns are trained or completed; another shard's
  run is reused if it is finished and left out of the result if not
  (compare with ``runs`` to see what is still missing).
  """
  unique = list({run_name(r.config): r for r in runs}.items())
  spent, trained, done = 0.0, 0, {}
  for i, (name, r) in enumerate(unique):
    workdir = os.path.join(root, name)
    start = time.perf_counter()
    results, to_add = finished(workdir, r.config)
    reused = results is not None and not to_add
    if not reused and not shard.owns(i):
      log(f"[{study.name} {i + 1}/{len(unique)}] {r.group}, seed {r.seed}: not finished yet "
          f"(shard {i % shard.count}/{shard.count} runs it)")
      continue
    if results is None:
      pipeline.run(r.config, workdir, progress=progress, allow_config_change=True, command=command)
      results = atomic.read_json(os.path.join(workdir, "results.json"))
      what = "trained and evaluated"
    elif to_add:
      results = pipeline.add_evaluations(workdir, r.config, to_add, progress=progress, command=command)
      what = f"reused, evaluated with {', '.join(to_add)} added"
    seconds = time.perf_counter() - start
    if not reused:
      spent, trained = spent + seconds, trained + 1
    left = sum(shard.owns(k) for k in range(i + 1, len(unique)))
    eta = f", ETA {_duration(spent / trained * left)}" if trained and left else ""
    status = "reused (already finished)" if reused else f"{what} in {_duration(seconds)}"
    log(f"[{study.name} {i + 1}/{len(unique)}] {r.group}, seed {r.seed}: {status}; {left} left{eta}")
    done[name] = Done(r, workdir, results, seconds, reused)
  return [done[run_name(r.config)]._replace(run=r) for r in runs if run_name(r.config) in done]


def missing(runs: list[Run], done: list[Done]) -> list[Run]:
  """The distinct runs of ``runs`` that ``done`` lacks (those other shards have not finished)."""
  have = {run_name(d.run.config) for d in done}
  return list({run_name(r.config): r for r in runs if run_name(r.config) not in have}.values())


def by_group(done: list[Done]) -> dict[str, list[Done]]:
  """The finished runs of each group, in study order."""
  out: dict[str, list[Done]] = {}
  for d in done:
    out.setdefault(d.run.group, []).append(d)
  return out


class CrossRun(NamedTuple):
  """One black-box measurement between models of a study: its name (the key in :attr:`Context.black_box`),
  the models by name, and the sources examples are crafted on (``None``: every model)."""
  name: str
  models: dict[str, Done]
  sources: tuple[str, ...] | None = None


def within_groups(groups: dict[str, list[Done]]) -> list[CrossRun]:
  """§4.1: in each group of two or more runs, every model attacked from every other; models ``seed<s>``."""
  return [CrossRun(g, {f"seed{d.run.seed}": d for d in done}) for g, done in groups.items() if len(done) > 1]


def black_box_path(root: str, cross: CrossRun) -> str:
  """``<root>/_black_box/<name>-<digest of the models and sources>.json``: one file per measurement."""
  ident = json.dumps([[n, d.workdir] for n, d in cross.models.items()] + [cross.sources])
  digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
  safe = "".join(ch if ch.isalnum() else "_" for ch in group_key(cross.name)) or "group"
  return os.path.join(root, "_black_box", f"{safe}-{digest}.json")


def cross_run(study: Study, done: list[Done], *, root: str, progress: bool = False, command: str = "",
              log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
  """Each of the study's cross-run records (:func:`crp_jax.runner.black_box.measure`), by name."""
  out = {}
  for cross in study.cross_runs(by_group(done)):
    path = black_box_path(root, cross)
    models = {n: os.path.join(d.workdir, d.run.config.method) for n, d in cross.models.items()}
    start = time.perf_counter()
    out[cross.name] = black_box.measure(models, path, sources=cross.sources, progress=progress, command=command)
    log(f"[{study.name}] black-box between the {len(models)} models of {cross.name}: {os.path.relpath(path)} "
        f"({_duration(time.perf_counter() - start)})")
  return out


class Context(NamedTuple):
  """What an aggregation reads: the base config, the finished runs' records, and the cross-run records."""
  study: Study
  base: ml_collections.ConfigDict
  done: list[Done]
  black_box: dict[str, dict[str, Any]] = {}

  def groups(self) -> dict[str, list[Done]]:
    return by_group(self.done)


def per_seed(done: list[Done]) -> list[dict[str, Any]]:
  """The per-seed numbers of ``study.json``: each run's accuracies, strong worst case, checks, training."""
  out = []
  for d in done:
    e = d.results["evaluation"]
    strong = e.get("strong") or {}
    out.append({"group": d.run.group, "seed": d.run.seed, "workdir": d.workdir, "config": d.results["config"],
                "training": d.results["training"], "code": d.results.get("code"),
                "clean_accuracy": e["paper"]["clean_accuracy"],
                "paper_protocol": e["paper"]["accuracy"], "labels": e["paper"]["labels"],
                "strong_worst_case": strong.get("worst_case"), "all_attacks": strong.get("all_attacks"),
                "num_flags": strong.get("num_flags"),
                "flags": [c["name"] for c in strong.get("checks", []) if not c["passed"]]})
  return out


def write_outputs(out_dir: str, study: Study, ctx: Context, outcome: Outcome, *, command: str,
                  seconds: float) -> str:
  """``table.md``, ``study.json`` and the figures of a study, each written atomically; returns the markdown."""
  os.makedirs(out_dir, exist_ok=True)
  base, stamp = ctx.base, provenance.stamp(command)
  lines = [f"# {study.title}", "", f"Command: `{command}`", "",
           f"Dataset {base.dataset}, preset as in the command; {len({d.run.seed for d in ctx.done})} seed(s) per "
           f"setting (each seed: a new perturbation set and a new initialisation); mean ± sample std over "
           f"seeds. Wall time of this command {_duration(seconds)} (finished runs reused).", ""]
  lines += [t.markdown() for t in outcome.tables]
  lines += [f"- {n}" for n in outcome.notes]
  lines += [f"![{name}]({name})" for name in outcome.figures]
  lines += ["", provenance.line(stamp), "", f"Regenerate: `{command}`"]
  text = "\n".join(lines) + "\n"
  for name, png in outcome.figures.items():
    atomic.atomic_write_bytes(os.path.join(out_dir, name), png)
  atomic.write_json(os.path.join(out_dir, "study.json"), {
      "study": study.name, "title": study.title, **stamp, "wall_seconds": seconds,
      "base_config": base.to_dict(), "tables": [t.to_json() for t in outcome.tables], "runs": per_seed(ctx.done),
      "black_box": ctx.black_box, "extras": outcome.extras, "notes": list(outcome.notes)})
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
