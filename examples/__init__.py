"""Short, runnable examples of the crp_jax library in a user's own code (``python -m examples.<name>``)."""
