"""Fields shared by every config, with neutral defaults."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "mnist5k"
  c.model = "lenet"
  # The training method: standard (Table 7 A), crp (constant, the paper's G),
  # variable (drawn anew each epoch, B–E).
  c.method = "crp"
  # A second method trained and reported beside `method` ('' for none).
  c.compare_with = ""
  c.distribution = "uniform"
  c.num_perturbations = 10
  c.perturbation_eps = 0.3
  c.include_clean = True
  c.clip_perturbed = True
  c.seed = 0
  c.epochs = 1
  c.batch_size = 128
  c.train_subset = 0  # 0: the whole train split
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.lr_schedule = "constant"
  c.momentum = 0.9
  c.weight_decay = 0.0
  c.dtype = "float32"
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.max_checkpoints = 2
  c.tfds_data_dir = ""
  c.eval = eval_config(eps=0.3, step_size=1 / 255)
  return c


def eval_config(*, eps: float, step_size: float) -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.eps = eps
  e.step_size = step_size  # the paper's PGD step η
  e.pgd_steps = (20, 100)
  e.random_start = False  # the paper's PGD starts at x (Eq. 4)
  e.restarts = 1
  e.extra_step_size = 0.0  # > 0: also run PGD with this η and a random start
  e.batch_size = 256  # a power of two: divisible by any power-of-two device count
  e.attack_subset = 1000  # test examples attacked (clean accuracy uses the whole split)
  # The strong protocol (AutoAttack-style worst case) and the masking checks.
  e.strong = True
  e.apgd_steps = 100
  e.num_targets = 9  # APGD-T target classes (capped at classes - 1)
  e.square_queries = 5000
  e.sweep_steps = (10, 20, 50, 100, 200)  # PGD, step 2.5·ε/n, random start
  e.sweep_apgd_steps = (25, 100)
  e.sweep_restarts = 5
  e.eps_grid = tuple(eps * f for f in (1 / 3, 2 / 3, 1.0, 4 / 3, 2.0))
  e.eps_sweep_steps = 50
  e.unbounded_steps = 100
  e.noise_samples = 100
  e.masking_tolerance = 0.005  # accuracy noise allowed before a check FLAGs
  e.zero_grad_threshold = 1e-8
  return e
