import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault('WANDB_MODE', 'disabled')
# Under pytest-xdist (pytest.ini: -n 2) each of the 2 workers takes one core; alone, a run takes two.
torch.set_num_threads(1 if os.environ.get('PYTEST_XDIST_WORKER') else min(2, os.cpu_count() or 1))


@pytest.fixture(scope='module')
def one_thread():
    """Many small tensor ops: one thread avoids OpenMP hand-offs (slow on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def repo_root():
    return ROOT


# Per-method flags that fit the tiny test models (emb 6, batches of 6). Tests build every method in
# methods.METHODS through its own build(), so a newly registered method is tested without more code;
# give it flags here if its defaults do not fit a tiny model.
TINY_METHOD_FLAGS = {
    'simclr': ['--emb', '6'],
    'byol': ['--emb', '6', '--head_size', '8'],
    'intl': ['--emb', '6'],
    'wmse': ['--emb', '6', '--w_size', '3', '--w_iter', '2', '--w_eps', '0.1'],
    'cwrgp': ['--emb', '6', '--w_size', '3', '--w_iter', '2', '--w_eps', '0.1', '--group', '2'],
    'mixbt': ['--lmbda', '0.01'], 'barlowtwins': ['--lmbda', '0.01'], 'hsic': ['--lmbda', '0.01'],
}


def build_method(name, model, fuse=True, batch_size=6, extra=()):
    """methods.METHODS[name] on `model`, configured as main.py configures it (tiny flags)."""
    import main
    from mixbt import methods
    args = main.get_args(['--method', name, '--batch_size', str(batch_size), '--fuse_views', str(fuse).lower(),
                          *TINY_METHOD_FLAGS.get(name, []), *extra])
    return methods.METHODS[name].build(args, model)
