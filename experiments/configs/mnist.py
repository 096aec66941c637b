"""MNIST with LeNet (paper §4.1, Tables 1 and 4).

paper: K = 10 constant draws of U(−0.3, 0.3) plus the clean image, Adam at
lr 1e-3 for 50 epochs; attacks at ε = 0.3 with the paper's η = 1/255, and
the standard η = 0.01 with a random start beside it.

  python -m experiments.run --dataset=mnist --preset=paper
"""

from crp_jax.runner.config import adversary_config, base_config, eval_config


def get_config(preset: str = "small"):
  c = base_config()
  c.dataset = "mnist"
  c.model = "lenet"
  c.perturbation_eps = 0.3
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.eval = eval_config(eps=0.3, step_size=1 / 255)
  c.eval.extra_step_size = 0.01
  # PGD-AT / TRADES as Madry et al.'s MNIST challenge: 40 steps of 0.01 at ε = 0.3; TRADES β = 6.
  c.adversary = adversary_config(eps=0.3, steps=40, step_size=0.01, beta=6.0)
  if preset == "paper":
    c.num_perturbations = 10
    c.epochs = 50
    c.eval.pgd_steps = (20, 40, 100)
    c.eval.attack_subset = 0
  else:
    c.num_perturbations = 4
    c.epochs = 1
    c.train_subset = 10000
  return c
