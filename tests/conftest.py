"""Test-suite set-up: the tests' helper modules (oracle, cases) import by name, and torch stays single-threaded."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
