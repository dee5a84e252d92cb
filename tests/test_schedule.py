"""The per-step learning rate of the originals (docs/protocol.md section 4), step by step.

Each reference below is a literal restatement of an original's schedule (the mix-bt
small-data main.py, the official Barlow Twins / mix-bt ImageNet main.py, the mix-bt step
schedule), written out here independently of utils.py; ours is what main.py sets on each
optimiser group: the group's base learning rate times the factor of utils."""
import math

import pytest
import torch

from utils import step_factor, warmup_cosine_factor


def mixbt_small_data_lrs(epochs, steps_per_epoch, batch_size, lr, warmup_epochs=10):
    """mix-bt main.py: `for epoch in range(1, epochs + 1)`, `enumerate(train_bar, start=epoch *
    len(train_bar))`, adjust_learning_rate with its 10-epoch warm-up (here `warmup_epochs`)."""
    lrs = []
    for epoch in range(1, epochs + 1):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            max_steps = epochs * steps_per_epoch
            warmup_steps = warmup_epochs * steps_per_epoch
            base_lr = batch_size / 256
            if step < warmup_steps:
                value = base_lr * step / warmup_steps
            else:
                step -= warmup_steps
                max_steps -= warmup_steps
                q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
                end_lr = base_lr * 0.001
                value = base_lr * q + end_lr * (1 - q)
            lrs.append(value * lr)
    return lrs


def barlowtwins_imagenet_lrs(epochs, steps_per_epoch, batch_size, lr_weights, lr_biases, warmup_epochs=10):
    """Official Barlow Twins (and mix-bt main_imagenet.py): `for epoch in range(start_epoch,
    epochs)` from 0, two LARS groups (weights, biases)."""
    lrs = []
    for epoch in range(0, epochs):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            max_steps = epochs * steps_per_epoch
            warmup_steps = warmup_epochs * steps_per_epoch
            base_lr = batch_size / 256
            if step < warmup_steps:
                value = base_lr * step / warmup_steps
            else:
                step -= warmup_steps
                max_steps -= warmup_steps
                q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
                end_lr = base_lr * 0.001
                value = base_lr * q + end_lr * (1 - q)
            lrs.append((value * lr_weights, value * lr_biases))
    return lrs


CASES = [  # (epochs, steps per epoch, warm-up epochs)
    (20, 7, 10), (100, 3, 10), (15, 1, 10), (11, 5, 10), (30, 13, 5), (12, 4, 2), (25, 5, 0), (9, 6, 10), (3, 2, 10)]


@pytest.mark.parametrize('epochs,steps_per_epoch,warmup', CASES)
@pytest.mark.parametrize('batch_size,lr', [(256, 0.01), (512, 1e-3), (96, 0.3)])
def test_small_data_cosine_equals_mixbt_main_step_by_step(epochs, steps_per_epoch, warmup, batch_size, lr):
    expected = mixbt_small_data_lrs(epochs, steps_per_epoch, batch_size, lr, warmup)
    base = lr * batch_size / 256  # main.py's group base_lr with the cosine schedule (--lr honoured)
    ours = [base * warmup_cosine_factor(step, steps_per_epoch, epochs, float(warmup))
            for step in range(epochs * steps_per_epoch)]
    assert len(ours) == len(expected)
    for step, (a, b) in enumerate(zip(ours, expected)):
        assert math.isclose(a, b, rel_tol=1e-13, abs_tol=0), (step, a, b)


@pytest.mark.parametrize('epochs,steps_per_epoch,warmup', CASES)
def test_imagenet_cosine_equals_official_barlow_twins_step_by_step(epochs, steps_per_epoch, warmup):
    batch_size, lr_weights, lr_biases = 1024, 0.2, 0.0048
    expected = barlowtwins_imagenet_lrs(epochs, steps_per_epoch, batch_size, lr_weights, lr_biases, warmup)
    scale = batch_size / 256
    for step, (weights, biases) in enumerate(expected):
        factor = warmup_cosine_factor(step, steps_per_epoch, epochs, float(warmup), first_epoch=0)
        assert math.isclose(lr_weights * scale * factor, weights, rel_tol=1e-13, abs_tol=0), step
        assert math.isclose(lr_biases * scale * factor, biases, rel_tol=1e-13, abs_tol=0), step


