"""One process of the multi-process δ check (``tests/test_distributed.py``); not a test itself.

  python tests/multiprocess_worker.py OUT.npy NUM_PROCESSES PROCESS_ID PORT DEVICES_PER_PROCESS

Builds the train batches of a small extended set the way training does
(:func:`crp_jax.runner.train.to_device`: each process contributes its rows
of the host batch), draws δ for them in a jit over the data mesh, and
process 0 saves the gathered δ of every step.
"""

import sys

import jax


def main(out: str, num_processes: int, process_id: int, port: int, devices: int) -> None:
  jax.config.update("jax_num_cpu_devices", devices)
  from crp_jax.runner import distributed, train, meshes, seeds  # pylint: disable=g-import-not-at-top
  if num_processes > 1:
    distributed.initialize(distributed.Launch(coordinator_address=f"127.0.0.1:{port}",
                                              num_processes=num_processes, process_id=process_id))
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from crp_jax import perturbations  # pylint: disable=g-import-not-at-top
  split = fake_split()
  spec = train.TrainSpec(num_perturbations=3, batch_size=16, seed=5)
  mesh = meshes.make_mesh()
  key = seeds.run_keys(spec.seed)["perturbations"]
  draw = jax.jit(lambda ids, draws: perturbations.make_delta(ids, draws, split.image_shape, key=key, eps=0.3),
                 out_shardings=NamedSharding(mesh, P()))
  deltas = [np.asarray(draw(b["example_id"], b["draw_id"]))
            for _, b in train.to_device(train.host_batches(split, spec, split.num_examples, 0, 6), mesh)]
  if distributed.is_writer():
    np.save(out, np.stack(deltas))
  distributed.sync("worker-done")


def fake_split():
  """40 examples of 4×4×1 with ids 100..139 (ids, not positions, key δ)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from crp_jax.data import Split  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  return Split(images=rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8),
               labels=rng.integers(0, 10, 40).astype(np.int32), ids=np.arange(100, 140, dtype=np.int32),
               num_classes=10, image_shape=(4, 4, 1))


if __name__ == "__main__":
  main(sys.argv[1], *map(int, sys.argv[2:]))
