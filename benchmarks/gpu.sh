#!/usr/bin/env bash
# The GPU measurements of benchmarks/results-gpu.md, in one go (a few minutes on one H100/H200).
#
#   bash benchmarks/gpu.sh            # needs jax[cuda], torch with CUDA, and the .[bench] extra
#
# 1. the benchmark table (every row but the host-RSS one, plus WRN-28-10 bf16 MFU);
# 2. the crp step of WRN-28-10 with crp_jax.models.conv's CPU rewrites forced on and off,
#    which is why they are off on accelerators;
# 3. WRN-28-10 variants (no dropout, rbg dropout key, batch 256 and 512) and their MFU;
# 4. where a WRN-28-10 step's time goes (per-kernel times from a profiler trace).
set -uo pipefail
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# torch runs in the same process: leave it room beside JAX's preallocated pool.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
status=0
timeout "${RUN_TIMEOUT:-600}" "$py" -m benchmarks.run --plain --out=benchmarks/results-gpu.md || status=$?
for probe in "rewrites --model=wrn" "wrn" "trace --model=wrn"; do
  echo "== python -m benchmarks.probes.train_probe $probe"
  CRP_PLAIN_PROCESS=1 timeout "${PROBE_TIMEOUT:-300}" "$py" -m benchmarks.probes.train_probe $probe || status=$?
done
exit $status
