"""crp_jax: Constant Random Perturbations in JAX.

The public API: the stateless perturbation set, the ball loss, compiled
attacks and the paper's models.
"""

from crp_jax import attacks, models, perturbations
from crp_jax.losses import ball_loss, pair_loss
from crp_jax.models import get_model
from crp_jax.perturbations import make_delta, perturb

__all__ = ["attacks", "ball_loss", "get_model", "make_delta", "models", "pair_loss", "perturb", "perturbations"]
__version__ = "0.1.0"
