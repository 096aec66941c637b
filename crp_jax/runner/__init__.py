"""The run machinery: config schema, training loop, evaluation plan, checkpoints, reports, atomic files.

The paper's method (perturbations, extended set, losses, attacks, models,
data) is the public library one level up; this package runs it end to end
for the command line (``python -m experiments.run``). Data flows one way:
config -> data -> train -> evaluate -> report.
"""
