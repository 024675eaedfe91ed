"""harness.py through its real command line, each mechanism once, on the CPU with small data."""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import harness
from conftest import (FORECAST_FACTOR, ROOT, allow_ctrl_c, diverging_edits, edit_hyp, forecast_seconds,
                      load_script, make_loaders, tiny_hyp)
from support import cifar_files

HARNESS = os.path.join(ROOT, 'harness.py')

# Runs harness.main() as torchrun's entry point, with what the tests need around it: train() raises
# on the rank that FAIL_RANK names (through the harness's load_script hook), and no gloo thread may
# outlive main(): it would belong to a process group that destroy_process_group could not free,
# and could abort the process as Python shuts down
DRIVER = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location('harness', %r)
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)
load_script = harness.load_script


def fail(*args, **kwargs):
    raise RuntimeError('injected failure')


def load_failing_script(path):
    module = load_script(path)
    if os.environ['RANK'] == os.environ.get('FAIL_RANK'):
        module.train = fail
    return module


harness.load_script = load_failing_script
code = harness.main(sys.argv[1:])
threads = [open('/proc/self/task/%%s/comm' %% t).read().strip() for t in os.listdir('/proc/self/task')]
if any('gloo' in t for t in threads):
    print('threads left after main(): %%s' %% threads, file=sys.stderr)
    code = code or 3
sys.exit(code)
""" % HARNESS


def set_flags(edits):
    """hyp edits [[path, value], ...] as the harness's --set flags."""
    return [flag for path, value in edits for flag in ('--set', '%s=%s' % (path, json.dumps(value)))]


def harness_args(script, args, edits=None):
    """SCRIPT, --set flags (by default the script's tiny_hyp) and `args`."""
    return [os.path.join(ROOT, script), *set_flags(tiny_hyp(script) if edits is None else edits), *args]


def run_harness(script, args, cwd, edits=None, env=None):
    return subprocess.run([sys.executable, HARNESS, *harness_args(script, args, edits)], cwd=str(cwd),
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})), timeout=600)


def one_epoch(script, tta_level=0):
    """tiny_hyp cut to one epoch, by default with no test-time augmentation (a third of a tiny run's
    time): for tests that compare processes, not learning."""
    return tiny_hyp(script) + [['opt.train_epochs', 1], ['net.tta_level', tta_level]]


def torchrun_command(tmp_path, args):
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER)
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(driver), *args]


def torchrun(tmp_path, args, env=None, timeout=600):
    command = torchrun_command(tmp_path, args)
    process = subprocess.Popen(command, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, **(env or {})), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:  # never leave torchrun's workers behind
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def only_log(folder):
    names = os.listdir(folder)
    assert len(names) == 1 and re.fullmatch(r'airbench94-harness-\d{8}-\d{6}-\d+\.json', names[0]), names
    return json.load(open(os.path.join(folder, names[0])))


def table_rows(stdout, run):
    return [line for line in stdout.splitlines() if line.startswith('|') and line.split('|')[1].strip() == str(run)]


def private_data(cifar_source, folder):
    """A copy of the small dataset that this test's runs may write their cache into."""
    shutil.copytree(cifar_source, folder / 'cifar10', ignore=shutil.ignore_patterns('*.pt'))
    return str(folder / 'cifar10')

#############################################
#   Two runs: table, summary, log, logits   #
#############################################

@pytest.fixture(scope='module')
def two_runs(tmp_path_factory, cifar_source):
    """One invocation: runs 1 and 2 from seed 5, logits saved."""
    tmp = tmp_path_factory.mktemp('two_runs')
    data_dir = private_data(cifar_source, tmp)
    start = time.perf_counter()
    result = run_harness('airbench94.py', ['--data-dir', data_dir, '--runs', '2', '--seed', '5', '--no-warmup',
                                           '--save-logits', 'logits'], tmp)
    result.seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    return tmp, data_dir, result


