"""CIFAR-10 with Wide-ResNet 28-10, dropout 0.1 (paper §4.1, Tables 3, 6–8, 10).

paper: K = 10 constant draws of U(−16/255, 16/255) plus the clean image, SGD
(Nesterov momentum 0.9, weight decay 5e-4) at lr 0.02 with decay for 700
epochs; attacks at ε = 8/255, η = 2/255. The paper does not name the
optimiser or the decay; SGD with cosine decay is the usual WRN recipe.

  python -m experiments.run --dataset=cifar10 --preset=paper
  python -m experiments.study --study=table3 --preset=short   # ResNet-18, 30 epochs: about a GPU-hour a table

short: the paper's protocol on ResNet-18 (not WRN-28-10) for 30 epochs (not 700), AutoAttack on 1,000
test images.
"""

from crp_jax.runner.config import adversary_config, base_config, eval_config


def get_config(preset: str = "small"):
  c = base_config()
  c.dataset = "cifar10"
  c.perturbation_eps = 16 / 255
  c.optimizer = "sgd"
  c.learning_rate = 0.02
  c.lr_schedule = "cosine"
  c.weight_decay = 5e-4
  c.eval = eval_config(eps=8 / 255, step_size=2 / 255)
  # PGD-AT / TRADES at the standard CIFAR-10 budget: 10 steps of 2/255 at 8/255, β = 6.
  c.adversary = adversary_config(eps=8 / 255, steps=10, step_size=2 / 255, beta=6.0)
  c.eval.eps_grid = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255)
  if preset == "paper":
    c.model = "wrn28_10"
    c.num_perturbations = 10
    c.epochs = 700
    c.eval.pgd_steps = (7, 20, 100)
    c.eval.attack_subset = 0
  elif preset == "short":
    # The paper's K, law, optimizer and attacks on a smaller network (ResNet-18, about 1/10 of
    # WRN-28-10's FLOPs) for 30 epochs instead of 700, AutoAttack on a fixed 1,000 test images:
    # 50,000 x 11 x 30 = 16.5M training images a run.
    c.model = "resnet18"
    c.num_perturbations = 10
    c.epochs = 30
    c.eval.pgd_steps = (7, 20, 100)
    c.eval.attack_subset = 1000
  else:
    # WRN-28-10 is far too slow on a CPU; ResNet-18 keeps the code path.
    c.model = "resnet18"
    c.num_perturbations = 2
    c.epochs = 1
    c.train_subset = 512
    c.batch_size = 64
    c.eval.pgd_steps = (7,)
    c.eval.attack_subset = 64
    c.eval.batch_size = 32
  return c
