"""A data set's row states its recipe (data.Spec: protocol, optimizer, lr_shed, projector,
ref_world_size): the configuration and the model follow the row, never the data set's name or
whether it is held in memory. A new ImageNet-style row with its own recipe gets that recipe."""
import dataclasses

import pytest

from mixbt import config
from mixbt import data as datasets
from mixbt import readers
import model as models


@pytest.fixture
def subset_row(monkeypatch):
    """'imagenet_subset': an ImageNet-style image folder of 100 classes with a recipe of its own."""
    row = dataclasses.replace(datasets.SPECS['imagenet'], num_classes=100, optimizer='sgd', lr_shed='cosine',
                              projector='2048-2048', ref_world_size=0,
                              source=readers.Source('imagenet100/{train,val}/<wnid>/*.JPEG', 'https://example.org/in100'))
    monkeypatch.setitem(datasets.SPECS, 'imagenet_subset', row)
    monkeypatch.setattr(datasets, 'DATASETS', (*datasets.DATASETS, 'imagenet_subset'))
    return row


def test_the_imagenet_row_states_the_original_imagenet_recipe():
    args = config.get_args(['--dataset', 'imagenet', '--method', 'mixbt'])
    assert (args.optimizer, args.lr_shed, args.projector) == ('lars', 'cosine_exact', '8192-8192-8192')
    assert (args.bt_loss, args.ref_world_size) == ('imagenet_reference', 8)


def test_a_small_row_keeps_the_small_data_recipe():
    args = config.get_args(['--dataset', 'cifar10', '--method', 'mixbt'])
    assert (args.optimizer, args.lr_shed, args.projector) == ('adam', 'step', None)
    assert (args.bt_loss, args.ref_world_size) == ('global', 1)


def test_a_new_row_gets_its_own_recipe_not_imagenets(subset_row):
    args = config.get_args(['--dataset', 'imagenet_subset', '--method', 'mixbt', '--arch', 'resnet18'])
    assert (args.optimizer, args.lr_shed, args.projector) == ('sgd', 'cosine', '2048-2048')
    assert (args.bt_loss, args.ref_world_size, args.precision) == ('global', 1, 'auto')
    net = models.build_model(args)
    assert net.projector[-1].out_features == 2048  # the row's projector, not ImageNet's 8192


def test_flags_still_override_the_row(subset_row):
    args = config.get_args(['--dataset', 'imagenet_subset', '--method', 'mixbt', '--optimizer', 'lars',
                            '--lr_shed', 'step', '--projector', '512-512'])
    assert (args.optimizer, args.lr_shed, args.projector) == ('lars', 'step', '512-512')


def test_a_new_image_folder_row_names_its_own_layout_when_missing(subset_row, tmp_path):
    with pytest.raises(readers.DatasetNotFound) as e:
        datasets.image_folder('imagenet_subset', str(tmp_path), 'train')
    assert 'imagenet100/{train,val}' in str(e.value) and 'https://example.org/in100' in str(e.value)


def test_a_missing_image_folder_is_named_before_any_run_folder_is_made(tmp_path, capsys):
    import main
    with pytest.raises(readers.DatasetNotFound, match='no folder .*nowhere.*train'):
        main.main(['--dataset', 'imagenet', '--data_root', str(tmp_path / 'nowhere'), '--arch', 'resnet18',
                   '--gpu', '-1', '--results_dir', str(tmp_path / 'results')])
    assert not (tmp_path / 'results').exists() and 'Run folder' not in capsys.readouterr().out
