"""torchrun scale-out on CPU (gloo): the same runs as one process, gathered by rank 0, and no hangs."""
import json
import os
import signal
import subprocess
import sys

from conftest import DRIVER, ROOT, allow_ctrl_c, cli_command, quick_args, tiny_hyp

# The driver (benchmarks/run_with_hyp.py), with code of a test's own before and after main()
DRIVER_TEMPLATE = """
import json, os, sys
sys.path.insert(0, %r)
from run_with_hyp import load_edited
module = load_edited(sys.argv[1], json.loads(sys.argv[2]))
%%s
code = module.main(sys.argv[3:])
%%s
sys.exit(code)
""" % os.path.dirname(DRIVER)

# train() raises on the rank named by the environment
FAILING_DRIVER = DRIVER_TEMPLATE % ("""
def fail(*args, **kwargs):
    raise RuntimeError('injected failure')
if os.environ['RANK'] == os.environ['FAIL_RANK']:
    module.train = fail
""", '')

# Fails if gloo's threads outlive main(): they belong to a process group that
# destroy_process_group could not free, and may abort the process as Python shuts down
THREAD_CHECKING_DRIVER = DRIVER_TEMPLATE % ('', """
threads = [open('/proc/self/task/%s/comm' % t).read().strip() for t in os.listdir('/proc/self/task')]
if any('gloo' in t for t in threads):
    print('threads left after main(): %s' % threads, file=sys.stderr)
    code = code or 3
""")


def short_hyp(script):
    """tiny_hyp cut to one epoch: these tests compare processes, not learning."""
    return tiny_hyp(script) + [['opt.train_epochs', 1]]


def torchrun_command(driver, script, args, python_flags=()):
    return [sys.executable, *python_flags, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
            str(driver), os.path.join(ROOT, script), json.dumps(short_hyp(script)), *args]


def torchrun(tmp_path, script, args, driver_source=None, env=None, timeout=600):
    driver = DRIVER
    if driver_source:
        driver = tmp_path / 'driver.py'
        driver.write_text(driver_source)
    command = torchrun_command(driver, script, args)
    process = subprocess.Popen(command, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, **(env or {})), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:  # never leave torchrun's workers behind
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def log_in(folder):
    names = os.listdir(folder)
    assert len(names) == 1
    return json.load(open(os.path.join(folder, names[0])))


def test_torchrun_runs_equal_single_process_runs_to_the_bit(script, cifar_dir, tmp_path):
    args = ['--data-dir', cifar_dir, '--runs', '3', '--seed', '5'] + quick_args(script)
    result = torchrun(tmp_path, script, args + ['--log-dir', 'logs_torchrun'], driver_source=THREAD_CHECKING_DRIVER)
    assert result.returncode == 0, result.stderr
    single = subprocess.run(cli_command(script, args + ['--log-dir', 'logs_single'], short_hyp(script)), cwd=str(tmp_path),
                            capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))  # torchrun gives each process one thread
    assert single.returncode == 0, single.stderr

    distributed, alone = log_in(tmp_path / 'logs_torchrun'), log_in(tmp_path / 'logs_single')
    assert distributed['world_size'] == 2 and alone['world_size'] == 1
    assert [(r['run'], r['seed'], r['rank'], r['device']) for r in distributed['runs']] == [
        (1, 5, 0, 'cpu'), (2, 6, 1, 'cpu'), (3, 7, 0, 'cpu')]
    assert [r['tta_val_acc'] for r in distributed['runs']] == [r['tta_val_acc'] for r in alone['runs']]
    for i, r in enumerate(distributed['runs']):  # rank 0 prints one line per run, in run order
        assert 'run %d (seed %d, rank %d, cpu): tta_val_acc %.4f' % (i + 1, i + 5, i % 2, r['tta_val_acc']) in result.stdout
    assert result.stdout.count('runs: 3 finished, 0 failed') == 1  # the summary, once, from rank 0


def test_a_failing_rank_ends_the_launch_with_a_message(cifar_dir, tmp_path):
    result = torchrun(tmp_path, 'airbench94.py', ['--data-dir', cifar_dir, '--runs', '4', '--no-warmup'],
                      driver_source=FAILING_DRIVER, env={'FAIL_RANK': '1'}, timeout=300)
    assert result.returncode != 0
    assert 'airbench94.py: rank 1 failed: RuntimeError: injected failure' in result.stderr
    assert not os.path.exists(tmp_path / 'logs') or os.listdir(tmp_path / 'logs') == []


def test_ctrl_c_under_torchrun_summarizes_every_rank(cifar_dir, tmp_path):
    command = torchrun_command(DRIVER, 'airbench94.py', ['--data-dir', cifar_dir, '--runs', '100', '--seed', '0',
                                                        '--no-warmup'], python_flags=['-u'])
    process = subprocess.Popen(command, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, start_new_session=True, preexec_fn=allow_ctrl_c)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith('|') and line.split('|')[1].strip() == '5':  # rank 0 is in its third run
            os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
            break
    out = ''.join(lines) + process.stdout.read()
    try:
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    log = log_in(tmp_path / 'logs')
    runs = [r['run'] for r in log['runs']]
    assert log['interrupted'] and len(runs) == len(set(runs)) >= 3
    assert {r['rank'] for r in log['runs']} == {0, 1}  # rank 1's finished runs are in rank 0's summary
    assert 'interrupted: summarizing the %d finished runs' % len(runs) in out
