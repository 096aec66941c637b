"""Throughput benchmarks (run as modules, e.g. ``python -m benchmarks.attack_throughput``)."""