def test_the_forecast_comes_once_after_the_first_epoch(two_runs):
    # As the scripts' own command lines say it (tests/test_main.py), from the script's Forecast
    _, _, result = two_runs
    lines = result.stdout.splitlines()
    forecast = next(i for i, line in enumerate(lines) if line.startswith('expected: '))
    assert lines[forecast - 1] == table_rows(result.stdout, 1)[0]
    assert lines[forecast].endswith('; on a CPU, --runs 1 --no-warmup trains one network')
    assert 1 / FORECAST_FACTOR < forecast_seconds(result.stdout) / result.seconds < FORECAST_FACTOR


def test_runs_print_a_row_per_epoch_and_a_summary(two_runs):
    _, _, result = two_runs
    out = result.stdout
    assert 'note: CPU run in float32' in out and 'runs: 2, run i uses seed 5+i, device cpu\n' in out
    assert 'data: 1280 train / 500 test images from' in out
    assert '|    run |  epoch | train_loss | train_acc | val_acc | tta_val_acc | time_seconds |' in out
    assert 'warm-up:' not in out and not table_rows(out, 'warmup')  # --no-warmup
    for run in (1, 2):
        assert [r.split('|')[2].strip() for r in table_rows(out, run)] == ['1', '2', '3', 'eval']  # ceil(2.5), TTA
    assert 'runs: 2 finished, 0 failed\n' in out
    # with 2 runs the interval is mean +- 12.7 std / sqrt(2), so its ends may pass 0 and 1
    assert re.search(r'^tta_val_acc: mean [01]\.\d{4}  std 0\.\d{4}  95% CI of the mean \[-?\d+\.\d{4}, \d+\.\d{4}\]$',
                     out, re.M)
    assert re.search(r'^one-sided t-test of mean tta_val_acc > 0\.94: t = -?\d+\.\d\d, p = [\d.e-]+ \(n = 2\)$',
                     out, re.M)
    assert re.search(r'^time per run: mean \d+\.\d{3} s \(whitening init \+ training \+ final TTA, as airbench times '
                     r'it\); mean \d+\.\d{3} s without the final TTA \(as the 2026 records time it\)$', out, re.M)
    assert re.search(r'^log: logs/airbench94-harness-.*\.json$', out, re.M) and 'graphs compiled' not in out


def test_the_log_records_the_runs_edits_and_source(two_runs):
    tmp, data_dir, _ = two_runs
    log = only_log(tmp / 'logs')
    assert [(r['run'], r['seed'], r['status'], r['rank'], r['device']) for r in log['runs']] == [
        (1, 5, 'ok', 0, 'cpu'), (2, 6, 'ok', 0, 'cpu')]
    accs = [r['tta_val_acc'] for r in log['runs']]
    assert min(accs) > 0.5  # learnable data: well above the 0.1 of chance
    assert all(0 < r['train_seconds'] < r['time_seconds'] for r in log['runs'])
    summary = log['summary']
    assert summary['tta_val_acc_mean'] == pytest.approx(sum(accs) / 2) and summary['target'] == log['target'] == 0.94
    assert summary['time_seconds_mean'] > summary['train_seconds_mean'] and summary['p_value'] is not None
    assert log['sets'] == tiny_hyp('airbench94.py')
    assert log['hyp']['opt']['batch_size'] == 128 and log['hyp']['net']['widths']['block1'] == 16
    assert log['source'] == open(os.path.join(ROOT, 'airbench94.py')).read()
    assert log['harness_source'] == open(HARNESS).read()
    assert (log['script'], log['seed'], log['world_size'], log['compile'], log['warmup_seconds']) == (
        'airbench94.py', 5, 1, None, None)
    assert log['device'] == 'cpu' and log['dtype'] == 'float32' and log['torch_version'] == torch.__version__
    assert not log['interrupted'] and log['data_counts'] == {'train': 1280, 'test': 500}
    assert log['data_dir'] == data_dir


