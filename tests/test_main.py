"""A script's own command line (`python airbench94.py`), end to end on small data in the official formats.

main() comes in two shapes, kept identical within each by tests/test_siblings.py: the eager scripts'
(airbench94.py, airbench95.py, airbench96.py) and the compiled scripts', whose warm-up compiles and
cannot be skipped. Each shape runs here once; torchrun, statistics and hyp edits are harness.py's
(tests/test_harness.py)."""
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (FORECAST_FACTOR, ROOT, SCRIPTS, allow_ctrl_c, cli_command, compiles, diverging_edits, edit_hyp,
                      file_snapshot, forecast_seconds, fresh_script, load_script, run_cli, tiny_hyp)
from support import cifar_files

SHAPES = ['airbench94.py', 'airbench94_compiled.py']  # one script of each shape of main()


def only_log(log_dir):
    names = [n for n in os.listdir(log_dir) if n.endswith('.json') and n != 'keep.json']
    assert len(names) == 1
    return json.load(open(os.path.join(log_dir, names[0])))


def table_rows(stdout, run):
    return [line for line in stdout.splitlines() if line.startswith('|') and line.split('|')[1].strip() == str(run)]


@pytest.fixture(scope='module', params=SHAPES)
def folder_run(request, tmp_path_factory):
    """One CLI invocation per shape on the folder format: warm-up, then 2 runs from seed 5."""
    tmp = tmp_path_factory.mktemp('cli')
    cifar_files.write_batches(str(tmp / 'cifar10'))
    start = time.perf_counter()
    result = run_cli(request.param, ['--data-dir', 'cifar10', '--runs', '2', '--seed', '5'], cwd=str(tmp))
    result.seconds = time.perf_counter() - start
    return request.param, tmp, result


def test_cli_forecasts_the_whole_commands_time_once_after_the_first_epoch_free_of_compilation(folder_run):
    script, _, result = folder_run
    lines = result.stdout.splitlines()
    forecast = next(i for i, line in enumerate(lines) if line.startswith('expected: '))
    # Right after the warm-up's first epoch; where that epoch compiled, after its second
    assert lines[forecast - 1] == table_rows(result.stdout, 'warmup')[1 if compiles(script) else 0]
    assert 1 / FORECAST_FACTOR < forecast_seconds(result.stdout) / result.seconds < FORECAST_FACTOR
    shorter = 'python harness.py %s --eager --no-warmup --runs 1' % script if compiles(script) else \
        '--runs 1 --no-warmup'
    assert lines[forecast].endswith(' per pass over the test set); on a CPU, %s trains one network' % shorter)


class DeviceLoader:
    """What Forecast reads of a training loader: its batches per epoch and its images' device."""

    def __init__(self, device, batches):
        self.images = type('Images', (), {'device': torch.device(device)})()  # a CUDA device without a GPU
        self.batches = batches

    def __len__(self):
        return self.batches


