"""Model layouts equal docs/protocol.md section 2, so `*_model.pth` files move both ways between
this code and the released checkpoints; checkpoint loading is strict with clear errors."""
import pytest
import torch
import torchvision

from mixbt import checkpoints as C
from mixbt import data
import model as M
from mixbt import nets


def expected_small_layout(arch, maxpool, feature_dim):
    """docs/protocol.md section 2, restated: torchvision children in order, conv1 -> 3x3, fc dropped,
    max-pool dropped at 32px (so f.0 conv1, f.1 bn1, f.2 relu, then layer1.. shifted by one
    with max-pool), then the projector g = Linear(E,512,no bias), BN(512), ReLU, Linear(512,d)."""
    tv = getattr(torchvision.models, arch)().state_dict()
    names = ['conv1', 'bn1', 'relu'] + (['maxpool'] if maxpool else []) + ['layer1', 'layer2', 'layer3', 'layer4']
    index = {n: i for i, n in enumerate(names)}
    layout = {}
    for key, value in tv.items():
        top, rest = key.split('.', 1)
        if top == 'fc':
            continue
        shape = (64, 3, 3, 3) if key == 'conv1.weight' else tuple(value.shape)
        layout[f'f.{index[top]}.{rest}'] = shape
    emb = 512 if arch == 'resnet18' else 2048
    layout.update({'g.0.weight': (512, emb), 'g.1.weight': (512,), 'g.1.bias': (512,), 'g.1.running_mean': (512,),
                   'g.1.running_var': (512,), 'g.1.num_batches_tracked': (), 'g.3.weight': (feature_dim, 512),
                   'g.3.bias': (feature_dim,)})
    return layout


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
@pytest.mark.parametrize('dataset,maxpool', [('cifar10', False), ('cifar100', False), ('fashionmnist', False),
                                             ('stl10', True), ('tiny_imagenet', True)])
def test_state_dict_layout_matches_reference(arch, dataset, maxpool):
    m = M.Model(feature_dim=1024, arch=arch, maxpool=data.SPECS[dataset].maxpool)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected_small_layout(arch, maxpool, 1024)


def test_forward_returns_normalised_feature_and_projection():
    m = M.Model(feature_dim=64, arch='resnet18', maxpool=False).eval()
    feature, out = m(torch.randn(3, 3, 32, 32))
    assert feature.shape == (3, 512) and out.shape == (3, 64)
    torch.testing.assert_close(feature.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_imagenet_model_matches_official_layout():
    m = M.ImageNetModel('64-64-32')
    keys = m.state_dict().keys()
    tv = torchvision.models.resnet50().state_dict()
    assert {k[len('backbone.'):] for k in keys if k.startswith('backbone.')} == {k for k in tv if not k.startswith('fc.')}
    assert [k for k in keys if k.startswith('projector.')] == [
        'projector.0.weight', 'projector.1.weight', 'projector.1.bias', 'projector.1.running_mean',
        'projector.1.running_var', 'projector.1.num_batches_tracked', 'projector.3.weight', 'projector.4.weight',
        'projector.4.bias', 'projector.4.running_mean', 'projector.4.running_var', 'projector.4.num_batches_tracked',
        'projector.6.weight']
    # zero-init residual: the last BN of every bottleneck starts at 0
    assert m.backbone.layer1[0].bn3.weight.abs().sum() == 0


@pytest.mark.slow
def test_view_split_batchnorm_keeps_keys_and_equals_separate_passes():
    torch.manual_seed(0)
    ref = M.Model(feature_dim=16, arch='resnet18', maxpool=False).double()
    fused = M.Model(feature_dim=16, arch='resnet18', maxpool=False).double()
    fused.load_state_dict(ref.state_dict())
    nets.set_bn_views(fused, 3)
    assert list(fused.state_dict()) == list(ref.state_dict())
    views = [torch.randn(4, 3, 32, 32, dtype=torch.float64) for _ in range(3)]
    outs_ref = [ref(v)[1] for v in views]
    outs_fused = fused(torch.cat(views))[1].chunk(3)
    loss_ref = sum((o * w).sum() for o, w in zip(outs_ref, [1.0, -2.0, 3.0]))
    loss_fused = sum((o * w).sum() for o, w in zip(outs_fused, [1.0, -2.0, 3.0]))
    torch.testing.assert_close(loss_fused, loss_ref, rtol=1e-10, atol=1e-10)
    loss_ref.backward()
    loss_fused.backward()
    for (name, p_ref), p_fused in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p_fused.grad, p_ref.grad, rtol=1e-9, atol=1e-10, msg=name)
    for (name, b_ref), b_fused in zip(ref.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b_fused, b_ref, rtol=1e-10, atol=1e-12, msg=name)  # running stats, in view order


