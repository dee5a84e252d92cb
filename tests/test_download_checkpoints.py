"""scripts/download_checkpoints.sh with a stand-in curl or wget: only a complete release file is accepted,
an interrupted download is continued, the manifest's size and sha256 are checked, and without network it
stops at once and says what is present, what is missing and where it goes. Nothing is downloaded."""
import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import hubconf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SH = shutil.which('dash') or '/bin/sh'  # the original README's `sh script.sh`: dash on Debian
RELEASED_FILES = [name for name, _, _ in hubconf.RELEASED.values()] + ['barlowtwins_official_resnet50.pth']
STL10 = 'i7det4xq_0.0078125_1024_256_stl10_model.pth'
FAKE_DOWNLOADER = r'''#!/bin/bash
# A stand-in curl/wget: serves $FAKE_SRC. $FAKE_PLAN lists what each call does: ok, offline (nothing, fails),
# cut (half of what is left, fails), short (half of what is left, succeeds). Calls are logged to $FAKE_LOG.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
call=$(wc -l < "$FAKE_LOG")
plan=$(echo "${FAKE_PLAN:-ok}" | cut -d, -f"$call"); plan=${plan:-ok}
out= resume=0
while [ $# -gt 0 ]; do case $1 in -o|-O) out=$2; shift;; -C|-c) resume=1;; esac; shift; done
if [ "$(basename "$0")" = curl ]; then offline=6 cut=18 refused=22; else offline=4 cut=4 refused=8; fi
[ "$plan" = offline ] && exit $offline
offset=0
if [ $resume = 1 ] && [ -f "$out" ]; then offset=$(wc -c < "$out"); else : > "$out"; fi
total=$(wc -c < "$FAKE_SRC")
[ "$offset" -ge "$total" ] && exit $refused
left=$((total - offset))
case $plan in cut|short) left=$((left / 2));; esac
tail -c +$((offset + 1)) "$FAKE_SRC" | head -c "$left" >> "$out"
[ "$plan" = cut ] && exit $cut
exit 0
'''