@pytest.mark.parametrize('device, line', [
    # A CPU speaks after epoch 1: 1.2 s per step, (30 - 10) - 12 = 8 s of testing; a run 25 x 1.2 + 9 x 8 = 102 s
    # (3 epochs' passes and 6 for the TTA); now 30 s, then 15 x 1.2 + 8 x 8 = 82 s of this run and 2 more runs
    ('cpu', 'expected: the whole command takes about 5.3 min, 1.7 min per run (epoch 1: 1.2 s per training step, '
            '8 s per pass over the test set); on a CPU, --runs 1 --no-warmup trains one network'),
    # CUDA skips the command's first epoch (cuDNN's search): epoch 2 gives 1 s per step and 5 s per pass, so
    # 45 + (5 x 1 + 7 x 5) + 2 x (25 x 1 + 9 x 5) = 225 s; and no CPU hint
    ('cuda', 'expected: the whole command takes about 3.8 min, 70 s per run (epoch 2: 1 s per training step, '
             '5 s per pass over the test set)'),
])
def test_the_forecast_by_hand_and_when_it_waits(device, line, monkeypatch, capsys):
    module = load_script('airbench94.py')
    hyp = edit_hyp(copy.deepcopy(module.hyp), [['opt.train_epochs', 2.5]])  # 25 steps of 10 per epoch, 3 epochs
    clock, compiled = iter([10, 30, 45, 60, 61]), iter([0, 0, 0, 1, 1])
    monkeypatch.setattr(time, 'perf_counter', lambda: next(clock))
    monkeypatch.setattr(module.Forecast, 'graphs_compiled', staticmethod(lambda: next(compiled)))
    forecast = module.Forecast(hyp, DeviceLoader(device, 10), 3, '--runs 1 --no-warmup', start=0)  # warm-up, 2 runs
    forecast.on_epoch(None, 0, 25)  # at 10 s the warm-up starts its clock
    forecast.on_epoch(dict(epoch=1, time_seconds=12.0), 10, 25)  # 30 s
    forecast.on_epoch(dict(epoch=2, time_seconds=22.0), 20, 25)  # 45 s
    assert capsys.readouterr().out == line + '\n'
    forecast.on_epoch(dict(epoch=3, time_seconds=27.0), 25, 25)  # once only
    assert capsys.readouterr().out == ''


def test_the_forecast_waits_for_an_epoch_that_compiled_nothing(monkeypatch, capsys):
    module = load_script('airbench94.py')
    clock, compiled = iter([0, 20, 30, 40]), iter([0, 5, 5, 5])  # graphs compiled by then: 5 during epoch 1
    monkeypatch.setattr(time, 'perf_counter', lambda: next(clock))
    monkeypatch.setattr(module.Forecast, 'graphs_compiled', staticmethod(lambda: next(compiled)))
    forecast = module.Forecast(module.hyp, DeviceLoader('cpu', 48), 1, None, start=0)
    forecast.on_epoch(None, 0, 476)
    forecast.on_epoch(dict(epoch=1, time_seconds=15.0), 48, 476)
    assert capsys.readouterr().out == ''
    forecast.on_epoch(dict(epoch=2, time_seconds=23.0), 96, 476)
    out = capsys.readouterr().out
    assert out.startswith('expected: ') and '(epoch 2: ' in out and 'on a CPU' not in out  # nothing shorter to say


def test_cli_prints_a_row_per_epoch_and_a_summary(folder_run):
    script, tmp, result = folder_run
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'note: CPU run in float32' in out
    assert re.search(r'^warm-up: \d+\.\d s, untimed' + (', compiling with mode default$' if compiles(script) else '$'),
                     out, re.M)
    assert 'data: 1280 train / 500 test images from cifar10\nruns: 2, run i uses seed 5+i' in out
    assert '|    run |  epoch | train_loss | train_acc | val_acc | tta_val_acc | time_seconds |' in out
    assert len(table_rows(out, 'warmup')) == 4  # an untimed warm-up on random labels
    for run in (1, 2):
        rows = table_rows(out, run)
        assert [r.split('|')[2].strip() for r in rows] == ['1', '2', '3', 'eval']  # ceil(2.5) epochs, then TTA
    assert 'runs: 2 finished, 0 failed' in out
    assert re.search(r'^tta_val_acc: mean 0\.\d{4}  std 0\.\d{4}$', out, re.M)
    assert re.search(r'^time_seconds: mean \d+\.\d{4}  std \d+\.\d{4}$', out, re.M)
    assert ('graphs compiled during the timed runs: 0' in out) == compiles(script)


