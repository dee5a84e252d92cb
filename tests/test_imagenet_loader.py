"""The ImageNet loader of the original script: R GPUs, each a DistributedSampler that pads, and a
loader that keeps the short last batch; ours gives every step the same rows on any number of
processes (--bt_loss imagenet_reference, the ImageNet default)."""
import pytest
import torch

from mixbt.errors import MixBTError
from mixbt.train_data import ReferenceBatches


def original_steps(n, batch_size, gpus, seed, epoch):
    """A transcription of the original's loaders: one per GPU, batch_size / gpus each, last batch kept."""
    loaders = []
    for rank in range(gpus):
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=gpus, rank=rank, shuffle=True,
                                                      seed=seed)
        sampler.set_epoch(epoch)
        loaders.append(list(torch.utils.data.DataLoader(range(n), batch_size=batch_size // gpus, sampler=sampler)))
    return [[int(i) for loader in loaders for i in loader[step]] for step in range(len(loaders[0]))]


@pytest.mark.parametrize('n', [1000, 1003])
def test_every_step_holds_the_original_gpus_rows_in_gpu_order_with_the_short_last_batch(n):
    batches = ReferenceBatches(n, 64, 8, seed=3)
    batches.set_epoch(2)
    ours = list(batches)
    want = original_steps(n, 64, 8, seed=3, epoch=2)
    assert ours == want and len(batches) == len(want)
    assert len(ours[-1]) < 64 and len(ours[-1]) % 8 == 0  # short, and whole groups of the reference loss


def test_imagenet_has_1252_steps_an_epoch_at_batch_1024():
    assert len(ReferenceBatches(1_281_167, 1024, 8, seed=0)) == 1252


def test_a_batch_that_the_reference_gpus_cannot_share_is_refused():
    with pytest.raises(MixBTError, match='divide --batch_size'):
        ReferenceBatches(100, 60, 8, seed=0)


def test_fp16_on_the_imagenet_recipe_uses_the_original_scaler(monkeypatch):
    """The original ImageNet script: GradScaler(growth_interval=100); elsewhere torch's default."""
    import torch

    import main
    from mixbt.config import get_args
    from mixbt.runtime import grad_scaler
    assert grad_scaler(torch.float16, torch.device('cpu'), growth_interval=100).get_growth_interval() == 100
    seen = []
    monkeypatch.setattr(main, 'autocast_dtype', lambda precision, device: torch.float16)
    monkeypatch.setattr(main, 'grad_scaler', lambda amp, device, growth_interval: seen.append(growth_interval))
    monkeypatch.setattr(main, 'build_model', lambda args: torch.nn.Linear(2, 2))
    monkeypatch.setattr(main.METHODS['mixbt'], 'build', classmethod(lambda cls, args, model: model))
    monkeypatch.setattr(main, 'print_config', lambda *a: None)
    monkeypatch.setattr(main, 'profile', lambda *a: None)
    for dataset, want in (('imagenet', 100), ('cifar10', 2000)):
        args = get_args(['--dataset', dataset, '--is_mixup', 'true', '--batch_size', '64', '--gpu', '-1'])
        trainer = main.Trainer.__new__(main.Trainer)
        trainer.args, trainer.device, trainer.k = args, torch.device('cpu'), args.k
        trainer.spec = main.datasets.SPECS[dataset]
        trainer.setup()
        assert seen[-1] == want


def test_the_imagenet_reference_recipe_runs_in_fp16_as_the_original():
    from mixbt.config import get_args
    assert get_args(['--dataset', 'imagenet', '--is_mixup', 'true', '--batch_size', '64']).precision == 'fp16'
    assert get_args(['--dataset', 'imagenet', '--is_mixup', 'true', '--batch_size', '64',
                     '--bt_loss', 'global']).precision == 'auto'
    assert get_args(['--dataset', 'cifar10']).precision == 'auto'  # bf16 on CUDA where supported


def test_under_fp16_the_reference_loss_runs_in_autocast_as_the_original(monkeypatch):
    """The original ImageNet script's autocast covered its loss: C was an fp16 matmul. Elsewhere
    every loss runs in float32 outside autocast."""
    import torch

    from mixbt import losses
    from mixbt.config import get_args
    from mixbt.methods import METHODS
    from test_baselines import images
    from test_methods import TinyEmbedder
    seen = []
    real = losses.cross_correlation
    monkeypatch.setattr(losses, 'cross_correlation', lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    for argv, dtype in ((['--dataset', 'imagenet'], torch.float16),
                        (['--dataset', 'imagenet', '--precision', 'bf16'], torch.float32),
                        (['--dataset', 'cifar10'], torch.float32)):
        args = get_args(argv + ['--is_mixup', 'true', '--batch_size', '16', '--ref_world_size', '2'])
        method = METHODS[args.method].build(args, TinyEmbedder(emb=6))
        with torch.autocast('cpu', dtype=torch.float16):
            method(images(n=16))
        assert seen[-1].dtype == dtype, argv
