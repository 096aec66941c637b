r"""Reproduce a table or figure of the paper: ``python -m experiments.study --study=NAME [flags]``.

  python -m experiments.study --list
  python -m experiments.study --study=table1 --dataset=mnist5k            # small preset, offline
  python -m experiments.study --study=table3 --preset=paper               # CIFAR-10, 5 WRN-28-10 runs
  python -m experiments.study --study=table4 --dataset=mnist5k --seeds=3
  python -m experiments.study --study=table3 --preset=paper --shard=$SLURM_ARRAY_TASK_ID/5   # one job of 5

A study is a list of ordinary ``experiments.run`` runs (one per setting and
seed, in ``--runs_dir``, shared between studies and reused when finished;
an interrupted study resumes where it stopped) plus an aggregation written
to ``<out>/<study>/<dataset>-<preset>/``: ``table.md`` (the paper's numbers
beside ours), ``study.json`` (every per-seed number) and the figures.
``--config.field=value`` overrides the base config of every run.
"""

from __future__ import annotations

import os
import shlex
import sys
import time

from absl import flags

from experiments import cli


def define_flags(argv: list[str]) -> None:
  """The flags; ``--config`` is the study's base config for ``--dataset`` (default: the study's) and ``--preset``."""
  from studies.registry import STUDIES  # pylint: disable=g-import-not-at-top
  from experiments.configs import DATASETS, STUDY_PRESETS, study_config  # pylint: disable=g-import-not-at-top
  name = cli.flag_value(argv, "study")
  if name is not None and name not in STUDIES:
    cli.fail(f"--study={name!r}: unknown; choose one of {', '.join(STUDIES)} (or --list)")
  flags.DEFINE_enum("study", None, list(STUDIES), "The table or figure to reproduce (see --list).")
  flags.DEFINE_bool("list", False, "List the studies and exit.")
  flags.DEFINE_enum("dataset", None, DATASETS, "Dataset; default: the paper's dataset of the study.")
  flags.DEFINE_enum("preset", "small", STUDY_PRESETS, "small: sized for a CPU; paper: the paper's settings; "
                    "short: the paper's protocol at a length of about a GPU-hour per table (svhn, cifar10).")
  flags.DEFINE_integer("seeds", 5, "Perturbation sets (seeds 0..n-1) per setting; the paper uses 5.", lower_bound=1)
  flags.DEFINE_list("groups", [], "Only these settings of the study, by short name (e.g. U for table1's "
                    "U(−0.3, 0.3), A,K=10 for saturation); default: all.")
  flags.DEFINE_string("runs_dir", "runs/studies", "Where the runs live (<runs_dir>/<dataset>-<preset>/<run>).")
  flags.DEFINE_string("out", "results", "Where the tables go (<out>/<study>/<dataset>-<preset>/).")
  flags.DEFINE_bool("progress", True, "Show the runs' progress bars (the per-run lines are always shown).")
  flags.DEFINE_string("shard", "0/1", "i/n: train only the runs k with k % n == i (one job of an array job of n); "
                      "the job that finds every run finished writes the table.")
  cli.define_distributed_flags()
  default = STUDIES[name].dataset if name else "mnist5k"
  dataset, preset = cli.pre_parse(argv, DATASETS, STUDY_PRESETS, default_dataset=default, config_fn=study_config)
  cli.define_config(argv, study_config(dataset, preset), f"The base config of every run of the study "
                    f"(experiments.configs.study_config at --dataset={dataset}, --preset={preset})")


def list_studies() -> None:
  from studies.registry import STUDIES  # pylint: disable=g-import-not-at-top
  for s in STUDIES.values():
    status = f"  [waits: {s.waits_for}]" if s.waits_for else ""
    print(f"{s.name:<11} {s.title} (paper dataset: {s.dataset}){status}")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if flags.FLAGS.list:
    list_studies()
    return
  if not flags.FLAGS.study:
    cli.fail("--study is required (or --list to see the studies)")
  writer = cli.start_distributed()
  log = print if writer else (lambda line: None)
  from studies import engine as study_lib  # pylint: disable=g-import-not-at-top
  from studies.registry import STUDIES  # pylint: disable=g-import-not-at-top
  study, base = STUDIES[flags.FLAGS.study], flags.FLAGS.config
  if study.waits_for:
    cli.fail(f"--study={study.name}: {study.waits_for}")
  where = f"{base.dataset}-{flags.FLAGS.preset}"
  part = f"-groups-{'-'.join(flags.FLAGS.groups)}" if flags.FLAGS.groups else ""
  command = "python -m experiments.study " + shlex.join(sys.argv[1:])
  start = time.perf_counter()
  with cli.user_errors():
    shard = study_lib.Shard.parse(flags.FLAGS.shard)
    runs = study_lib.select_groups(study_lib.study_runs(study, base, flags.FLAGS.seeds), flags.FLAGS.groups)
    study_lib.validate_runs(runs)
    root = os.path.join(flags.FLAGS.runs_dir, where)
    out_dir = os.path.join(flags.FLAGS.out, study.name, where + part)
    from crp_jax.runner import checkpoint  # pylint: disable=g-import-not-at-top
    checkpoint.check_workdir(out_dir, "--out folder")  # before hours of training, not after
    progress = flags.FLAGS.progress and writer
    done = study_lib.execute(study, runs, root=root, progress=progress, command=command, log=log, shard=shard)
    waiting = study_lib.missing(runs, done)
    if waiting:
      log(f"shard {shard}: its runs are finished; {len(waiting)} run(s) of other shards are not, so no table yet. "
          "The shard that finishes last writes it, or run this command again without --shard.")
      return
    crossed = study_lib.cross_run(study, done, root=root, progress=progress, command=command, log=log)
    ctx = study_lib.Context(study, base, done, crossed)
    outcome = study.aggregate(ctx)
    text = study_lib.write_outputs(out_dir, study, ctx, outcome, command=command,
                                   seconds=time.perf_counter() - start)
    log(text)
    log(f"wrote {out_dir}/table.md, study.json" + "".join(f", {f}" for f in outcome.figures))


if __name__ == "__main__":
  cli.setup_process("experiments.study")
  define_flags(sys.argv)
  cli.run(main)
