"""SVHN (tfds ``svhn_cropped``) with ResNet-18 (paper §4.1, Tables 2, 5 and 9).

paper: K = 10 constant draws of U(−16/255, 16/255) plus the clean image,
Adam at lr 0.002 with decay for 300 epochs; attacks at ε = 8/255, η = 2/255.

  python -m experiments.run --dataset=svhn --preset=paper
  python -m experiments.study --study=table2 --preset=short   # 15 epochs: about a GPU-hour a table

short: the paper's protocol at 15 epochs (not 300), AutoAttack on 1,000 test images.
"""

from crp_jax.runner.config import adversary_config, base_config, eval_config


def get_config(preset: str = "small"):
  c = base_config()
  c.dataset = "svhn"
  c.model = "resnet18"
  c.perturbation_eps = 16 / 255
  c.optimizer = "adam"
  c.learning_rate = 0.002
  c.lr_schedule = "cosine"
  c.eval = eval_config(eps=8 / 255, step_size=2 / 255)
  # PGD-AT / TRADES at the standard CIFAR-10 budget: 10 steps of 2/255 at 8/255, β = 6.
  c.adversary = adversary_config(eps=8 / 255, steps=10, step_size=2 / 255, beta=6.0)
  c.eval.eps_grid = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255)
  if preset == "paper":
    c.num_perturbations = 10
    c.epochs = 300
    c.eval.pgd_steps = (10, 20, 100)
    c.eval.attack_subset = 0
  elif preset == "short":
    # The paper's network, K, law, optimizer and attacks; 15 epochs instead of 300 and AutoAttack on a
    # fixed 1,000 test images: 73,257 x 11 x 15 = 12.1M training images a run.
    c.num_perturbations = 10
    c.epochs = 15
    c.eval.pgd_steps = (10, 20, 100)
    c.eval.attack_subset = 1000
  else:
    c.num_perturbations = 2
    c.epochs = 1
    c.train_subset = 512
    c.batch_size = 64
    c.eval.pgd_steps = (10,)
    c.eval.attack_subset = 64
    c.eval.batch_size = 32
  return c
