"""Fixtures shared by the tests: the scripts, small data in the official format, a CLI runner."""
import contextlib
import copy
import functools
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import harness
from support import cifar_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A compiled net that reaches dynamo's recompile limit runs eagerly from then on, without a word;
# here that is an error, so that no test passes on an eager net it takes for a compiled one. The
# suite compiles each script's nets for many small configurations in one process, far more than
# a run needs (airbench96_faster's nets reached the default limit of 8 graphs)
torch._dynamo.config.fail_on_recompile_limit_hit = True
torch._dynamo.config.recompile_limit = 64

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'airbench*.py')))

# Edits to `hyp` that make a run take seconds on 2 CPU cores: same code, smaller numbers
TINY_HYP = [['opt.batch_size', 128], ['opt.train_epochs', 2.5],
            ['net.widths', {'block1': 16, 'block2': 32, 'block3': 32}], ['net.whiten_images', 256]]

# ...plus what a method needs to learn in a run that short. In TINY_HYP's 25 steps
# airbench96_faster's proxy, learning every 4th step, takes 7 optimizer steps and its losses still
# rank whole classes highest, so the main net trains on a few classes only (TTA 0.41-0.71 over 5
# seeds); learning every 2nd step it gets 0.62-0.77, and scoring-only steps still run
TINY_EXTRA_HYP = {'airbench96_faster.py': [['proxy.train_every_steps', 2]],
                  # both resolutions (epoch 1 at 28 px, then 32 px), and the decay ending 2 steps before the
                  # last of 25 as at full scale (23 of 25 there, 260 of 264 here): the EMA tail from step 15
                  'airbench94_progressive.py': [['opt.decay_epochs', 2.25], ['aug.resolutions', [28, 32]]]}


def tiny_hyp(script):
    """TINY_HYP's edits for `script` (a file name)."""
    return TINY_HYP + TINY_EXTRA_HYP.get(script, [])


def edit_hyp(hyp, edits):
    """Apply [dotted path, value] edits to `hyp` in place, as harness.py's --set does; returns hyp."""
    for path, value in edits:
        error = harness.edit_hyp(hyp, path, value)
        assert error is None, '%s: %s' % (path, error)
    return hyp


# A script's own main() in a fresh interpreter, its hyp edited first as a researcher would edit the file
MAIN_WITH_EDITS = """
import importlib.util, json, os, sys
path, edits = sys.argv[1], json.loads(sys.argv[2])
spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
for name, value in edits:
    target, keys = module.hyp, name.split('.')
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
sys.exit(module.main(sys.argv[3:]))
"""


def fresh_script(name):
    """A new instance of the script's module: nothing compiled or cached yet, as in a new process."""
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


load_script = functools.lru_cache(maxsize=None)(fresh_script)  # one instance per script for the session


def edited_hyp(module, edits=None):
    """A copy of module.hyp with `edits` (by default the script's tiny_hyp) applied."""
    return edit_hyp(copy.deepcopy(module.hyp), tiny_hyp(module.__name__ + '.py') if edits is None else edits)


def cli_command(script, args, edits=(), python_flags=()):
    """The command line that runs `script`'s own main(), with its hyp edited first if `edits`."""
    if not edits:
        return [sys.executable, *python_flags, os.path.join(ROOT, script), *args]
    return [sys.executable, *python_flags, '-c', MAIN_WITH_EDITS, os.path.join(ROOT, script), json.dumps(list(edits)),
            *args]