def test_cli_log_records_the_runs_hyp_environment_and_source(folder_run):
    script, tmp, result = folder_run
    log = only_log(str(tmp / 'logs'))
    assert [(r['run'], r['seed'], r['status']) for r in log['runs']] == [(1, 5, 'ok'), (2, 6, 'ok')]
    accs = [r['tta_val_acc'] for r in log['runs']]
    assert min(accs) > 0.5  # learnable data: well above the 0.1 of chance
    assert log['summary']['tta_val_acc_mean'] == pytest.approx(sum(accs) / 2)
    assert log['hyp']['opt']['batch_size'] == 128 and log['hyp']['net']['widths']['block1'] == 16
    assert log['torch_version'] == torch.__version__ and log['device'] == 'cpu' and log['train_images'] == 1280
    assert log['source'] == open(os.path.join(ROOT, script)).read()
    assert not log['interrupted'] and log['warmup_seconds'] > 0 and log['argv'][-2:] == ['--seed', '5']
    assert log['summary'].get('graphs_compiled_in_timed_runs') == (0 if compiles(script) else None)


def test_cli_on_the_tarball_repeats_a_run_in_a_fresh_module(folder_run, monkeypatch):
    script, tmp, _ = folder_run
    data_dir = tmp / 'tarball_only'
    data_dir.mkdir()
    _, md5 = cifar_files.write_tarball(str(data_dir), str(tmp / 'cifar10' / 'cifar-10-batches-py'))
    module = fresh_script(script)  # as in a new process: nothing compiled, nothing cached
    monkeypatch.setattr(module, 'CIFAR10_TARBALL_MD5', md5)  # our tarball stands in for the official one
    edit_hyp(module.hyp, tiny_hyp(script))
    monkeypatch.chdir(tmp)
    assert module.main(['--data-dir', str(data_dir), '--runs', '1', '--seed', '6', '--log-dir', 'logs_tarball']) == 0
    assert sorted(os.listdir(data_dir)) == ['cifar-10-python.tar.gz', module.CACHE_FILE]  # read, not extracted
    # seed 6 ran second in the folder run, after seed 5: no state carried over from it
    second = only_log(str(tmp / 'logs'))['runs'][1]
    assert only_log(str(tmp / 'logs_tarball'))['runs'][0]['tta_val_acc'] == second['tta_val_acc']


@pytest.mark.parametrize('args, message', [
    (['--runs', '0'], '--runs: must be a positive integer, not 0'),
    (['--runs', 'many'], "--runs: invalid int value: 'many'"),
    (['--device', 'tpu'], "--device: invalid choice: 'tpu'"),
    (['--seed', 'x'], "--seed: invalid int value: 'x'"),
    (['--log-dir', 'afile'], '--log-dir afile: cannot write there'),
] + ([] if torch.cuda.is_available() else [(['--device', 'cuda'], '--device cuda: no CUDA device is available')]))
def test_bad_flag_values_get_an_argparse_error(module, tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / 'afile').write_text('precious')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(args)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.startswith('usage: ') and message in stderr
    assert file_snapshot(str(tmp_path)) == {'afile': b'precious'}


def test_under_torchrun_a_script_points_to_the_harness(module, monkeypatch, capsys):
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args([])
    assert exit_info.value.code == 2 and 'run this script through harness.py' in capsys.readouterr().err


@pytest.mark.parametrize('script', SHAPES)
def test_the_real_cli_reports_a_bad_flag_without_a_traceback(script, tmp_path):
    result = run_cli(script, ['--runs', '0'], cwd=str(tmp_path), edits=())
    assert result.returncode == 2 and result.stderr.startswith('usage: ') and 'Traceback' not in result.stderr
    assert '--runs: must be a positive integer, not 0' in result.stderr and os.listdir(tmp_path) == []


def test_help_lists_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(['--help'])
    assert exit_info.value.code == 0
    stdout = capsys.readouterr().out
    for flag in ('--runs', '--data-dir', '--device', '--seed', '--no-warmup', '--log-dir', 'harness.py'):
        assert flag in stdout


def test_a_compiled_script_refuses_to_skip_its_warm_up(module, capsys):
    if not compiles(module.__name__ + '.py'):
        assert module.parse_args(['--no-warmup']).no_warmup
        return
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(['--no-warmup'])
    assert exit_info.value.code == 2 and '--no-warmup: this script compiles during its warm-up' in capsys.readouterr().err


