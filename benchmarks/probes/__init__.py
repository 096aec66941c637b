"""One-off probes behind the notes of ``benchmarks/results*.md`` (``python -m benchmarks.probes.<name>``).

Unlike :mod:`benchmarks.run`, they write no table: each prints the
measurement that explains one choice of the library (the one-device train
mesh, the CPU convolution rewrites, the XLA flags, the allocator).
"""