def test_batchnorm_modules_are_built_explicitly_and_swapped_by_replacement():
    """Models are built with this project's BatchNorm modules (no class swapping after the fact);
    sync_batchnorm replaces them by global-statistics modules with the same state and views."""
    m = M.Model(feature_dim=8, arch='resnet18', maxpool=False)
    bns = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(type(x) in (nets.BatchNorm1d, nets.BatchNorm2d) for x in bns)
    nets.set_bn_views(m, 2)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    nets.sync_batchnorm(m, torch.device('cpu'))
    bns = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(type(x) in (nets.GlobalBatchNorm1d, nets.GlobalBatchNorm2d) and x.views == 2 for x in bns)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    with pytest.raises(TypeError, match='per-view statistics'):
        nets.set_bn_views(torch.nn.Sequential(torch.nn.BatchNorm1d(3)), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='the CUDA SyncBatchNorm path needs a GPU')
def test_per_view_sync_batchnorm_on_cuda_equals_separate_passes(tmp_path):
    """--sync_bn on CUDA: nn.SyncBatchNorm's kernels with per-view statistics (one process group of
    one NCCL process) give what separate passes through plain BatchNorm give."""
    import torch.distributed as dist
    device = torch.device('cuda', 0)
    dist.init_process_group('nccl', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ref = M.Model(feature_dim=16, arch='resnet18', maxpool=False).to(device)
        fused = M.Model(feature_dim=16, arch='resnet18', maxpool=False).to(device)
        fused.load_state_dict(ref.state_dict())
        nets.set_bn_views(fused, 2)
        nets.sync_batchnorm(fused, device)
        assert any(isinstance(x, nets.SyncBatchNorm) for x in fused.modules())
        views = [torch.randn(8, 3, 32, 32, device=device) for _ in range(2)]
        outs_ref = torch.cat([ref(v)[1] for v in views])
        outs_fused = fused(torch.cat(views))[1]
        torch.testing.assert_close(outs_fused, outs_ref, rtol=1e-4, atol=1e-5)
        for (name, b_ref), b_fused in zip(ref.named_buffers(), fused.buffers()):
            torch.testing.assert_close(b_fused.float(), b_ref.float(), rtol=1e-4, atol=1e-5, msg=name)
    finally:
        dist.destroy_process_group()


def save(obj, tmp_path, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize('dataset,arch', [('cifar10', 'resnet18'), ('stl10', 'resnet18'), ('cifar100', 'resnet50')])
def test_load_backbone_reads_released_layout_and_infers_variant(tmp_path, dataset, arch):
    m = M.Model(feature_dim=32, arch=arch, maxpool=data.SPECS[dataset].maxpool)
    path = save(m.state_dict(), tmp_path)
    backbone, emb, found = C.load_backbone(path, dataset)
    assert found == arch and emb == nets.EMBEDDING_SIZE[arch]
    for (k, v), (k2, v2) in zip(m.f.state_dict().items(), backbone.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_released_checkpoint_profiled_in_place_by_thop_loads(tmp_path, arch):
    """The reference ran thop.profile on its model before training and saved model.state_dict():
    thop's total_ops/total_params counters stay on every module it has no rule for."""
    thop = pytest.importorskip('thop')
    m = M.Model(feature_dim=16, arch=arch, maxpool=True)
    thop.profile(m, inputs=(torch.randn(1, 3, 64, 64),), verbose=False)
    state = m.state_dict()
    assert 'total_ops' in state and 'f.4.0.total_params' in state      # what the released files hold
    backbone, _, found = C.load_backbone(save(state, tmp_path), 'stl10')
    assert found == arch
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, state[f'f.{k}'])


def test_every_key_of_a_small_checkpoint_is_checked(tmp_path):
    state = M.Model(feature_dim=8, arch='resnet18', maxpool=False).state_dict()
    with pytest.raises(C.CheckpointError, match=r'unexpected keys: junk\.weight'):
        C.load_backbone(save({**state, 'junk.weight': torch.zeros(3)}, tmp_path), 'cifar10')
    bad_head = {**state, 'g.0.weight': torch.zeros(512, 99)}
    with pytest.raises(C.CheckpointError, match=r'g\.0\.weight: checkpoint \(512, 99\) vs model \(512, 512\)'):
        C.load_backbone(save(bad_head, tmp_path), 'cifar10')
    no_bn = {k: v for k, v in state.items() if not k.startswith('g.1.')}
    with pytest.raises(C.CheckpointError, match=r'missing keys: g\.1\.bias'):
        C.load_backbone(save(no_bn, tmp_path), 'cifar10')
    # a baseline's MLP projector (e.g. INTL 2048-2048-2048 here 64-64-32) and a backbone-only file load
    mlp_head = M.Model(arch='resnet18', projector='64-64-32', maxpool=False).state_dict()
    C.load_backbone(save(mlp_head, tmp_path), 'cifar10')
    C.load_backbone(save({k: v for k, v in state.items() if k.startswith('f.')}, tmp_path), 'cifar10')


def test_full_imagenet_checkpoint_heads_are_checked(tmp_path):
    model = M.ImageNetModel(projector='64-64-32')
    official = {f'module.{k}': v for k, v in model.state_dict().items()}
    official.update({f'module.bn.{k}': v for k, v in torch.nn.BatchNorm1d(32, affine=False).state_dict().items()})
    backbone, emb, _ = C.load_backbone(save({'epoch': 1, 'model': official}, tmp_path), 'imagenet')
    assert emb == 2048 and torch.equal(backbone.state_dict()['conv1.weight'], model.backbone.conv1.weight)
    with pytest.raises(C.CheckpointError, match=r'unexpected keys: module_extra\.w'):
        C.load_backbone(save({'model': {**official, 'module.module_extra.w': torch.zeros(1)}}, tmp_path), 'imagenet')
    broken = {k: v for k, v in official.items() if k != 'module.projector.3.weight'}
    with pytest.raises(C.CheckpointError, match=r'projector'):
        C.load_backbone(save({'model': broken}, tmp_path), 'imagenet')


@pytest.mark.slow
def test_load_backbone_accepts_training_state_and_torchvision_formats(tmp_path):
    m = M.Model(feature_dim=32, arch='resnet18', maxpool=False)
    backbone, _, _ = C.load_backbone(save({'epoch': 3, 'model': m.state_dict()}, tmp_path), 'cifar10')
    assert torch.equal(backbone.state_dict()['0.weight'], m.f[0].weight)
    tv = torchvision.models.resnet50()
    plain = {k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}
    for obj in (plain, tv.state_dict(), {'model': {f'module.backbone.{k}': v for k, v in plain.items()}}):
        backbone, emb, arch = C.load_backbone(save(obj, tmp_path), 'imagenet')
        assert arch == 'resnet50' and emb == 2048
        assert torch.equal(backbone.state_dict()['layer4.2.bn3.running_var'], plain['layer4.2.bn3.running_var'])


def test_load_backbone_errors_name_the_problem(tmp_path):
    cifar18 = M.Model(feature_dim=8, arch='resnet18', maxpool=False).state_dict()
    with pytest.raises(C.CheckpointError, match='resnet18 backbone but --arch resnet50'):
        C.load_backbone(save(cifar18, tmp_path), 'cifar10', 'resnet50')
    with pytest.raises(C.CheckpointError, match='not for --dataset stl10'):
        C.load_backbone(save(cifar18, tmp_path), 'stl10')
    broken = dict(cifar18)
    del broken['f.4.1.bn2.weight']
    broken['f.9.extra'] = torch.zeros(1)
    with pytest.raises(C.CheckpointError, match=r'missing keys: f\.4\.1\.bn2\.weight.*unexpected keys: f\.9\.extra'):
        C.load_backbone(save(broken, tmp_path), 'cifar10')
    with pytest.raises(C.CheckpointError, match='neither a small-data Model'):
        C.load_backbone(save({'encoder.weight': torch.zeros(2)}, tmp_path), 'cifar10')
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint at all')
    with pytest.raises(C.CheckpointError, match='not a readable PyTorch checkpoint'):
        C.load_backbone(str(junk), 'cifar10')
    with pytest.raises(C.CheckpointError, match='not found'):
        C.load_backbone(str(tmp_path / 'absent.pth'), 'cifar10')


class _Pickled:
    """Stands in for any Python object a foreign checkpoint might pickle."""


def test_checkpoints_are_read_weights_only(tmp_path, monkeypatch):
    cifar18 = M.Model(128, 'resnet18', False).state_dict()
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'model': cifar18, 'args': _Pickled()}, unsafe)
    monkeypatch.delenv(C.TRUST_ENV, raising=False)
    with pytest.raises(C.CheckpointError, match=rf'pickles test_model\._Pickled.*{C.TRUST_ENV}=1'):
        C.load_backbone(str(unsafe), 'cifar10')
    monkeypatch.setenv(C.TRUST_ENV, '1')  # the user vouches for the file
    assert C.load_backbone(str(unsafe), 'cifar10') is not None


def test_hub_url_weights_are_downloaded_once_and_read_weights_only(tmp_path, monkeypatch):
    import hubconf
    state = M.Model(128, 'resnet18', False).state_dict()
    calls = []

    def fake_download(url, dst):
        calls.append(url)
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    url = 'https://example.org/releases/abc_model.pth'
    for _ in range(2):
        got = hubconf._load_state(url)
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert calls == [url] and (tmp_path / 'hub' / 'checkpoints' / 'abc_model.pth').is_file()

    monkeypatch.delenv(C.TRUST_ENV, raising=False)
    torch.save({'model': state, 'extra': _Pickled()}, tmp_path / 'hub' / 'checkpoints' / 'abc_model.pth')
    with pytest.raises(C.CheckpointError, match='pickles'):
        hubconf._load_state(url)
