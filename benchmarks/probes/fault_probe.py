"""Page faults and system time of the CLI's LeNet ``crp`` step, batch 128, on one device, in this process.

    python -m benchmarks.probes.fault_probe                                   # as a user's process
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m benchmarks.probes.fault_probe
    python -m benchmarks.probes.fault_probe --retain_freed_memory            # crp_jax.configure_cpu(...)

Prints median ms per step over 8 rounds of 5 steps, and minor page faults
and system milliseconds per step (``getrusage``). No re-execution: the
process runs with the environment it is given, as ``benchmarks.plain`` does.
"""

from __future__ import annotations

import crp_jax  # first, as a user's script would  # isort: skip

import resource
import time

from absl import app, flags

from benchmarks import _env, _timing


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _env.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  settings = crp_jax.configure_cpu(retain_freed_memory=flags.FLAGS.retain_freed_memory)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", 1)
  from benchmarks import run as bench  # pylint: disable=g-import-not-at-top
  from crp_jax.models import LeNet  # pylint: disable=g-import-not-at-top
  from crp_jax.runner import train, meshes  # pylint: disable=g-import-not-at-top
  data = bench.make_data((28, 28, 1), 128)
  trainer = bench.JaxTrainer(LeNet(), (28, 28, 1), data, meshes.make_train_mesh(), method="crp", eps=0.3)
  trainer.run(3)
  before, times = resource.getrusage(resource.RUSAGE_SELF), []
  for _ in range(8):
    start = time.perf_counter()
    trainer.run(5)
    times.append((time.perf_counter() - start) / 5)
  after = resource.getrusage(resource.RUSAGE_SELF)
  print(f"XLA flag {settings.status}, malloc {settings.malloc}: {1e3 * _timing.median(times):.1f} ms/step, "
        f"{(after.ru_minflt - before.ru_minflt) / 40:.0f} faults/step, "
        f"{1e3 * (after.ru_stime - before.ru_stime) / 40:.1f} ms system/step")


if __name__ == "__main__":
  flags.DEFINE_bool("retain_freed_memory", False, "crp_jax.configure_cpu(retain_freed_memory=True) first.")
  app.run(main, flags_parser=_env.parse_flags)