def test_saved_logits_give_each_runs_accuracy(two_runs):
    tmp, data_dir, _ = two_runs
    assert sorted(os.listdir(tmp / 'logits')) == ['run00001-seed5.pt', 'run00002-seed6.pt']  # no temporary left
    module = load_script('airbench94.py')
    labels = module.CifarLoader(data_dir, train=False, device='cpu').labels
    test_images_sha256 = hashlib.sha256(module.load_cifar10(data_dir)['test_images'].numpy().tobytes()).hexdigest()
    runs = only_log(tmp / 'logs')['runs']
    for run in runs:
        saved = torch.load(tmp / 'logits' / ('run%05d-seed%d.pt' % (run['run'], run['seed'])), weights_only=True)
        assert (saved['run'], saved['seed'], saved['tta_val_acc']) == (run['run'], run['seed'], run['tta_val_acc'])
        assert saved['logits'].shape == (500, 10) and saved['logits'].dtype == torch.float32
        assert saved['labels'].dtype == torch.int64 and torch.equal(saved['labels'], labels)
        assert (saved['logits'].argmax(1) == labels).float().mean().item() == run['tta_val_acc']
        # the same net without TTA: graded, the last epoch's plain accuracy; and the test set's fingerprint
        assert saved['logits_no_tta'].shape == (500, 10) and saved['logits_no_tta'].dtype == torch.float32
        assert not torch.equal(saved['logits_no_tta'], saved['logits']) and saved['tta_level'] == 2
        assert (saved['logits_no_tta'].argmax(1) == labels).float().mean().item() == saved['no_tta_val_acc'] \
            == run['val_acc']
        assert saved['test_images_sha256'] == test_images_sha256


def test_saved_logits_without_tta_are_the_returned_nets_plain_logits(cifar_source, tmp_path):
    module = harness.load_script(os.path.join(ROOT, 'airbench94.py'))  # this test's own instance, hyp and train
    edit_hyp(module.hyp, one_epoch('airbench94.py', tta_level=2))
    train_loader, test_loader = make_loaders(module, module.hyp, cifar_source)
    returned, train = [], module.train

    def train_and_keep(*args, **kwargs):  # what one_run got, the trained net included
        returned.append(train(*args, **kwargs))
        return returned[-1]
    module.train = train_and_keep
    args = argparse.Namespace(module=module, seed=3, save_logits=str(tmp_path), graded_split=False)
    entry = harness.one_run(args, train_loader, test_loader, 0, 0, torch.device('cpu'))
    saved = torch.load(tmp_path / 'run00001-seed3.pt', weights_only=True)
    assert torch.equal(saved['logits_no_tta'], module.infer(returned[0]['net'], test_loader, 0))
    assert torch.equal(saved['logits'], returned[0]['logits']) and saved['no_tta_val_acc'] == entry['val_acc']


def test_the_image_fingerprint_is_that_of_the_uint8_test_images_in_float32_and_fp16(cifar_source):
    module = load_script('airbench94.py')
    digests = {harness.images_sha256(module.CifarLoader(cifar_source, train=False, device='cpu', policy=policy))
               for policy in (module.precision_policy('cpu'), module.precision_policy('cuda'))}
    assert digests == {hashlib.sha256(module.load_cifar10(cifar_source)['test_images'].numpy().tobytes()).hexdigest()}


