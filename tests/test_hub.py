"""torch.hub entries: offline errors, files fetched elsewhere, refused weights, and isolation from
the user's own modules (hubconf imports only torch, torchvision and mixbt.*)."""
import os
import subprocess
import sys
import textwrap
import urllib.error

import pytest
import torch
import torchvision

import hubconf
import model as M
from mixbt.checkpoints import CheckpointError
from mixbt.errors import MixBTError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_R18 = hubconf.RELEASED[('resnet18', 'cifar10')][0]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network: torch.hub's URL opener fails as it does without a name server."""
    opened = []

    def fail(request, *args, **kwargs):
        opened.append(request.full_url)
        raise urllib.error.URLError(OSError(-3, 'Temporary failure in name resolution'))
    monkeypatch.setattr(torch.hub, 'urlopen', fail)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(hubconf, 'LOCAL_CHECKPOINTS', str(tmp_path / 'checkpoints'), raising=False)
    return opened


def test_offline_the_released_weights_fail_in_one_line_with_the_ways_out(tmp_path, offline):
    url = hubconf.RELEASE_URL + CIFAR10_R18
    with pytest.raises(MixBTError) as e:
        hubconf.resnet18(dataset='cifar10')
    message = str(e.value)
    assert offline == [url] and '\n' not in message
    assert message.startswith(f'could not download {url} (URLError: [Errno -3] Temporary failure in name resolution)')
    assert 'weights=<a local copy of the file>' in message
    assert f'bash scripts/download_checkpoints.sh {CIFAR10_R18}) and put it in {tmp_path / "checkpoints"}/' in message
    assert os.listdir(tmp_path / 'hub' / 'checkpoints') == []                     # no partial file left behind


def test_the_official_barlow_twins_file_is_named_as_the_download_script_names_it(offline):
    with pytest.raises(MixBTError, match=r'dl\.fbaipublicfiles\.com/.*download_checkpoints\.sh '
                                         r'barlowtwins_official_resnet50\.pth\)'):
        hubconf.barlowtwins_resnet50()


def test_a_released_file_fetched_elsewhere_is_used_offline(tmp_path, offline):
    state = M.Model(32, 'resnet18', False).state_dict()
    (tmp_path / 'checkpoints').mkdir()
    torch.save(state, tmp_path / 'checkpoints' / CIFAR10_R18)
    net = hubconf.resnet18(dataset='cifar10')
    assert offline == [] and torch.equal(net.backbone[0].weight, state['f.0.weight'])
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_hub_entries_refuse_weights_that_are_not_finite(tmp_path, monkeypatch):
    state = M.Model(32, 'resnet18', False).state_dict()
    state['f.0.weight'][0, 0, 0, 0] = float('nan')
    path = tmp_path / 'mine.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf'{path}: f\.0\.weight holds NaN'):
        torch.hub.load(ROOT, 'resnet18', source='local', dataset='cifar10', weights=str(path))
    official = torchvision.models.resnet50().state_dict()
    official = {k: v for k, v in official.items() if not k.startswith('fc.')}
    official['layer1.0.bn1.running_var'][:] = float('inf')
    monkeypatch.setattr(hubconf, '_load_state', lambda weights: official)
    with pytest.raises(CheckpointError, match=r'resnet50\.pth: layer1\.0\.bn1\.running_var holds inf'):
        hubconf.resnet50()


USER_SCRIPT = '''
import sys
sys.path.insert(0, '.')
import data, model, utils                      # the user's own modules, named as many projects name theirs
mine = {name: sys.modules[name] for name in ('data', 'model', 'utils')}
import torch
torch.save({'f.' + k: v for k, v in torch.hub.load(REPO, 'resnet18', source='local', pretrained=False)
            .backbone.state_dict().items()}, 'weights.pth')
net = torch.hub.load(REPO, 'resnet18', source='local', dataset='cifar10', weights='weights.pth')
assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
assert all(sys.modules[name] is module for name, module in mine.items()), 'hubconf replaced a user module'
assert (data.WHOSE, model.WHOSE, utils.WHOSE) == ('user', 'user', 'user')
assert REPO not in sys.path
print('isolated')
'''


@pytest.mark.slow
def test_hub_load_leaves_the_users_own_modules_alone_from_any_folder(tmp_path):
    for name in ('data', 'model', 'utils'):
        (tmp_path / f'{name}.py').write_text("WHOSE = 'user'\n")
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run([sys.executable, '-c', f'REPO = {ROOT!r}\n' + textwrap.dedent(USER_SCRIPT)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith('isolated')
