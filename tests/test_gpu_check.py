"""benchmarks/gpu_check.py, the one command for the first GPU, kept working without one: its
--smoke mode runs the whole pipeline on the CPU on tiny data and writes an entry with every section."""
import os
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT, SCRIPTS, load_script, small_loaders
from run_with_hyp import load_edited
import gpu_check

RESULTS = os.path.join(ROOT, 'benchmarks', 'RESULTS.md')


def table(entry, header):
    """{script: its other cells} of the markdown table whose header row starts with `header`."""
    lines = entry[entry.index(header):].split('\n\n')[0].splitlines()[2:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip('|').split('|')] for line in lines)}


def field(entry, pattern):
    return re.search(pattern, entry, re.M).groups()


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('gpu_check')
    results, real_results = tmp / 'entry.md', open(RESULTS, 'rb').read()
    command = [sys.executable, os.path.join(ROOT, 'benchmarks', 'gpu_check.py'), '--device', 'cpu', '--smoke',
               '--results', str(results)]
    # One thread per process: as fast for tiny tensors, and no OpenMP oversubscription when the
    # machine is shared (two threads then made this take twice as long)
    process = subprocess.run(command, cwd=str(tmp), capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    assert open(RESULTS, 'rb').read() == real_results
    return results.read_text(), str(results)


def test_smoke_entry_names_the_command_machine_data_and_cuda_tests(smoke):
    entry, results = smoke
    assert entry.startswith('### GPU check smoke test (--smoke: tiny data and networks, its numbers mean nothing), cpu, ')
    assert field(entry, r'^- command: `(.*)`$') == (
        'python benchmarks/gpu_check.py --device cpu --smoke --results %s' % results,)
    assert 'torch %s, CUDA none' % torch.__version__ in field(entry, r'^- machine: (.*)$')[0]
    assert field(entry, r'^- data: .*, (\d+) train / (\d+) test images$') == (
        str(gpu_check.SMOKE_TRAIN_IMAGES), str(gpu_check.SMOKE_TEST_IMAGES))
    passed, failed, errors, skipped = map(int, field(entry, r'^- CUDA tests \(`python -m pytest tests/test_cuda.py`, '
                                                            r'\d+ s\): (\d+) passed, (\d+) failed, (\d+) errors, '
                                                            r'(\d+) skipped \(no CUDA device here: every test skips\)$'))
    assert (passed, failed, errors) == (0, 0, 0) and skipped >= 2 * len(SCRIPTS)
    assert float(field(entry, r'^- matmul ceiling: torch.mm of two 512 x 512 float32 matrices, 10 timed after 2 '
                              r'warm-up: (\S+) TFLOP/s$')[0]) > 0


def test_smoke_entry_has_a_timed_row_per_script(smoke):
    timed = table(smoke[0], '| script | n |')
    assert sorted(timed) == SCRIPTS
    for script, (n, finished, acc, acc_std, seconds, seconds_std, warmup, graphs, log) in timed.items():
        compiled = load_script(script).compile_mode(torch.device('cpu')) is not None
        assert (n, finished, acc_std, seconds_std) == ('1', '1 / 0', 'n/a', 'n/a')
        assert 20 < float(acc.rstrip('%')) <= 100 and float(seconds) > 0  # learnable data: chance is 10%
        assert (warmup != 'n/a', graphs) == ((True, '0') if compiled else (False, '-'))  # CPU: warm-up to compile
        assert re.fullmatch(r'`.*/%s-[\d-]+\.json`' % script[:-3], log)


def test_smoke_entry_has_a_profile_row_and_epoch_times_per_script(smoke):
    entry = smoke[0]
    profile = table(entry, '| script | whitening init s |')
    assert sorted(profile) == SCRIPTS
    for script, (whitening, training, tta, total, busy, tflops, source, achieved, share) in profile.items():
        training_seconds, epochs = re.fullmatch(r'(\S+) \((\d+)\)', training).groups()
        assert epochs == '2'  # ceil(1.5)
        # the spans between the script's clock calls add up to its timed seconds
        assert float(whitening) + float(training_seconds) + float(tta) == pytest.approx(float(total), abs=0.003)
        busy_seconds, wall_seconds = map(float, re.fullmatch(r'(\S+) / (\S+) \(\d+%\)', busy).groups())
        assert 0 < busy_seconds <= wall_seconds
        assert source == 'counted (FlopCounterMode)' and float(tflops) > 0 and float(achieved) > 0
        assert float(share.rstrip('%')) > 0
        per_epoch = field(entry, r'^- seconds per epoch, %s: (\S+), (\S+)$' % re.escape(script))
        assert sum(map(float, per_epoch)) == pytest.approx(float(training_seconds), abs=0.003)


def test_counted_flops_are_the_training_steps_the_tta_and_the_whitening_init(cifar_source):
    """What timed_flops counts for a script without a SPEC.md figure is what those figures count:
    forward and backward of every training step and the final TTA (plus the small whitening init),
    not the per-epoch progress evaluations."""
    module = load_edited('airbench94.py', gpu_check.SMOKE_HYP, name='airbench94_flops')
    train_loader, test_loader = small_loaders(module, module.hyp, cifar_source)  # 3 steps, 2 evaluation batches
    counted = gpu_check.timed_flops(module, (train_loader, test_loader))
    net = module.make_net(module.hyp)
    inputs, labels = next(iter(train_loader))
    with FlopCounterMode(display=False) as step:
        module.make_loss_fn(module.hyp)(net(inputs), labels).backward()
    with FlopCounterMode(display=False) as tta:
        module.evaluate(net, test_loader, module.hyp['net']['tta_level'])
    with FlopCounterMode(display=False) as whitening:
        module.init_whitening_conv(net.whiten, train_loader.images[:module.hyp['net']['whiten_images']],
                                   module.hyp['net']['whiten_eps'])
    steps = module.total_train_steps(train_loader, module.hyp)
    assert counted == steps * step.get_total_flops() + tta.get_total_flops() + whitening.get_total_flops()


@pytest.mark.parametrize('argv, message', [
    (['--runs', 'airbench99.py=3'], '--runs: no script airbench99.py here'),
    (['--runs', 'airbench94.py=0'], 'expected SCRIPT=N with N a positive integer'),
    (['--device', 'cpu'], '--device cpu: only with --smoke'),
] + ([(['--shared-data', '/nonexistent'], 'no cifar10-jpeg.tar.gz in /nonexistent')] if torch.cuda.is_available()
     else [([], '--device cuda: no CUDA device is available')]))
def test_bad_flags_get_an_argparse_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(argv, SCRIPTS)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
