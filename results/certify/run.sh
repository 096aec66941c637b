#!/usr/bin/env bash
# The small certification study of issue 18 on mnist5k (2-core CPU): standard vs CRP with constant
# Gaussian draws (K = 10 + clean) vs variable Gaussian draws (K = 10 renewed each epoch + clean, the
# same steps as CRP), trained at the small preset (3 epochs), each certified at its sigma.
#   bash results/certify/run.sh [RUNS_DIR]      (default runs/certify)
# N (default 10000) and EXAMPLES (default 200) set CERTIFY's n and the test examples certified.
# Training takes ~20 min on 2 cores; a model already trained in RUNS_DIR is not trained again.
set -euo pipefail
runs=${1:-runs/certify}
N=${N:-10000}
EXAMPLES=${EXAMPLES:-200}
train() {  # name, flags...
  local name=$1; shift
  if compgen -G "$runs/$name/*/results.json" > /dev/null; then echo "already trained $name"; return; fi
  python -m experiments.run --workdir="$runs/$name" --progress=false --config.compare_with= \
    --config.eval.strong=False --config.eval.attack_subset=100 "$@" > "$runs/$name.log"
  echo "trained $name"
}
mkdir -p "$runs"
train standard --config.method=standard
for s in 0.25 0.5; do
  train "crp-gaussian-$s" --config.method=crp --config.distribution=gaussian --config.perturbation_eps=$s \
    --config.num_perturbations=10
  train "variable-gaussian-$s" --config.method=variable --config.distribution=gaussian \
    --config.perturbation_eps=$s --config.num_perturbations=10
done
for s in 0.25 0.5; do
  python -m experiments.certify --workdir="$runs/standard/standard,$runs/crp-gaussian-$s/crp,$runs/variable-gaussian-$s/variable" \
    --sigma=$s --n0=100 --n=$N --num_examples=$EXAMPLES --batch_size=1000 --progress=false
done
