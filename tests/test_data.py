"""Loading CIFAR-10 from disk: every source format, the cache, and what bad input gets.

The data-file code is one block, identical in every script (tests/test_siblings.py): tested once,
on airbench94.py. tests/test_main.py has the command line's messages for missing or corrupt data."""
import os
import pickle

import pytest
import torch

from conftest import file_snapshot, load_script
from support import cifar_files


@pytest.fixture
def module():
    return load_script('airbench94.py')


def test_folder_format_loads_with_official_layout(module, cifar_dir):
    data = module.load_cifar10(cifar_dir)
    images, labels = cifar_files.learnable_images(1280, seed=1)
    assert torch.equal(data['train_images'], torch.from_numpy(images).permute(0, 3, 1, 2))
    assert data['train_labels'].tolist() == labels.tolist()
    assert data['test_images'].shape == (500, 3, 32, 32) and data['test_images'].dtype == torch.uint8


def test_cache_is_written_then_preferred_over_the_folder(module, cifar_dir):
    first = module.load_cifar10(cifar_dir)
    cache = os.path.join(cifar_dir, module.CACHE_FILE)
    assert os.path.exists(cache)
    os.remove(os.path.join(cifar_dir, 'cifar-10-batches-py', 'data_batch_1'))  # the cache alone suffices now
    second = module.load_cifar10(cifar_dir)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_tarball_is_md5_checked_then_read_without_extracting(module, tmp_path, cifar_source, monkeypatch):
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    tarball, md5 = cifar_files.write_tarball(str(data_dir), os.path.join(cifar_source, 'cifar-10-batches-py'))
    monkeypatch.setattr(module, 'CIFAR10_TARBALL_MD5', md5)  # our tarball stands in for the official one
    data = module.load_cifar10(str(data_dir))
    from_folder = module.load_cifar10(cifar_source)
    assert all(torch.equal(data[k], from_folder[k]) for k in data)
    assert sorted(os.listdir(data_dir)) == ['cifar-10-python.tar.gz', module.CACHE_FILE]


def test_tarball_with_wrong_md5_is_refused_and_kept(module, tmp_path, cifar_source):
    tarball, md5 = cifar_files.write_tarball(str(tmp_path), os.path.join(cifar_source, 'cifar-10-batches-py'))
    before = file_snapshot(str(tmp_path))
    with pytest.raises(module.DataError, match='cifar-10-python.tar.gz has MD5 %s, not the official' % md5):
        module.load_cifar10(str(tmp_path))
    assert file_snapshot(str(tmp_path)) == before  # nothing extracted, nothing deleted


def test_truncated_tarball_with_matching_md5_gets_a_clear_error(module, tmp_path, cifar_source, monkeypatch):
    tarball, _ = cifar_files.write_tarball(str(tmp_path), os.path.join(cifar_source, 'cifar-10-batches-py'))
    blob = open(tarball, 'rb').read()
    open(tarball, 'wb').write(blob[:len(blob) // 2])
    monkeypatch.setattr(module, 'CIFAR10_TARBALL_MD5', cifar_files.hashlib.md5(blob[:len(blob) // 2]).hexdigest())
    with pytest.raises(module.DataError, match='could not read .*cifar-10-python.tar.gz'):
        module.load_cifar10(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['cifar-10-python.tar.gz']  # nothing written


def test_truncated_batch_file_is_named(module, cifar_dir):
    path = os.path.join(cifar_dir, 'cifar-10-batches-py', 'data_batch_3')
    blob = open(path, 'rb').read()
    open(path, 'wb').write(blob[:len(blob) // 3])
    with pytest.raises(module.DataError, match='data_batch_3 in .*cifar-10-batches-py: missing or not a CIFAR-10 batch'):
        module.load_cifar10(cifar_dir)
    assert open(path, 'rb').read() == blob[:len(blob) // 3]
    assert not os.path.exists(os.path.join(cifar_dir, module.CACHE_FILE))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_crafted_pickle_cannot_run_code(module, cifar_dir, monkeypatch):
    monkeypatch.chdir(cifar_dir)
    with open(os.path.join(cifar_dir, 'cifar-10-batches-py', 'test_batch'), 'wb') as f:
        pickle.dump({'data': _RunsCode(), 'labels': []}, f, protocol=2)
    with pytest.raises(module.DataError, match='test_batch in .*: missing or not a CIFAR-10 batch file.*forbidden global'):
        module.load_cifar10(cifar_dir)
    assert not os.path.exists(os.path.join(cifar_dir, 'pwned'))


def test_labels_outside_0_to_9_are_refused(module, cifar_dir):
    images, _ = cifar_files.learnable_images(100, seed=3)
    with open(os.path.join(cifar_dir, 'cifar-10-batches-py', 'test_batch'), 'wb') as f:
        f.write(cifar_files.batch_pickle(images, [10] * 100, 'testing batch 1 of 1'))
    with pytest.raises(module.DataError, match='the test split is malformed'):
        module.load_cifar10(cifar_dir)


def test_missing_batch_file_is_named(module, cifar_dir):
    os.remove(os.path.join(cifar_dir, 'cifar-10-batches-py', 'data_batch_5'))
    with pytest.raises(module.DataError, match='data_batch_5 in .*: missing or not a CIFAR-10 batch file'):
        module.load_cifar10(cifar_dir)


@pytest.mark.parametrize('damage', [b'not a torch file', b''], ids=['garbage', 'empty'])
def test_corrupt_cache_is_rebuilt_from_the_batches(module, cifar_dir, damage, capsys):
    expected = module.load_cifar10(cifar_dir)
    cache = os.path.join(cifar_dir, module.CACHE_FILE)
    open(cache, 'wb').write(damage)
    rebuilt = module.load_cifar10(cifar_dir)
    assert 'rebuilding the unreadable cache' in capsys.readouterr().err
    assert all(torch.equal(expected[k], rebuilt[k]) for k in expected)
    assert torch.load(cache, weights_only=True).keys() == expected.keys()


def test_cache_with_wrong_shapes_is_rebuilt(module, cifar_dir):
    expected = module.load_cifar10(cifar_dir)
    cache = os.path.join(cifar_dir, module.CACHE_FILE)
    torch.save(dict(expected, train_images=expected['train_images'][:, :2]), cache)
    assert torch.equal(module.load_cifar10(cifar_dir)['train_images'], expected['train_images'])
