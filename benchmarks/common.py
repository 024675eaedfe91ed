"""What the benchmark drivers share: real images on disk, the hyp-editing driver, the machine, RESULTS.md."""
import glob
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
RESULTS = os.path.join(ROOT, 'benchmarks', 'RESULTS.md')

DRIVER = os.path.join(ROOT, 'benchmarks', 'run_with_hyp.py')  # runs a script's CLI with hyp edits


def write_real_images(data_dir, limit_train=None, limit_test=None, shared_data=SHARED_DATA):
    """The shared JPEG-re-encoded CIFAR-10 (cifar10-jpeg.tar.gz and make_cifar10_batches.py in
    `shared_data`) in the official on-disk format, written once."""
    if not os.path.isdir(os.path.join(data_dir, 'cifar-10-batches-py')):
        limits = [] if limit_train is None else ['--limit-train', str(limit_train), '--limit-test', str(limit_test)]
        subprocess.run([sys.executable, os.path.join(shared_data, 'make_cifar10_batches.py'), data_dir] + limits,
                       check=True)


def script_command(script, hyp_edits, cli, python=(sys.executable,)):
    """The command that runs a script's CLI, through DRIVER when hyp is edited."""
    if hyp_edits:
        return [*python, DRIVER, script, json.dumps(hyp_edits), *cli]
    return [*python, os.path.join(ROOT, script), *cli]


def run_until(command, deadline=None, grace_seconds=15, **popen_args):
    """subprocess.run(command, **popen_args).returncode, except that at `deadline` (a time.time()) the
    command is stopped as by Ctrl-C (the scripts and pytest then summarize and log what finished),
    and killed if it has not ended `grace_seconds` later."""
    def ctrl_c_stops():  # a process started in the background of a shell ignores SIGINT, and so would its children
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    with subprocess.Popen(command, preexec_fn=ctrl_c_stops, **popen_args) as process:
        try:
            return process.wait(timeout=None if deadline is None else max(deadline - time.time(), 0))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def run_logged(script, hyp_edits, cli, log_dir, deadline=None):
    """Run a script's CLI (`cli` holds --log-dir log_dir) with its output on the console, stopped as
    by Ctrl-C at `deadline` if one is given (run_until); returns (exit code, wall seconds, the path
    of the log it wrote or None)."""
    before = set(glob.glob(os.path.join(log_dir, '*.json')))
    start = time.time()
    returncode = run_until(script_command(script, hyp_edits, cli), deadline, cwd=ROOT)
    wall_seconds = time.time() - start
    new_logs = [path for path in sorted(set(glob.glob(os.path.join(log_dir, '*.json'))) - before)
                if is_log_of(path, script, cli)]  # other benchmarks may log here meanwhile
    return returncode, wall_seconds, new_logs[0] if len(new_logs) == 1 else None


def is_log_of(path, script, cli):
    log = json.load(open(path))
    return log['script'] == os.path.basename(script) and log['argv'] == cli


def compiles(module):
    """Whether a script (its module) compiles its network in the warm-up run, which it then does
    not let you skip."""
    return module.compile_mode(torch.device('cpu')) is not None


def parse_setting(text):
    path, _, value = text.partition('=')
    return [path, json.loads(value)]


def settings_text(settings):
    """[path, value] hyp edits as the entries show them: 'opt.train_epochs=10, ...' ('' for none)."""
    return ', '.join('%s=%s' % (path, json.dumps(value)) for path, value in settings)


def settings_flags(settings):
    """The same edits as the --set flags that make them, each with a leading space."""
    return ''.join(' --set %s=%s' % (path, shlex.quote(json.dumps(value))) for path, value in settings)


def machine_description(device='cpu'):
    if device == 'cuda':
        return torch.cuda.get_device_name()
    model = platform.processor()
    if os.path.exists('/proc/cpuinfo'):
        model = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
                      if line.startswith('model name')), model)
    return '%s, %d cores available, %d torch threads' % (model, len(os.sched_getaffinity(0)), torch.get_num_threads())


def write_atomically(path, text):
    """Replace the file at `path` by `text` so that it holds either the old or the new text whenever
    the process is killed: a temporary file beside it, flushed to disk, then renamed over it."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile('w', dir=folder, prefix='.' + os.path.basename(path) + '-', delete=False) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(f.name, 0o644)  # a temporary file is private; the file it replaces is not
    os.replace(f.name, path)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)


def append_result(lines, path=RESULTS):
    """Print an entry and append it to `path` (None: print only)."""
    if path:
        with open(path, 'a') as f:
            f.write('\n'.join(lines) + '\n\n')
    print('\n'.join(lines))