def test_the_variance_study_reads_the_saved_logits(two_runs):
    tmp, _, _ = two_runs
    result = subprocess.run([sys.executable, '-m', 'benchmarks.variance', str(tmp / 'logits'), '--json'], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    study, runs = json.loads(result.stdout), only_log(tmp / 'logs')['runs']
    assert (study['runs'], study['images'], study['tta_level'], study['test_images_checked']) == (2, 500, 2, True)
    for kind, key in [('tta', 'tta_val_acc'), ('no_tta', 'val_acc')]:
        assert study[kind]['accuracy_mean'] == pytest.approx(sum(r[key] for r in runs) / 2)

#############################################
#        A compiled script, once            #
#############################################

def test_a_compiled_script_compiles_in_its_warm_up_only(tmp_path, cifar_dir):
    result = run_harness('airbench94_compiled.py', ['--data-dir', cifar_dir, '--runs', '1', '--seed', '0'], tmp_path,
                         edits=one_epoch('airbench94_compiled.py', tta_level=2))  # every view compiled
    assert result.returncode == 0, result.stderr
    assert re.search(r'^warm-up: \d+\.\d s, untimed, including compilation$', result.stdout, re.M)
    assert [r.split('|')[2].strip() for r in table_rows(result.stdout, 'warmup')] == ['1', 'eval']
    assert 'std n/a (1 run)  95% CI of the mean n/a (1 run)' in result.stdout
    assert 'one-sided t-test of mean tta_val_acc > 0.94: n/a (1 run)' in result.stdout
    assert 'graphs compiled during the timed runs: 0\n' in result.stdout
    names = os.listdir(tmp_path / 'logs')
    log = json.load(open(tmp_path / 'logs' / names[0]))
    assert names[0].startswith('airbench94_compiled-harness-') and log['warmup_seconds'] > 0
    assert log['compile'] == {'mode': 'default', 'graphs_compiled_in_timed_runs': 0}


def test_a_compiled_script_refuses_no_warmup(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        harness.main([os.path.join(ROOT, 'airbench94_compiled.py'), '--no-warmup'])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.startswith('usage: harness.py')
    assert 'error: --no-warmup: airbench94_compiled.py compiles during its warm-up' in stderr
    assert os.listdir(tmp_path) == []


def test_eager_runs_a_compiled_script_with_a_preset_and_grades_as_the_records_do(tmp_path):
    # airbench94_progressive.py as E1 (--preset), tiny, with --set list values after it: three epochs at
    # 24, 28 and 32 px, resized; eagerly, so nothing compiles and no warm-up is needed. Graded on test
    # images 2000 on, of 2,500
    script, data_dir = 'airbench94_progressive.py', str(tmp_path / 'cifar10')
    cifar_files.write_batches(data_dir, n_test=2500, noise_std=150)  # hard enough for runs to differ
    result = run_harness(script, ['--data-dir', data_dir, '--runs', '2', '--seed', '0', '--eager', '--no-warmup',
                                  '--preset', 'E1', '--graded-split', '--save-logits', 'logits'],
                         tmp_path, edits=tiny_hyp(script) + [['aug.resolutions', [24, 28, 32]]])
    assert result.returncode == 0, result.stderr
    assert "note: --eager: the script's compiled code runs eagerly" in result.stdout and 'warm-up:' not in result.stdout
    assert [r.split('|')[2].strip() for r in table_rows(result.stdout, 1)] == ['1', '2', '3', 'eval']
    assert 'graphs compiled' not in result.stdout
    log = json.load(open(tmp_path / 'logs' / os.listdir(tmp_path / 'logs')[0]))
    assert (log['eager'], log['compile'], log['warmup_seconds'], log['target']) == (True, None, None, 0.94)
    # The preset's values, then the --set flags: the later edit wins
    assert (log['preset'], log['hyp']['opt']['muon_lr'], log['hyp']['aug']['resize']) == ('E1', 0.2255, True)
    assert log['hyp']['aug']['resolutions'] == [24, 28, 32] and log['hyp']['opt']['train_epochs'] == 2.5
    assert load_script(script).PRESETS['E1']['aug.resolutions'] == [24] * 3 + [28] * 3 + [32] * 3  # left as it was
    assert log['grading'] == 'test images 2000-2499'
    for run in log['runs']:
        saved = torch.load(tmp_path / 'logits' / ('run%05d-seed%d.pt' % (run['run'], run['seed'])), weights_only=True)
        correct = saved['logits'].argmax(1) == saved['labels']
        assert run['graded_tta_val_acc'] == correct[2000:].float().mean().item() != run['tta_val_acc']
        assert run['tta_val_acc'] == correct.float().mean().item()
    graded = [r['graded_tta_val_acc'] for r in log['runs']]
    assert log['summary']['graded_tta_val_acc_mean'] == pytest.approx(sum(graded) / 2)
    assert log['summary']['tested'] == 'graded_tta_val_acc'
    assert log['summary']['t_statistic'] == pytest.approx(
        (sum(graded) / 2 - 0.94) / (abs(graded[0] - graded[1]) / 2))  # std / sqrt(2) of two runs: |a - b| / 2
    assert re.search(r'^graded_tta_val_acc: mean [01]\.\d{4} .* \(test images 2000 on, as the 2026 records grade\)$',
                     result.stdout, re.M)
    assert 'one-sided t-test of mean graded_tta_val_acc > 0.94: t = ' in result.stdout


def test_presets_and_the_graded_split_refuse_what_they_cannot_do(tmp_path, monkeypatch, capsys, cifar_dir):
    monkeypatch.chdir(tmp_path)
    for script, preset, error in [('airbench94_progressive.py', 'E2', 'the presets E1'),
                                  ('airbench94.py', 'E1', 'no presets')]:
        with pytest.raises(SystemExit) as exit_info:
            harness.main([os.path.join(ROOT, script), '--preset', preset])
        assert exit_info.value.code == 2
        assert 'error: --preset %s: %s has %s' % (preset, script, error) in capsys.readouterr().err
    code = harness.main([os.path.join(ROOT, 'airbench94.py'), '--graded-split', '--data-dir', cifar_dir, '--no-warmup'])
    assert code == 1
    assert 'error: --graded-split grades test images 2000 on, and this test set has 500' in capsys.readouterr().err

#############################################
#               torchrun                    #
#############################################

@pytest.fixture(scope='module')
def torchrun_and_single(tmp_path_factory, cifar_source):
    """Runs 1-3 from seed 5 under torchrun (2 processes) and in one process, one epoch each."""
    tmp = tmp_path_factory.mktemp('torchrun')
    data_dir = private_data(cifar_source, tmp)
    args = harness_args('airbench94.py', ['--data-dir', data_dir, '--runs', '3', '--seed', '5', '--no-warmup'],
                        one_epoch('airbench94.py'))
    distributed = torchrun(tmp, args + ['--log-dir', 'logs_torchrun'])
    assert distributed.returncode == 0, distributed.stderr
    single = subprocess.run([sys.executable, HARNESS, *args, '--log-dir', 'logs_single'], cwd=str(tmp),
                            capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))  # torchrun gives each process one thread
    assert single.returncode == 0, single.stderr
    return tmp, distributed, single


def test_torchrun_runs_equal_single_process_runs_to_the_bit(torchrun_and_single):
    tmp, result, _ = torchrun_and_single
    distributed, alone = only_log(tmp / 'logs_torchrun'), only_log(tmp / 'logs_single')
    assert distributed['world_size'] == 2 and alone['world_size'] == 1
    assert [(r['run'], r['seed'], r['rank'], r['device']) for r in distributed['runs']] == [
        (1, 5, 0, 'cpu'), (2, 6, 1, 'cpu'), (3, 7, 0, 'cpu')]
    assert [r['tta_val_acc'] for r in distributed['runs']] == [r['tta_val_acc'] for r in alone['runs']]
    assert 'runs: 3, run i uses seed 5+i, device cpu, 2 processes (run i on rank i mod 2)' in result.stdout
    assert table_rows(result.stdout, 2) == []  # rank 1 prints no table
    for i, r in enumerate(distributed['runs']):  # rank 0 prints one line per run, in run order
        line = 'run %d (seed %d, rank %d, cpu): tta_val_acc %.4f, ' % (i + 1, i + 5, i % 2, r['tta_val_acc'])
        assert line in result.stdout
    assert result.stdout.count('runs: 3 finished, 0 failed') == 1  # the summary, once, from rank 0
    forecast_seconds(result.stdout)  # and the forecast, once, from rank 0


def test_set_changes_the_training_last_edit_winning(torchrun_and_single):
    tmp, _, single = torchrun_and_single
    assert [r.split('|')[2].strip() for r in table_rows(single.stdout, 1)] == ['1', 'eval']  # tiny's 2.5, then 1
    log = only_log(tmp / 'logs_single')
    assert log['hyp']['opt']['train_epochs'] == 1 and log['sets'][-2] == ['opt.train_epochs', 1]


def test_a_failing_rank_ends_the_launch_with_a_message(cifar_dir, tmp_path):
    args = harness_args('airbench94.py', ['--data-dir', cifar_dir, '--runs', '4', '--no-warmup'],
                        one_epoch('airbench94.py'))
    result = torchrun(tmp_path, args, env={'FAIL_RANK': '1'}, timeout=300)
    assert result.returncode != 0
    assert 'harness.py: rank 1 failed: RuntimeError: injected failure' in result.stderr
    assert os.listdir(tmp_path / 'logs') == []  # rank 0 checked the folder, and wrote nothing


def test_ctrl_c_under_torchrun_summarizes_every_rank(cifar_dir, tmp_path):
    args = harness_args('airbench94.py', ['--data-dir', cifar_dir, '--runs', '100', '--seed', '0', '--no-warmup'],
                        one_epoch('airbench94.py'))
    process = subprocess.Popen(torchrun_command(tmp_path, args), cwd=str(tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'),
                               start_new_session=True, preexec_fn=allow_ctrl_c)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith('|') and line.split('|')[1].strip() == '5':  # rank 0 is in its third run
                os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
                break
        out = ''.join(lines) + process.stdout.read()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    log = only_log(tmp_path / 'logs')
    runs = [r['run'] for r in log['runs']]
    assert log['interrupted'] and len(runs) == len(set(runs)) >= 3
    assert {r['rank'] for r in log['runs']} == {0, 1}  # rank 1's finished runs are in rank 0's summary
    assert 'interrupted: summarizing the %d finished runs' % len(runs) in out
    assert 'runs: %d finished, 0 failed' % len(runs) in out

#############################################
#          Flags, failures, data            #
#############################################

@pytest.mark.parametrize('args, message', [
    (['--set', 'opt.train_epochs=2,5'], "argument --set: opt.train_epochs: the value '2,5' is not JSON"),
    (['--set', 'opt.train_epochs'], "argument --set: expected PATH=VALUE (e.g. opt.train_epochs=2.5), not "
                                    "'opt.train_epochs'"),
    (['--set', 'opt.train_epoch=2'], "--set opt.train_epoch: hyp['opt'] has no key 'train_epoch'"),
    (['--set', 'optim.lr=2'], "--set optim.lr: hyp has no key 'optim'"),
    (['--set', 'opt.lr.x=2'], "--set opt.lr.x: hyp['opt']['lr'] is 11.5, not a dict"),
    (['--runs', '0'], '--runs: must be a positive integer, not 0'),
    (['--log-dir', 'afile'], '--log-dir afile: cannot write there'),
    (['--save-logits', 'afile'], '--save-logits afile: cannot write there'),
])
def test_bad_flags_get_an_argparse_error_and_change_nothing(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / 'afile').write_text('precious')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        harness.main([os.path.join(ROOT, 'airbench94.py')] + args)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.startswith('usage: harness.py') and message in stderr, stderr
    assert os.listdir(tmp_path) == ['afile']


def test_a_script_needs_a_py_file_and_a_target(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(ROOT, 'airbench94.py'), 'mine.py')
    for args, message in [(['nothere.py'], 'SCRIPT nothere.py: not a .py file'),
                          (['mine.py'], '--target: mine.py has no accuracy in its name (airbenchNN); pass --target')]:
        with pytest.raises(SystemExit) as exit_info:
            harness.main(args)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert harness.parse_args(['mine.py', '--target', '0.9']).target == 0.9
    assert harness.parse_args([os.path.join(ROOT, 'airbench96_faster.py')]).target == 0.96


def test_the_real_cli_reports_a_bad_flag_without_a_traceback(tmp_path):
    result = run_harness('airbench94.py', ['--set', 'net.widths={"block1": 16'], tmp_path, edits=())
    assert result.returncode == 2 and result.stderr.startswith('usage: harness.py')
    assert 'Traceback' not in result.stderr
    assert 'argument --set: net.widths: the value \'{"block1": 16\' is not JSON' in result.stderr
    assert os.listdir(tmp_path) == []


def test_diverging_runs_are_counted_logged_and_exit_1(cifar_dir, tmp_path):
    result = run_harness('airbench94.py', ['--data-dir', cifar_dir, '--runs', '2', '--seed', '0', '--no-warmup'],
                         tmp_path, edits=tiny_hyp('airbench94.py') + diverging_edits('airbench94.py'))
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert 'harness.py: run 1 (seed 0) failed: the training loss became' in result.stderr
    assert 'harness.py: run 2 (seed 1) failed: the training loss became' in result.stderr
    assert 'runs: 0 finished, 2 failed\n' in result.stdout and 'tta_val_acc: mean' not in result.stdout
    log = only_log(tmp_path / 'logs')
    assert [(r['status'], r['error'][:25]) for r in log['runs']] == [('diverged', 'the training loss became ')] * 2
    assert log['summary']['failed'] == 2 and log['summary']['tta_val_acc_mean'] is None


def test_missing_data_offline_gets_one_line_and_exit_1(tmp_path):
    result = run_harness('airbench94.py', ['--data-dir', str(tmp_path / 'empty')], tmp_path, edits=())
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.startswith('harness.py: error: no CIFAR-10 in %s' % (tmp_path / 'empty'))
    assert result.stderr.count('\n') == 1 and os.listdir(tmp_path / 'logs') == []

#############################################
#               Statistics                  #
#############################################

@pytest.mark.parametrize('df, quantile', [(1, 12.7062), (2, 4.3027), (10, 2.2281), (199, 1.9720)])
def test_t_quantiles_match_the_tables(df, quantile):
    assert harness.t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-3)
    assert harness.t_quantile(0.025, df) == -harness.t_quantile(0.975, df)


def test_one_sided_p_values_match_the_tables():
    assert 1 - harness.student_t_cdf(2.0, 10) == pytest.approx(0.03669, abs=1e-5)
    assert 1 - harness.student_t_cdf(0.0, 10) == 0.5
    assert harness.student_t_cdf(-12.7062, 1) == pytest.approx(0.025, abs=1e-6)
    assert harness.student_t_cdf(float('inf'), 3) == 1 and harness.student_t_cdf(float('-inf'), 4) == 0


def ok_run(acc):
    return dict(status='ok', tta_val_acc=acc, time_seconds=2.0, train_seconds=1.5)


def test_summary_of_three_runs():
    summary = harness.summarize([ok_run(0.5), ok_run(0.6), ok_run(0.7), dict(status='diverged')], target=0.5)
    assert (summary['runs'], summary['ok'], summary['failed']) == (4, 3, 1)
    assert summary['tta_val_acc_mean'] == pytest.approx(0.6) and summary['tta_val_acc_std'] == pytest.approx(0.1)
    half_width = 4.3027 * 0.1 / 3**0.5
    assert summary['tta_val_acc_ci95'] == pytest.approx([0.6 - half_width, 0.6 + half_width], abs=1e-4)
    # t = 0.1 / (0.1 / sqrt(3)) = sqrt(3); with 2 degrees of freedom P(T >= t) = (1 - t / sqrt(t^2 + 2)) / 2
    assert summary['t_statistic'] == pytest.approx(3**0.5)
    assert summary['p_value'] == pytest.approx((1 - (3 / 5)**0.5) / 2)
    assert (summary['time_seconds_mean'], summary['train_seconds_mean']) == (2.0, 1.5)
    assert 'one-sided t-test of mean tta_val_acc > 0.5: t = 1.73, p = 0.1127 (n = 3)' \
        in harness.format_summary(summary)


def test_summary_of_equal_accuracies_has_a_zero_width_interval():
    summary = harness.summarize([ok_run(0.6)] * 3, target=0.94)
    assert summary['tta_val_acc_std'] == 0 and summary['tta_val_acc_ci95'] == [0.6, 0.6]
    assert summary['t_statistic'] == float('-inf') and summary['p_value'] == 1
    assert 'mean 0.6000  std 0.0000  95% CI of the mean [0.6000, 0.6000]' in harness.format_summary(summary)
    assert harness.summarize([ok_run(0.94)] * 2, target=0.94)['p_value'] == 0.5
    assert harness.summarize([ok_run(1.0)] * 2, target=0.94)['p_value'] == 0


def test_summary_of_one_run_and_of_none():
    summary = harness.summarize([ok_run(0.6)], target=0.94)
    assert summary['tta_val_acc_mean'] == 0.6 and summary['time_seconds_mean'] == 2.0
    assert [summary[k] for k in ('tta_val_acc_std', 'tta_val_acc_ci95', 't_statistic', 'p_value')] == [None] * 4
    assert 'n/a (1 run)' in harness.format_summary(summary)
    assert harness.format_summary(harness.summarize([dict(status='diverged')], 0.94)) == 'runs: 0 finished, 1 failed'
