"""The real command line, end to end, in a subprocess on small data in the official formats."""
import json
import re
import os
import signal
import subprocess
import sys

import pytest
import torch

import cifar_files
from conftest import (ROOT, SCRIPTS, allow_ctrl_c, cli_command, compiles, diverging_edits, file_snapshot, load_script,
                      quick_args, run_cli, tiny_hyp)


def only_log(log_dir):
    names = [n for n in os.listdir(log_dir) if n.endswith('.json') and n != 'keep.json']
    assert len(names) == 1
    return json.load(open(os.path.join(log_dir, names[0])))


def table_rows(stdout, run):
    return [line for line in stdout.splitlines() if line.startswith('|') and line.split('|')[1].strip() == str(run)]


@pytest.fixture(scope='module', params=SCRIPTS)
def folder_run(request, tmp_path_factory):
    """One CLI invocation per script on the folder format: warm-up, then 2 runs from seed 5."""
    tmp = tmp_path_factory.mktemp('cli')
    cifar_files.write_batches(str(tmp / 'cifar10'))
    result = run_cli(request.param, ['--data-dir', 'cifar10', '--runs', '2', '--seed', '5'], cwd=str(tmp))
    return request.param, tmp, result


def test_cli_prints_a_row_per_epoch_and_a_summary(folder_run):
    script, tmp, result = folder_run
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'note: CPU run in float32' in out
    assert re.search(r'warm-up: \d+\.\d s, untimed' + (', including compilation' if compiles(script) else '$'), out, re.M)
    assert 'data: 1280 train / 500 test images from cifar10 (not the full 50000 / 10000 of CIFAR-10)' in out
    assert '|    run |  epoch | train_loss | train_acc | val_acc | tta_val_acc | time_seconds |' in out
    assert len(table_rows(out, 'warmup')) == 4  # an untimed warm-up on random labels
    for run in (1, 2):
        rows = table_rows(out, run)
        assert [r.split('|')[2].strip() for r in rows] == ['1', '2', '3', 'eval']  # ceil(2.5) epochs, then TTA
    assert 'runs: 2 finished, 0 failed' in out
    # with 2 runs the interval is mean +- 12.7 std / sqrt(2), so its ends may pass 0 and 1
    assert re.search(r'tta_val_acc: mean [01]\.\d{4}  std 0\.\d{4}  95% CI of the mean \[-?\d+\.\d{4}, \d+\.\d{4}\]', out)
    assert 'time per run: mean' in out


def test_summary_gives_runs_of_equal_accuracy_a_zero_width_interval(module):
    runs = [dict(status='ok', tta_val_acc=1.0, time_seconds=2.0), dict(status='ok', tta_val_acc=1.0, time_seconds=4.0)]
    summary = module.summarize(runs)
    assert summary['tta_val_acc_std'] == 0 and summary['tta_val_acc_ci95'] == [1.0, 1.0]
    assert 'mean 1.0000  std 0.0000  95% CI of the mean [1.0000, 1.0000]' in module.format_summary(summary)
    assert module.summarize(runs[:1])['tta_val_acc_ci95'] is None


def test_cli_log_records_the_runs_hyp_environment_and_source(folder_run):
    script, tmp, result = folder_run
    log = only_log(str(tmp / 'logs'))
    assert [(r['run'], r['seed'], r['status']) for r in log['runs']] == [(1, 5, 'ok'), (2, 6, 'ok')]
    accs = [r['tta_val_acc'] for r in log['runs']]
    assert min(accs) > 0.5  # learnable data: well above the 0.1 of chance
    assert log['summary']['tta_val_acc_mean'] == pytest.approx(sum(accs) / 2)
    assert log['hyp']['opt']['batch_size'] == 128 and log['hyp']['net']['widths']['block1'] == 16
    assert log['torch_version'] == torch.__version__ and log['device'] == 'cpu' and log['dtype'] == 'float32'
    assert log['source'] == open(os.path.join(ROOT, script)).read()
    assert not log['interrupted'] and log['data_counts'] == {'train': 1280, 'test': 500}
    if compiles(script):  # compiled in the warm-up, never in a timed run
        assert log['compile'] == {'mode': 'default', 'graphs_compiled_in_timed_runs': 0}
        assert 'graphs compiled during the timed runs: 0' in result.stdout
    else:
        assert log['compile'] is None and log['world_size'] == 1


