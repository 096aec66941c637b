"""Throughput benchmarks: ``python -m benchmarks.run`` (the table), ``benchmarks.probes`` (the notes' probes)."""
