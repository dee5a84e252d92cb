"""The shared flags (mixbt/cli_args.py): declared once, the same in every entry script that takes
them, a script's own default or help on top; their range checks give one line each."""
import argparse
import math

import pytest

from mixbt import cli_args, config
from mixbt.errors import MixBTError


def option(parser, name):
    return next(a for a in parser._actions if f'--{name}' in a.option_strings)


def test_a_script_overrides_only_what_differs():
    p = cli_args.parser('x')
    cli_args.add_common(p, 'results_dir', 'probe_bn', results_dir='elsewhere', probe_bn=dict(help='mine'))
    assert option(p, 'results_dir').default == 'elsewhere'
    assert option(p, 'results_dir').help == cli_args.COMMON['results_dir'][1]['help']
    assert option(p, 'checkpoint-dir') is option(p, 'results_dir')  # the official spelling too
    assert option(p, 'probe_bn').help == 'mine' and option(p, 'probe_bn').default == 'train'


def test_an_override_of_a_flag_not_added_is_a_mistake_in_the_script():
    with pytest.raises(TypeError, match='results_dir'):
        cli_args.add_common(cli_args.parser('x'), 'seed', results_dir='elsewhere')


def test_main_py_takes_the_shared_declarations():
    p = config.build_parser()
    for name in ('data_root', 'seed', 'workers', 'gpu', 'download', 'subset', 'skip_bad_images'):
        assert option(p, name).default == cli_args.COMMON[name][1].get('default', False)
        assert option(p, name).help == cli_args.COMMON[name][1]['help']


@pytest.mark.parametrize('values, message', [
    (dict(epochs=0), '--epochs 0 must be at least 1'),
    (dict(workers=-1), '--workers -1 must be >= 0'),
    (dict(lr=0.0), '--lr 0.0 must be a positive number'),
    (dict(lr=math.inf), '--lr inf must be a positive number'),
    (dict(lr=math.nan), '--lr nan must be a positive number'),
])
def test_range_checks_say_which_flag_and_why(values, message):
    args = argparse.Namespace(**{'epochs': 1, 'workers': 0, 'lr': 0.1, **values})
    with pytest.raises(MixBTError) as e:
        cli_args.check_ranges(args, at_least_1=('epochs',), non_negative=('workers',), positive=('lr',))
    assert str(e.value) == message


def test_a_flag_left_unset_is_not_checked():
    cli_args.check_ranges(argparse.Namespace(epochs=None, lr=None), at_least_1=('epochs',), positive=('lr',))