def test_diverging_runs_are_counted_and_exit_nonzero(cifar_dir, tmp_path):
    os.makedirs(tmp_path / 'logs')
    (tmp_path / 'logs' / 'keep.json').write_text('{"an": "earlier log"}')
    script = 'airbench94.py'
    result = run_cli(script, ['--data-dir', cifar_dir, '--runs', '2', '--seed', '0', '--no-warmup'], cwd=str(tmp_path),
                     edits=tiny_hyp(script) + diverging_edits(script))
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert 'run 1 (seed 0) failed: the training loss became' in result.stderr
    assert 'runs: 0 finished, 2 failed' in result.stdout
    log = only_log(str(tmp_path / 'logs'))
    assert [r['status'] for r in log['runs']] == ['diverged', 'diverged'] and log['summary']['failed'] == 2
    assert (tmp_path / 'logs' / 'keep.json').read_text() == '{"an": "earlier log"}'


def test_ctrl_c_summarizes_and_logs_the_finished_runs(cifar_dir, tmp_path):
    command = cli_command('airbench94.py', ['--data-dir', cifar_dir, '--runs', '50', '--seed', '0', '--no-warmup'],
                          tiny_hyp('airbench94.py'), python_flags=['-u'])
    process = subprocess.Popen(command, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=allow_ctrl_c)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith('|') and line.split('|')[1].strip() == '2':  # run 1 done: interrupt run 2
                process.send_signal(signal.SIGINT)
                break
        out = ''.join(lines) + process.stdout.read()
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()
    assert 'interrupted: summarizing the 1 finished runs' in out and 'runs: 1 finished, 0 failed' in out
    log = only_log(str(tmp_path / 'logs'))
    assert log['interrupted'] and [r['run'] for r in log['runs']] == [1]


@pytest.mark.parametrize('make_data, message', [
    (lambda data_dir: None, 'no CIFAR-10 in '),
    (lambda data_dir: (data_dir / 'cifar-10-python.tar.gz').write_bytes(b'\x1f\x8b truncated'), 'has MD5'),
], ids=['offline without data', 'corrupt tarball'])
def test_a_data_error_is_one_line_not_a_traceback(tmp_path, make_data, message):
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    make_data(data_dir)
    before = file_snapshot(str(data_dir))
    result = run_cli('airbench94.py', ['--data-dir', str(data_dir)], cwd=str(tmp_path), edits=())
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.startswith('airbench94.py: error: ') and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and file_snapshot(str(data_dir)) == before


def test_import_has_no_side_effects(tmp_path):
    code = ('import importlib.util, sys, torch\n'
            'for path in sys.argv[1:]:\n'
            '    spec = importlib.util.spec_from_file_location("m", path); m = importlib.util.module_from_spec(spec)\n'
            '    spec.loader.exec_module(m)\n'
            '    print(sorted(k for k, v in vars(m).items() if isinstance(v, torch.Tensor)), torch.cuda.is_initialized())')
    result = subprocess.run([sys.executable, '-c', code, *[os.path.join(ROOT, s) for s in SCRIPTS]], cwd=str(tmp_path),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ('[] False\n' * len(SCRIPTS), '')  # printed nothing itself, holds no tensors
    assert os.listdir(tmp_path) == []  # downloaded and wrote nothing


def test_a_torch_older_than_the_scripts_minimum_gets_one_clear_line():
    module = load_script('airbench94.py')  # the same function in every script (tests/test_siblings.py)
    assert module.torch_too_old(torch.__version__) is None
    assert module.torch_too_old('2.4.0') is None and module.torch_too_old('10.0.0') is None
    assert module.torch_too_old('2.3.1+cu121') == 'torch 2.3.1+cu121 is too old: this script needs torch 2.4 or newer'
