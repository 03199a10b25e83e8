"""Benchmark scripts; run them as modules (``python -m benchmarks.<name>``) from the repository root."""

import robolearn  # noqa: F401  (chooses the headless GL backend before any benchmark imports mujoco)
