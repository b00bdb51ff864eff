"""Test-wide settings."""

import torch

# The tests use tiny models, where a second thread costs more in synchronisation than it gains
# (measured 3-4x slower with two threads on the project's 2-core machines).
torch.set_num_threads(1)