def test_first_step_is_one_tenth_into_warmup_and_last_epoch_passes_beyond_the_cosine():
    epochs, steps = 2000, 195  # CIFAR-10 at batch 256: 50000 // 256 steps
    factors = [warmup_cosine_factor(s, steps, epochs) for s in range(epochs * steps)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[10 * steps - 1 - steps] == pytest.approx(1 - 1 / (10 * steps))  # warm-up's top, one epoch early
    last_epoch = factors[-steps:]
    assert last_epoch[0] == pytest.approx(0.001, rel=1e-12)  # the cosine's end: the first step of the last epoch
    assert all(b > a for a, b in zip(last_epoch, last_epoch[1:]))  # then beyond pi: rising
    assert factors[-1] == pytest.approx(0.0010006, abs=5e-8)
    exact = [warmup_cosine_factor(s, steps, epochs, first_epoch=0) for s in (0, epochs * steps - 1)]
    assert exact[0] == 0 and exact[1] == pytest.approx(0.001, rel=1e-6)  # ImageNet: no off-by-one


def test_no_cosine_left_holds_the_final_factor_where_the_original_divides_by_zero():
    epochs, steps = 10, 4  # the index reaches the 10-epoch warm-up's end in the last epoch
    with pytest.raises(ZeroDivisionError):
        mixbt_small_data_lrs(epochs, steps, 256, 1.0)
    ours = [warmup_cosine_factor(s, steps, epochs) for s in range(epochs * steps)]
    assert ours[:-steps] == pytest.approx([(s + steps) / (10 * steps) for s in range(epochs * steps - steps)])
    assert ours[-steps:] == [0.001] * steps


@pytest.mark.parametrize('epochs', [200, 100, 60, 40, 25])
def test_step_schedule_equals_mixbt_multisteplr_per_epoch(epochs):
    """mix-bt main.py: MultiStepLR(milestones=[E-50, E-25], gamma=0.2), stepped after each of
    the epochs numbered 1..E (its lr is Adam's 1e-3; ours is --lr, here 1e-3)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-3, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[epochs - a for a in [50, 25]], gamma=0.2)
    for epoch in range(1, epochs + 1):
        expected = optimizer.param_groups[0]['lr']
        assert math.isclose(1e-3 * step_factor(epoch - 1, epochs), expected, rel_tol=1e-12), epoch
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize('epochs', [60, 50, 26, 25])
def test_step_schedule_with_warmup_equals_wmse_loop(epochs):
    """The W-MSE repository's train.py (the baselines' step schedule): MultiStepLR built at
    the start, the first `warmup` steps' lr set by hand to lr * (k + 1) / warmup, the
    scheduler stepped after each epoch; ours as main.py calls step_factor (step + 1). (A
    milestone m >= 1 inside the warm-up, m * steps_per_epoch < warmup, would be overwritten
    there too; step_factor does not model that: runs of E >= 51 epochs never meet it.)"""
    lr, warmup, steps_per_epoch = 3e-3, 3, 3
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=lr, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[epochs - a for a in [50, 25]], gamma=0.2)
    lr_warmup = 0
    for ep in range(epochs):
        for n_iter in range(steps_per_epoch):
            if lr_warmup < warmup:
                for pg in optimizer.param_groups:
                    pg['lr'] = lr * (lr_warmup + 1) / warmup
                lr_warmup += 1
            step = ep * steps_per_epoch + n_iter
            ours = lr * step_factor(step // steps_per_epoch, epochs, step=step + 1, warmup_steps=warmup)
            assert math.isclose(ours, optimizer.param_groups[0]['lr'], rel_tol=1e-12), (ep, n_iter)
            optimizer.step()
        scheduler.step()
