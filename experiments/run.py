r"""Train and evaluate CRP models: ``python -m experiments.run [flags]``.

  python -m experiments.run                         # offline default: standard vs CRP LeNet on mnist5k
  python -m experiments.run --dataset=svhn --preset=paper
  python -m experiments.run --preset=control        # PGD-AT beside standard and CRP: the positive control
  python -m experiments.run --dataset=cifar10 --method=variable --config.include_clean=False
  python -m experiments.run --config.epochs=2 --config.eval.pgd_steps='(10,20)'
  python -m experiments.run --coordinator_address=10.0.0.2:1234 --num_processes=2 --process_id=0  # on host 0
  python -m experiments.run --distributed ...       # every host of a Cloud TPU pod slice or SLURM job

The workdir defaults to ``runs/<dataset>-<methods>-seed<seed>``, followed by
the preset (unless ``small``) and every training field that differs from the
preset (e.g. ``-distribution=gaussian``); running the same command again
resumes from its checkpoints.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli


def define_flags(argv: list[str]) -> None:
  """The flags, with ``--config`` built from ``--dataset`` and ``--preset``.

  Called after :func:`cli.setup_process`: the configs import the library
  (JAX, tfds), which the process should load once, after its re-exec.
  """
  from experiments.configs import DATASETS, PRESETS, get_config  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("dataset", "mnist5k", DATASETS, "Dataset; picks the config file.")
  flags.DEFINE_enum("preset", "small", PRESETS, "small: sized for a CPU; paper: the paper's settings; "
                    "control: PGD-AT beside standard and CRP (the positive control).")
  flags.DEFINE_string("method", None, "Shorthand for --config.method (standard, crp, variable, pgd_at, trades).")
  flags.DEFINE_string("workdir", None, "Output folder; default runs/<dataset>-<methods>-seed<seed>[-<preset>][-<changed fields>].")
  flags.DEFINE_string("tfds_data_dir", None,
                      "Folder of prepared tfds datasets (shorthand for --config.tfds_data_dir).")
  flags.DEFINE_bool("allow_config_change", False, "Resume although eval-only fields of the config changed.")
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  cli.define_distributed_flags()
  dataset, preset = cli.pre_parse(argv, DATASETS, PRESETS)
  config_flags.DEFINE_config_dict("config", get_config(dataset, preset), lock_config=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  writer = cli.start_distributed()
  config = cli.apply_shorthands(flags.FLAGS.config, method=flags.FLAGS.method,
                                tfds_data_dir=flags.FLAGS.tfds_data_dir)
  from experiments.configs import get_config  # pylint: disable=g-import-not-at-top
  preset_config = get_config(flags.FLAGS.dataset, flags.FLAGS.preset)
  workdir = flags.FLAGS.workdir or cli.default_workdir(config, preset_config, flags.FLAGS.preset)
  command = "python -m experiments.run " + shlex.join(sys.argv[1:])
  from crp_jax.runner import pipeline  # pylint: disable=g-import-not-at-top
  with cli.user_errors():
    text = pipeline.run(config, workdir, progress=flags.FLAGS.progress and writer,
                        allow_config_change=flags.FLAGS.allow_config_change, command=command)
    if writer:
      print(text)
      print(f"\nwrote {os.path.join(workdir, 'report.md')}")


if __name__ == "__main__":
  cli.setup_process("experiments.run")
  define_flags(sys.argv)
  cli.run(main)