def test_cli_on_the_tarball_repeats_a_run_in_a_fresh_process(folder_run):
    script, tmp, _ = folder_run
    data_dir = tmp / 'tarball_only'
    data_dir.mkdir()
    _, md5 = cifar_files.write_tarball(str(data_dir), str(tmp / 'cifar10' / 'cifar-10-batches-py'))
    result = run_cli(script, ['--data-dir', str(data_dir), '--runs', '1', '--seed', '6', '--log-dir', 'logs_tarball']
                     + quick_args(script), cwd=str(tmp),
                     edits=tiny_hyp(script) + [['CIFAR10_TARBALL_MD5', md5]])
    assert result.returncode == 0, result.stderr
    assert ('warmup' in result.stdout) == compiles(script)
    assert os.path.isdir(data_dir / 'cifar-10-batches-py')
    # seed 6 ran second in the folder run, after seed 5: no state carried over from it
    second = only_log(str(tmp / 'logs'))['runs'][1]
    assert only_log(str(tmp / 'logs_tarball'))['runs'][0]['tta_val_acc'] == second['tta_val_acc']


@pytest.mark.parametrize('args, message', [
    (['--runs', '0'], "--runs: must be a positive integer, not '0'"),
    (['--runs', '-3'], "--runs: must be a positive integer, not '-3'"),
    (['--runs', 'many'], "--runs: must be a positive integer, not 'many'"),
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


def test_the_real_cli_reports_a_bad_flag_without_a_traceback(script, tmp_path):
    result = run_cli(script, ['--runs', '0'], cwd=str(tmp_path), edits=())
    assert result.returncode == 2 and result.stderr.startswith('usage: ') and 'Traceback' not in result.stderr
    assert "--runs: must be a positive integer, not '0'" in result.stderr and os.listdir(tmp_path) == []


def test_help_lists_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(['--help'])
    assert exit_info.value.code == 0
    stdout = capsys.readouterr().out
    for flag in ('--runs', '--data-dir', '--device', '--seed', '--no-warmup', '--log-dir', '--no-log'):
        assert flag in stdout


def test_diverging_runs_are_counted_and_exit_nonzero(script, cifar_dir, tmp_path):
    os.makedirs(tmp_path / 'logs')
    (tmp_path / 'logs' / 'keep.json').write_text('{"an": "earlier log"}')
    result = run_cli(script, ['--data-dir', cifar_dir, '--runs', '2', '--seed', '0'] + quick_args(script), cwd=str(tmp_path),
                     edits=tiny_hyp(script) + diverging_edits(script))
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert 'run 1 (seed 0) failed: the training loss became' in result.stderr
    assert 'runs: 0 finished, 2 failed' in result.stdout
    log = only_log(str(tmp_path / 'logs'))
    assert [r['status'] for r in log['runs']] == ['diverged', 'diverged'] and log['summary']['failed'] == 2
    assert (tmp_path / 'logs' / 'keep.json').read_text() == '{"an": "earlier log"}'


def test_ctrl_c_summarizes_and_logs_the_finished_runs(script, cifar_dir, tmp_path):
    command = cli_command(script, ['--data-dir', cifar_dir, '--runs', '50', '--seed', '0'] + quick_args(script), tiny_hyp(script),
                          python_flags=['-u'])
    process = subprocess.Popen(command, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=allow_ctrl_c)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith('|') and line.split('|')[1].strip() == '2':  # run 1 done: interrupt run 2
            process.send_signal(signal.SIGINT)
            break
    out = ''.join(lines) + process.stdout.read()
    assert process.wait(timeout=120) == 130
    assert 'interrupted: summarizing the 1 finished runs' in out and 'runs: 1 finished, 0 failed' in out
    log = only_log(str(tmp_path / 'logs'))
    assert log['interrupted'] and [r['run'] for r in log['runs']] == [1]


def test_no_log_writes_nothing(script, cifar_dir, tmp_path):
    result = run_cli(script, ['--data-dir', cifar_dir, '--runs', '1', '--no-log'] + quick_args(script), cwd=str(tmp_path),
                     edits=tiny_hyp(script) + [['opt.train_epochs', 0.2]])
    assert result.returncode == 0, result.stderr
    assert 'log:' not in result.stdout and not os.path.exists(tmp_path / 'logs')


def test_import_has_no_side_effects(script, tmp_path):
    code = ('import importlib.util, sys, torch; spec = importlib.util.spec_from_file_location("m", sys.argv[1]); '
            'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); '
            'print(sorted(k for k, v in vars(m).items() if isinstance(v, torch.Tensor)), torch.cuda.is_initialized())')
    result = subprocess.run([sys.executable, '-c', code, os.path.join(ROOT, script)], cwd=str(tmp_path),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ('[] False\n', '')  # printed nothing itself, holds no tensors
    assert os.listdir(tmp_path) == []  # downloaded and wrote nothing


def test_a_torch_older_than_the_scripts_minimum_gets_one_clear_line():
    module = load_script('airbench94.py')  # main() is shared by every script (tests/test_siblings.py)
    assert module.torch_too_old(torch.__version__) is None
    assert module.torch_too_old('2.4.0') is None and module.torch_too_old('10.0.0') is None
    assert module.torch_too_old('2.3.1+cu121') == 'torch 2.3.1+cu121 is too old: this script needs torch 2.4 or newer'
