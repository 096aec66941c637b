#!/bin/sh
# Executes both notebooks top to bottom at their tiny size on 8 fake CPU devices, as
# tests/test_notebooks.py does, and writes every cell's outputs to results/notebooks/<name>-8cpu.txt
# (the executed notebooks stay in a temporary folder; the committed ones have no outputs).
#
#   sh results/notebooks/run.sh        # from the repository root, in the venv with the notebook extra
set -e
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
for nb in quickstart paper_study; do
  cp "notebooks/$nb.ipynb" "$work/"
  start=$(date +%s)
  # A fresh compilation cache per notebook: the wall time is that of a first run.
  CRP_COMPILATION_CACHE="$work/xla-cache-$nb" CRP_NOTEBOOK_TINY=1 JAX_PLATFORMS=cpu \
    XLA_FLAGS=--xla_force_host_platform_device_count=8 jupyter execute --kernel_name=python3 --timeout=600 --output="$nb-executed" "$work/$nb.ipynb"
  seconds=$(( $(date +%s) - start ))
  python - "$work/$nb-executed.ipynb" "$nb" "$seconds" > "results/notebooks/$nb-8cpu.txt" <<'PY'
import sys
import nbformat
path, name, seconds = sys.argv[1:]
nb = nbformat.read(path, as_version=4)
print(f"notebooks/{name}.ipynb executed by `sh results/notebooks/run.sh` (CRP_NOTEBOOK_TINY=1, "
      f"JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=8, a fresh compilation cache) "
      f"in {seconds} s wall.")
print("Each code cell's first line, then its outputs (images as their size).")
for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
  print(f"\n===== cell {i + 1}: {cell.source.splitlines()[0]}")
  for out in cell.outputs:
    data = out.get("data", {})
    if out.output_type == "stream":
      print(out.text, end="" if out.text.endswith("\n") else "\n")
    elif "text/markdown" in data:
      print(data["text/markdown"])
    elif "image/png" in data:
      print(f"[image/png, {len(data['image/png']) * 3 // 4} bytes]")
    elif "text/plain" in data:
      print(data["text/plain"])
    elif out.output_type == "error":
      print("".join(out.traceback))
PY
done
rm -rf "$work"