@pytest.fixture(scope='module')
def checkpoint_files(tmp_path_factory):
    """A small valid torch.save file, a truncated copy of it, and another valid one."""
    root = tmp_path_factory.mktemp('files')
    torch.save({'f.weight': torch.arange(20000.0).reshape(200, 100)}, root / 'good.pth')
    data = (root / 'good.pth').read_bytes()
    (root / 'truncated.pth').write_bytes(data[:len(data) // 2])
    torch.save({'f.weight': torch.zeros(3)}, root / 'other.pth')
    return root


def download(tmp_path, names, plan='ok', src=None, tool='curl', root=REPO, shell='bash'):
    """Run the download script with a stand-in curl (or wget alone) serving src. Returns (process, calls).
    Its checks run in this python (PYTHON): on a bare PATH, python3 may be a wrapper that needs more of
    PATH (pyenv's shim)."""
    bin_dir, log = tmp_path / 'fakebin', tmp_path / 'downloads.log'
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / tool).write_text(FAKE_DOWNLOADER)
    (bin_dir / 'getent').write_text('#!/bin/sh\nexit 2\n')  # no name resolves: as offline
    for fake in (tool, 'getent'):
        (bin_dir / fake).chmod(0o755)
    log.unlink(missing_ok=True)
    path = f'{bin_dir}:{os.environ["PATH"]}'
    if tool == 'wget':  # a PATH without curl: the script's tools, linked one by one
        for cmd in ('bash', 'dirname', 'basename', 'grep', 'awk', 'mkdir', 'mv', 'rm', 'wc', 'tr', 'cat', 'tail',
                    'head', 'cut'):
            (bin_dir / cmd).unlink(missing_ok=True)
            (bin_dir / cmd).symlink_to(shutil.which(cmd))
        path = str(bin_dir)
    env = {**os.environ, 'PATH': path, 'PYTHON': sys.executable, 'CHECKPOINT_DIR': str(tmp_path / 'ckpt'),
           'FAKE_PLAN': plan, 'FAKE_LOG': str(log), 'FAKE_SRC': str(src or tmp_path / 'nothing')}
    proc = subprocess.run([shell, os.path.join(root, 'scripts', 'download_checkpoints.sh'), *names], env=env,
                          capture_output=True, text=True, timeout=60)
    return proc, (log.read_text().splitlines() if log.exists() else [])


def sha256(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_download_accepts_a_complete_checkpoint_and_prints_the_sha256_to_record(checkpoint_files, tmp_path):
    (tmp_path / 'ckpt').mkdir()
    shutil.copy(checkpoint_files / 'good.pth', tmp_path / 'ckpt' / STL10)
    proc, calls = download(tmp_path, [STL10], plan='offline')
    assert proc.returncode == 0 and calls == [], proc.stderr
    size = os.path.getsize(checkpoint_files / 'good.pth')
    assert f'have {STL10}' in proc.stdout and f'{size} bytes, sha256 {sha256(checkpoint_files / "good.pth")}' in proc.stdout


def test_download_never_accepts_a_truncated_file_and_continues_it(checkpoint_files, tmp_path):
    (tmp_path / 'ckpt').mkdir()
    shutil.copy(checkpoint_files / 'truncated.pth', tmp_path / 'ckpt' / STL10)
    proc, calls = download(tmp_path, [STL10], plan='offline', shell=SH)  # no network: an error, never "have"
    assert proc.returncode == 1 and f'have {STL10}' not in proc.stdout
    assert 'not a complete PyTorch zip checkpoint' in proc.stderr and 'could not download' in proc.stderr
    assert 'cannot resolve github.com: no network?' in proc.stderr and f'they go in {tmp_path / "ckpt"}/' in proc.stderr
    assert 'run this script again to continue it' in proc.stderr
    assert not (tmp_path / 'ckpt' / STL10).exists()  # the linear scripts now say it is missing
    assert (tmp_path / 'ckpt' / f'{STL10}.part').read_bytes() == (checkpoint_files / 'truncated.pth').read_bytes()
    proc, calls = download(tmp_path, [STL10], src=checkpoint_files / 'good.pth')  # the network is back
    assert proc.returncode == 0 and f'fetched {STL10}' in proc.stdout, proc.stderr
    assert len(calls) == 1 and ' -C - ' in calls[0]  # continued, not fetched again
    assert sha256(tmp_path / 'ckpt' / STL10) == sha256(checkpoint_files / 'good.pth')
    assert not list((tmp_path / 'ckpt').glob('*.part'))


@pytest.mark.parametrize('tool', ['curl', 'wget'])
def test_download_without_network_stops_at_once_and_says_what_is_where(tool, checkpoint_files, tmp_path):
    """Offline, every file was tried 3 times with progress meters and "Problem: timeout". Now one try in
    all, the cause named, a summary of what is present and missing and where the missing files go, and
    nothing left behind."""
    (tmp_path / 'ckpt').mkdir()
    shutil.copy(checkpoint_files / 'good.pth', tmp_path / 'ckpt' / STL10)
    proc, calls = download(tmp_path, [], plan='offline', tool=tool)
    assert proc.returncode == 1 and len(calls) == 1, (calls, proc.stderr)
    assert '--retry' not in calls[0] and (tool == 'wget' or ' -sS' in calls[0])  # no retries, no meter in a log
    assert proc.stderr.count('cannot resolve github.com: no network?') == 2  # the error, and the summary
    assert f'have {STL10}' in proc.stdout and f'1 of {len(RELEASED_FILES)} checkpoints present' in proc.stdout
    missing = proc.stderr.split('missing:\n')[1].split('The others')[0].split()
    assert sorted(missing) == sorted(set(RELEASED_FILES) - {STL10})
    assert 'The others were not tried' in proc.stderr and f'they go in {tmp_path / "ckpt"}/' in proc.stderr
    assert 'run this script again to check them' in proc.stderr and 'checkpoints/README.md' in proc.stderr
    assert os.listdir(tmp_path / 'ckpt') == [STL10]


@pytest.mark.parametrize('tool', ['curl', 'wget'])
def test_download_continues_an_interrupted_or_short_download(tool, checkpoint_files, tmp_path):
    """Cut off (an error), then a transfer that ends early without one: each continued where it stopped."""
    proc, calls = download(tmp_path, [STL10], plan='cut,short,ok', src=checkpoint_files / 'good.pth', tool=tool)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 3 and [(' -C - ' in c) or (' -c ' in c) for c in calls] == [False, True, True]
    assert sha256(tmp_path / 'ckpt' / STL10) == sha256(checkpoint_files / 'good.pth')


def test_download_fetches_again_what_cannot_be_continued(checkpoint_files, tmp_path):
    """A complete file that is not the release file (here: another checkpoint) cannot be continued: the server
    refuses the range, and the file is fetched again from the start."""
    (tmp_path / 'ckpt').mkdir()
    shutil.copy(checkpoint_files / 'good.pth', tmp_path / 'ckpt' / f'{STL10}.part')
    with open(tmp_path / 'ckpt' / f'{STL10}.part', 'ab') as f:
        f.write(b'garbage')
    proc, calls = download(tmp_path, [STL10], src=checkpoint_files / 'good.pth')
    assert proc.returncode == 0 and 'fetching it again from the start' in proc.stderr, proc.stderr
    assert [' -C - ' in c for c in calls] == [True, False]
    assert sha256(tmp_path / 'ckpt' / STL10) == sha256(checkpoint_files / 'good.pth')


@pytest.fixture
def repo_copy(tmp_path):
    """The download script with its checkpoint list and a manifest this test can edit."""
    root = tmp_path / 'repo'
    for path in ('scripts/download_checkpoints.sh', 'checkpoints/README.md', 'checkpoints/manifest.txt'):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(REPO, path), root / path)
    return root


def set_manifest(root, name, size, sha):
    path = root / 'checkpoints' / 'manifest.txt'
    text = re.sub(rf'^{re.escape(name)} .*$', f'{name} {size} {sha}', path.read_text(), flags=re.M)
    path.write_text(text)


@pytest.mark.parametrize('case', ['size and sha256', 'sha256 prefix', 'wrong sha256', 'wrong size'])
def test_download_checks_the_size_and_sha256_that_the_manifest_records(case, checkpoint_files, repo_copy, tmp_path):
    good = checkpoint_files / 'good.pth'
    size, sha = os.path.getsize(good), sha256(good)
    recorded = {'size and sha256': (size, sha), 'sha256 prefix': ('unknown', sha[:10]),
                'wrong sha256': (size, sha256(checkpoint_files / 'other.pth')), 'wrong size': (size + 1, 'unknown')}[case]
    set_manifest(repo_copy, STL10, *recorded)
    (tmp_path / 'ckpt').mkdir()
    shutil.copy(good, tmp_path / 'ckpt' / STL10)
    proc, calls = download(tmp_path, [STL10], src=good, root=repo_copy)
    if case.startswith('wrong'):  # neither the file here nor the one downloaded is accepted
        assert proc.returncode == 1 and len(calls) >= 1, proc.stderr
        assert (f'sha256 {sha}, the release file has' if case == 'wrong sha256' else
                f'{size} bytes, the release file has {size + 1}') in proc.stderr, proc.stderr
        assert 'error:' in proc.stderr and not (tmp_path / 'ckpt' / STL10).exists()
    else:
        assert proc.returncode == 0 and calls == [] and 'as checkpoints/manifest.txt records' in proc.stdout


def test_download_rejects_unknown_names_and_lists_the_known_ones(tmp_path):
    """Checked before anything is fetched: no network needed, nothing written."""
    for shell in ('bash', SH):
        proc = subprocess.run([shell, os.path.join(REPO, 'scripts', 'download_checkpoints.sh'), RELEASED_FILES[0],
                               'nosuch.pth'], capture_output=True, text=True, timeout=60,
                              env={**os.environ, 'CHECKPOINT_DIR': str(tmp_path / 'ckpt')})
        assert proc.returncode == 1 and "unknown checkpoint 'nosuch.pth'" in proc.stderr
        assert all(name in proc.stderr for name in RELEASED_FILES)
        assert 'fetching' not in proc.stdout and not (tmp_path / 'ckpt').exists()


def test_no_early_quitting_reader_at_the_end_of_a_pipe_under_pipefail():
    """`printf ... | grep -q NAME` under pipefail fails now and then: grep quits at the first match and printf
    dies of SIGPIPE, so a released name was sometimes called unknown, or a requested file skipped."""
    import glob
    scripts = glob.glob('**/*.sh', root_dir=REPO, recursive=True) + ['.ci/run']
    for script in scripts:
        text = open(os.path.join(REPO, script)).read()
        if 'pipefail' in text:
            assert not re.search(r'\|\s*grep -[a-zA-Z]*q', text), script
