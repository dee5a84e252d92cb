import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('WANDB_MODE', 'disabled')
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def repo_root():
    return ROOT
