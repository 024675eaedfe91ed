"""`pip install .`: the wheel holds the scripts, the `airbench` package and the harness inside it; installed
into a fresh virtual environment, the published airbench API (0.1.8's names, signatures and keywords) runs
from another directory on small data in the official format, over the scripts it imports."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, SCRIPTS
from support import cifar_files

# The examples with keywords that make each run a second or two: one step of 1024 images per epoch
# over 1280 training images, tiny widths. Prints one JSON object of what it saw.
EXAMPLES = r'''
import copy, inspect, json, os, sys, traceback, warnings
import torch
import airbench, airbench94, airbench94_progressive, airbench95

other, empty = sys.argv[1:]
seen = dict(files=[airbench.__file__, airbench94.__file__])
small = dict(epochs=1, widths={'block1': 16, 'block2': 32, 'block3': 32}, tta_level=0, verbose=False)
published = copy.deepcopy(airbench94.hyp)


def weights(net):
    return [t.clone() for t in net.state_dict().values()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def error(call):
    """(type, message, whether a frame of a script's file is in its traceback) of what call() raises."""
    try:
        call()
    except Exception as e:
        frames = [f.filename for f in traceback.extract_tb(e.__traceback__)]
        return type(e).__name__, str(e), any(os.path.basename(f).startswith('airbench9') for f in frames)
    return None


def warned(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = call()
    return result, [str(w.message) for w in caught]


seen['warmup_seconds'] = airbench.warmup94(**small)
net = airbench.train94(**small)
seen['default_net'] = type(net).__module__ + '.' + type(net).__name__

# 6 steps of 256 images, past the lookahead's first update at step 5 (before it, the final weights are the initial)
few = dict(small, epochs=1.2)
script_loader = airbench94.CifarLoader('cifar10', True, 256, airbench94.hyp['aug'])
first = weights(airbench.train94(script_loader, seed=0, **few))
hyp = copy.deepcopy(airbench94.hyp)
hyp['opt'].update(train_epochs=few['epochs'], batch_size=256)
hyp['net'].update(widths=few['widths'], tta_level=0)
result = airbench94.train(hyp, script_loader, airbench94.CifarLoader('cifar10', False, 2000), seed=0, verbose=False)
seen['equals_the_scripts_train'] = same(first, weights(result['net']))
net = airbench.train94(script_loader, label_smoothing=0, seed=0, **few)
seen['override_changes_the_run'] = not same(first, weights(net))
seen['hyp_unchanged'] = airbench94.hyp == published
seen['next_call_is_the_published_method'] = same(first, weights(airbench.train94(script_loader, seed=0, **few)))

loader = airbench.CifarLoader('cifar10', train=True, batch_size=1000)
logits = airbench.infer(net, loader)
test_loader = airbench.CifarLoader('cifar10', train=False)
seen['infer'] = [list(logits.shape), len(loader.images)]
seen['evaluate'] = airbench.evaluate(net, test_loader, tta_level=2)

os.chdir(empty)  # a loader from another folder: nothing may be read from or downloaded to ./cifar10
train_loader = airbench.CifarLoader(os.path.join(other, 'cifar10'), train=True,
                                    aug=dict(flip=True, translate=4, cutout=16), batch_size=500)
mask = train_loader.labels < 6
train_loader.images, train_loader.labels = train_loader.images[mask], train_loader.labels[mask]
seen['subset'] = [len(train_loader), int(mask.sum())]
seen['other_folder_net'] = type(airbench.train94(train_loader, **small)).__name__
seen['cwd_after'] = os.listdir('.')
os.chdir('..')

train_loader = airbench.CifarLoader('cifar10', train=True, batch_size=1024, aug=dict(flip=True, translate=2))
mask = train_loader.labels < 9
train_loader.images, train_loader.labels = train_loader.images[mask], train_loader.labels[mask]
seen['longer_schedule_net'] = type(airbench.train94(train_loader, epochs=2, widths=small['widths'],
                                                    verbose=False)).__name__

seen['unknown_keyword'] = error(lambda: airbench.train94(lr=1.0))
seen['zero_epochs'] = error(lambda: airbench.train94(epochs=0))
seen['negative_epochs'] = error(lambda: airbench.train94(epochs=-1))
empty_loader = airbench.CifarLoader('cifar10', train=True)
empty_loader.images, empty_loader.labels = empty_loader.images[:0], empty_loader.labels[:0]
seen['empty_loader'] = error(lambda: airbench.train94(empty_loader))
seen['not_a_loader'] = error(lambda: airbench.train94(torch.zeros(3)))

siblings = airbench95.CifarLoader('cifar10', train=True, batch_size=256, aug=dict(flip=True, translate=4))
net, caught = warned(lambda: airbench.train94(siblings, **small))
seen['sibling_loader'] = [type(net).__name__] + caught
progressive = airbench94_progressive.CifarLoader('cifar10', train=True, batch_size=256,
                                                 aug=airbench94_progressive.hyp['aug'])
net, seen['progressive_loader_to_train94'] = warned(lambda: airbench.train94(progressive, **small))
with torch.compiler.set_stance('force_eager'):  # the method, without minutes of compiling on a CPU
    net, seen['package_loader_to_train94_progressive'] = warned(lambda: airbench.train94_progressive(
        airbench.CifarLoader(os.path.join(other, 'cifar10')), **small))  # as many images as its batch of 1536
seen['progressive_net'] = type(net).__module__
seen['signatures'] = {name: list(inspect.signature(getattr(airbench, name)).parameters)
                      for name in ('train94', 'train95', 'train96', 'train94_muon', 'CifarLoader', 'make_net94')}
seen['loader_defaults'] = {k: p.default for k, p in inspect.signature(airbench.CifarLoader).parameters.items()
                           if p.default is not inspect.Parameter.empty}
print(json.dumps(seen))
'''

# airbench 0.1.8's train94 keywords, CifarLoader and make_net94 parameters (read from its source)
PUBLISHED_TRAIN94 = ['train_loader', 'epochs', 'label_smoothing', 'learning_rate', 'bias_scaler', 'momentum',
                     'weight_decay', 'whiten_bias_epochs', 'tta_level', 'make_net', 'run', 'verbose']
PUBLISHED_LOADER = ['path', 'train', 'batch_size', 'aug', 'drop_last', 'shuffle', 'altflip', 'gpu']


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """The wheel, built offline from a copy of the working tree, as `pip install git+URL` builds from a clone."""
    tmp = tmp_path_factory.mktemp('wheel')
    source = tmp / 'source'
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns('.git', '__pycache__', 'build', '*.egg-info', 'logs',
                                                                'cifar10', '.data', '.pytest_cache'))
    command = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '--wheel-dir',
               str(tmp / 'dist'), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [name] = os.listdir(tmp / 'dist')
    return str(tmp / 'dist' / name)


@pytest.fixture(scope='module')
def venv(wheel, tmp_path_factory):
    """A fresh virtual environment with the wheel installed; torch (and numpy) from the system's site-packages."""
    env_dir = str(tmp_path_factory.mktemp('venv') / 'env')
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip', env_dir], check=True)
    result = subprocess.run([os.path.join(env_dir, 'bin', 'python'), '-m', 'pip', 'install', '--no-deps', '--no-index',
                             '--disable-pip-version-check', wheel], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return env_dir


def in_venv(venv, command, cwd):
    """`command` (its first word a program of the venv) from `cwd`, with nothing of the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return subprocess.run([os.path.join(venv, 'bin', command[0]), *command[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def seen(venv, tmp_path_factory):
    """What the issue's examples do in the venv, from a directory with cifar10/ beside another folder's data."""
    tmp = tmp_path_factory.mktemp('notebook')
    cifar_files.write_batches(str(tmp / 'work' / 'cifar10'), n_train=1280, n_test=250)
    cifar_files.write_batches(str(tmp / 'other' / 'cifar10'), n_train=1536, n_test=250)
    os.makedirs(tmp / 'work' / 'empty')
    result = in_venv(venv, ['python', '-c', EXAMPLES, str(tmp / 'other'), 'empty'], cwd=str(tmp / 'work'))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_wheel_holds_the_scripts_the_package_and_the_harness_inside_it(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        packaged_harness = z.read('airbench/harness.py')
        entry_points = z.read(next(n for n in names if n.endswith('.dist-info/entry_points.txt'))).decode()
        metadata = z.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    top = {name.split('/')[0] for name in names}
    assert {n for n in top if not n.endswith('.dist-info')} == set(SCRIPTS) | {'airbench'}  # no harness, tests, ...
    assert {'airbench/__init__.py', 'airbench/__main__.py', 'airbench/harness.py'} <= set(names)
    assert packaged_harness == open(os.path.join(ROOT, 'harness.py'), 'rb').read()
    assert 'airbench-harness = airbench.__main__:main' in entry_points
    requirements = [line.split(': ', 1)[1] for line in metadata.splitlines() if line.startswith('Requires-Dist: ')]
    assert requirements == ['torch>=2.4', 'torchvision; extra == "download"']


def test_it_imports_from_the_venv_not_the_checkout(seen, venv):
    assert all(path.startswith(venv + os.sep) for path in seen['files'])


def test_the_defaults_train_the_scripts_own_method_in_cifar10(seen):
    assert isinstance(seen['warmup_seconds'], float) and seen['default_net'] == 'airbench94.Net'
    assert seen['equals_the_scripts_train']  # bit-identical to airbench94.train on a hyp copy, from one seed


def test_a_keyword_changes_its_run_only(seen):
    assert seen['override_changes_the_run'] and seen['hyp_unchanged'] and seen['next_call_is_the_published_method']


def test_the_loader_infer_and_evaluate_work_on_their_own(seen):
    assert seen['infer'] == [[1280, 10], 1280] and 0 <= seen['evaluate'] <= 1


def test_a_loader_from_another_folder_trains_there_and_nothing_lands_in_cifar10_here(seen):
    kept = seen['subset'][1]
    assert seen['subset'] == [kept // 500, kept] and kept >= 500
    assert seen['other_folder_net'] == 'Net' and seen['cwd_after'] == []


def test_a_subset_trains_on_a_longer_schedule(seen):
    assert seen['longer_schedule_net'] == 'Net'


def test_an_unknown_keyword_is_a_type_error_that_names_the_valid_ones(seen):
    kind, message, _ = seen['unknown_keyword']
    assert kind == 'TypeError' and "unexpected keyword argument 'lr'" in message
    assert all(name in message.split('its keywords: ')[1] for name in PUBLISHED_TRAIN94[1:])


@pytest.mark.parametrize('case, kind, message', [
    ('zero_epochs', 'ValueError', 'airbench.train94: epochs must be a positive number, not 0'),
    ('negative_epochs', 'ValueError', 'airbench.train94: epochs must be a positive number, not -1'),
    ('empty_loader', 'ValueError', 'airbench.train94: train_loader holds no images'),
    ('not_a_loader', 'TypeError', "airbench.train94: train_loader must be an airbench.CifarLoader or a script's"),
])
def test_bad_input_is_a_clear_error_before_any_script_code(seen, case, kind, message):
    assert seen[case][0] == kind and seen[case][1].startswith(message)
    assert not seen[case][2]  # raised by the package: no frame of a script in the traceback


def test_another_members_loader_trains_as_given_or_with_the_methods_own_augmentation(seen):
    assert seen['sibling_loader'] == ['Net']  # airbench95's loader runs airbench94's code: as given, no warning
    [warning] = seen['progressive_loader_to_train94']
    assert 'comes from airbench94_progressive, not airbench94' in warning and "own batch size (1024)" in warning
    [warning] = seen['package_loader_to_train94_progressive']
    assert 'comes from airbench, not airbench94_progressive' in warning and "own batch size (1536)" in warning
    assert seen['progressive_net'] == 'airbench94_progressive'


def test_the_published_names_and_defaults(seen):
    signatures = seen['signatures']
    for name in ('train94', 'train95', 'train96'):
        assert set(PUBLISHED_TRAIN94) <= set(signatures[name])
    assert {'muon_lr', 'head_lr', 'whiten_bias_steps'} <= set(signatures['train94_muon'])
    assert signatures['CifarLoader'] == PUBLISHED_LOADER
    assert seen['loader_defaults'] == dict(train=True, batch_size=500, aug=None, drop_last=None, shuffle=None,
                                           altflip=False, gpu=0)
    assert signatures['make_net94'][:2] == ['widths', 'batchnorm_momentum']


def test_the_console_command_runs_an_installed_script_by_name(venv, tmp_path):
    result = in_venv(venv, ['airbench-harness', '--help'], cwd=str(tmp_path))
    assert result.returncode == 0 and result.stdout.startswith('usage: airbench-harness')
    cifar_files.write_batches(str(tmp_path / 'cifar10'), n_train=256, n_test=250)
    sets = ['opt.batch_size=128', 'opt.train_epochs=1', 'net.widths={"block1": 8, "block2": 16, "block3": 16}']
    result = in_venv(venv, ['airbench-harness', 'airbench94', '--runs', '1', '--no-warmup', '--device', 'cpu',
                            '--seed', '0', *[flag for s in sets for flag in ('--set', s)]], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert 'runs: 1 finished, 0 failed' in result.stdout
    [log] = os.listdir(tmp_path / 'logs')
    assert json.load(open(tmp_path / 'logs' / log))['script_path'].startswith(venv + os.sep)


def test_no_module_named_harness_is_installed(venv, tmp_path):
    result = in_venv(venv, ['python', '-c', 'import harness'], cwd=str(tmp_path))
    assert result.returncode == 1 and "No module named 'harness'" in result.stderr