def run_cli(script, args, cwd, edits=None, timeout=600):
    """The script's own CLI in a subprocess, with `edits` to hyp (by default the script's tiny_hyp)."""
    edits = tiny_hyp(script) if edits is None else edits
    return subprocess.run(cli_command(script, args, edits), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


# How far a forecast may be from the measured time of the whole command, either way, on the small data (1.1x to
# 1.3x over, measured): its one epoch of a few steps also pays the first call of every kernel, so it runs high
FORECAST_FACTOR = 2


def forecast_seconds(stdout):
    """The whole command's time in seconds that the forecast line of `stdout` gives; asserts there is exactly one."""
    found = re.findall(r'^expected: the whole command takes about ([\d.e+]+) (s|min|h|days), ', stdout, re.M)
    assert len(found) == 1, found
    value, unit = found[0]
    return float(value) * {'s': 1, 'min': 60, 'h': 3600, 'days': 86400}[unit]


def allow_ctrl_c():
    """preexec_fn for a child that a test interrupts: a suite started in the background of a
    script (`cmd &`) ignores SIGINT, children inherit that, and Python then never raises
    KeyboardInterrupt; restore the default so the child gets Ctrl-C as from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def compiles(script):
    """Whether the script (a file name) compiles its network in the warm-up it then requires."""
    return hasattr(load_script(script), 'compile_mode')


def quick_args(script):
    """--no-warmup where allowed: a compiled script needs its warm-up to compile."""
    return [] if compiles(script) else ['--no-warmup']


def diverging_edits(script):
    """hyp edits that make any script's training diverge: every learning rate in hyp['opt'] set to
    1e30 (airbench94 has one, 'lr'; the Muon variant one per parameter group)."""
    return [['opt.' + key, 1e30] for key in load_script(script).hyp['opt'] if key == 'lr' or key.endswith('_lr')]


@pytest.fixture(autouse=True)
def seeded_rng():
    """Every test starts from one global RNG state, so its random inputs (and any statistical
    bound on them) do not depend on which tests ran before it, and a failure reproduces alone."""
    torch.manual_seed(0)


@pytest.fixture(params=SCRIPTS)
def script(request):
    return request.param


@pytest.fixture
def module(script):
    return load_script(script)


@pytest.fixture(scope='session')
def cifar_source(tmp_path_factory):
    """A read-only master copy of small learnable data in the official folder format."""
    data_dir = tmp_path_factory.mktemp('cifar_source')
    cifar_files.write_batches(str(data_dir))
    return str(data_dir)


@pytest.fixture
def cifar_dir(cifar_source, tmp_path):
    """A private copy of the small dataset (folder format, no cache yet) that a test may damage."""
    data_dir = tmp_path / 'cifar10'
    shutil.copytree(cifar_source, data_dir, ignore=shutil.ignore_patterns('*.pt'))
    return str(data_dir)


def make_loaders(module, hyp, cifar_source, policy=None, train_images=None, test_batch_size=500, device='cpu'):
    """(train, test) loaders over the small dataset on `device` with hyp's batch size and aug, the
    data stored as `policy` says (default: the device's), the training set cut to `train_images`."""
    train = module.CifarLoader(cifar_source, train=True, batch_size=hyp['opt']['batch_size'], aug=hyp['aug'],
                               device=device, policy=policy)
    train.images, train.labels = train.images[:train_images], train.labels[:train_images]
    return train, module.CifarLoader(cifar_source, train=False, batch_size=test_batch_size, device=device, policy=policy)


# A configuration small enough to train under the CUDA precision policy on a CPU, whose fp16
# conv backward has no fast kernel (about 100x slower than fp32): 8 steps of 32 per epoch
SMALL_HYP = [['opt.batch_size', 32], ['opt.train_epochs', 2.5],
             ['net.widths', {'block1': 8, 'block2': 16, 'block3': 16}], ['net.whiten_images', 256]]


def small_loaders(module, hyp, cifar_source, policy=None):
    """Loaders for SMALL_HYP: 256 training images, and two evaluation batches (so that a model
    output kept across calls shows)."""
    return make_loaders(module, hyp, cifar_source, policy, train_images=256, test_batch_size=250)


@functools.lru_cache(maxsize=None)
def small_fp32_run(script, cifar_source):
    """train() of SMALL_HYP from seed 0 in float32, once per script and session."""
    module = load_script(script)
    hyp = edited_hyp(module, SMALL_HYP)
    return module.train(hyp, *small_loaders(module, hyp, cifar_source), seed=0, verbose=False)


def assert_cuda_storage(net, policy):
    """The net is stored as `policy` (a script's precision_policy('cuda')) says: conv weights fp16 and
    channels_last, every BatchNorm parameter and buffer in the policy's BatchNorm dtype."""
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) >= 7 and len(norms) >= 6
    for conv in convs:
        assert conv.weight.dtype == torch.half and conv.weight.is_contiguous(memory_format=torch.channels_last)
    for norm in norms:
        floats = [t for t in list(norm.parameters()) + list(norm.buffers()) if t.is_floating_point()]
        assert len(floats) == 4 and all(t.dtype == policy['batchnorm_dtype'] for t in floats)


@contextlib.contextmanager
def conv_input_layouts():
    """While the block runs, records for every conv call whether its input was channels_last.
    Compiled code runs eagerly meanwhile: dynamo would trace the global hook into every graph and
    recompile until its limit, after which the net stays uncompiled for the rest of the process."""
    layouts = []

    def record_layout(layer, args):
        if isinstance(layer, torch.nn.Conv2d):
            layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    with torch.compiler.set_stance('force_eager'):
        handle = torch.nn.modules.module.register_module_forward_pre_hook(record_layout)
        try:
            yield layouts
        finally:
            handle.remove()


def assert_all_channels_last(layouts):
    assert len(layouts) > 100  # training steps and evaluation views alike
    assert all(layouts), '%d of %d conv inputs were not channels_last' % (layouts.count(False), len(layouts))


@pytest.fixture
def loaders(module, cifar_source):
    """(train, test) loaders over the small dataset on the CPU, with hyp's batch size and aug."""
    return make_loaders(module, module.hyp, cifar_source)


def file_snapshot(folder):
    """{relative path: bytes} of every file under folder, to show that nothing was lost or changed."""
    snapshot = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            snapshot[os.path.relpath(path, folder)] = open(path, 'rb').read()
    return snapshot


# SPEC.md's figures for each script. Schedule values: (step, LR multiplier) at the first step, the
# end of warm-up (peak) and the last step; warm-up is int(frac * total) steps, then linear decay.
# 'optimizer': 'sgd' is airbench94's (one Nesterov SGD in decoupled form, the warm-up schedule,
# lookahead, the whitening bias frozen after whole epochs); 'muon' replaces all of that.
SPEC_FIGURES = {
    'airbench94': dict(params=1972792, frozen=288 + 1152, mflops=236.29, steps=476, steps_per_epoch=48,
                       batchnorm_momentum=0.4, whiten_bias_starts_at_zero=True, optimizer='sgd',
                       schedule=[(0, 0.2), (109, 1.0), (475, 0.0725)], lookahead_last=(475, 0.7689)),
    'airbench95': dict(params=4606520, frozen=288 + 1792, mflops=603.12, steps=720, steps_per_epoch=48,
                       batchnorm_momentum=0.4, whiten_bias_starts_at_zero=True, optimizer='sgd',
                       schedule=[(0, 0.2), (165, 1.0), (719, 1 - 0.93 * 554 / 555)], lookahead_last=(720, 0.7738)),
    'airbench96': dict(params=9918776, frozen=288 + 3072, mflops=903.93, steps=1776, steps_per_epoch=48,
                       batchnorm_momentum=0.1, whiten_bias_starts_at_zero=True, optimizer='sgd',
                       schedule=[(0, 0.2), (177, 1.0), (1775, 1 / 1599)], lookahead_last=(1775, 0.7725)),
    # Learning rates before steps 0, 1, 74, 100 and 199 (the whitening bias's only while it trains)
    'airbench94_muon': dict(params=1972792, frozen=288 + 1152, mflops=236.29, steps=200, steps_per_epoch=25,
                            batchnorm_momentum=0.4, whiten_bias_starts_at_zero=False, optimizer='muon',
                            whiten_bias_steps=75, lr_steps=[0, 1, 74, 100, 199],
                            learning_rates={'muon': [0.24, 0.2388, 0.1512, 0.12, 0.0012],
                                            'head': [0.67, 0.66665, 0.4221, 0.335, 0.00335],
                                            'norm_biases': [0.053, 0.052735, 0.03339, 0.0265, 0.000265],
                                            'whiten_bias': [0.053, 0.052293, 0.000707]}),
}
# Muon's optimizers, a resolution curriculum and an EMA tail: tests/test_progressive.py checks them
SPEC_FIGURES['airbench94_progressive'] = dict(params=1972792, frozen=288 + 1152, mflops=236.29, steps=264,
                                              steps_per_epoch=32, batchnorm_momentum=0.4434,
                                              whiten_bias_starts_at_zero=False, optimizer='muon', tests='progressive',
                                              label_smoothing=0.09,
                                              # BatchNorm in fp16 too; Newton-Schulz in fp16 (fp32 on the CPU)
                                              policies=dict(cpu=dict(newton_schulz_dtype=torch.float),
                                                            cuda=dict(batchnorm_dtype=torch.half,
                                                                      newton_schulz_dtype=torch.half)))
SPEC_FIGURES['airbench94_compiled'] = SPEC_FIGURES['airbench94']
SPEC_FIGURES['airbench96_faster'] = dict(SPEC_FIGURES['airbench96'], steps=2160,
                                         schedule=[(0, 0.2), (216, 1.0), (2159, 1 / 1944)], lookahead_last=(2159, 0.7727))


def skip_unless_sgd_method(script, what):
    """Skip a test of `what`, a part of airbench94's optimization, for a script whose method
    replaces it (SPEC_FIGURES' 'optimizer'); that script's own tests cover what it does instead."""
    figures = SPEC_FIGURES[script[:-3]]
    if figures['optimizer'] != 'sgd':
        pytest.skip('%s has no %s: its method optimizes with %s instead (see its header and tests/test_%s.py)'
                    % (script, what, figures['optimizer'], figures.get('tests', figures['optimizer'])))


@pytest.fixture
def figures(script):
    return SPEC_FIGURES[script[:-3]]
