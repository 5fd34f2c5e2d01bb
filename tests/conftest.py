"""Test-suite set-up: the tests' helper modules (oracle, cases) import by name, torch stays single-threaded, and
the Hypothesis profiles: ``ci`` (the default: few examples, a deadline, the same examples on every run) and
``long`` (thousands of random examples), chosen with ``HYPOTHESIS_PROFILE=long``."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # only tests/test_exactness_hypothesis.py needs it
    pass
else:
    settings.register_profile("ci", max_examples=25, deadline=10_000, derandomize=True, database=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("long", max_examples=3000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
