"""What the benchmarks share: the data, the harness that runs the scripts, the machine, RESULTS.md.

Every benchmark runs from the repository root as `python -m benchmarks.NAME`. A script's timed runs go
through harness.py (`python harness.py SCRIPT ... --set PATH=VALUE`), which edits hyp and writes one
JSON log per invocation; in-process measurements load a script with load_script(), harness.py's own
loader and hyp editor.
"""
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

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch

import harness
from support import cifar_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'benchmarks', 'RESULTS.md')

HARNESS = os.path.join(ROOT, 'harness.py')  # runs any script's timed runs, with --set hyp edits
CIFAR10_DIR = os.path.join(ROOT, 'cifar10')  # CIFAR-10 as the scripts read it, downloaded there if absent
REAL_IMAGES_DIR = '/tmp/cifar10-jpeg'  # where --shared-data's images are written


def add_data_flags(parser):
    """--shared-data and --data-dir: CIFAR-10 by default, the project's real-image archive only when passed."""
    parser.add_argument('--shared-data', metavar='DIR', help="the project's real-image archive: a folder with "
                        'cifar10-jpeg.tar.gz and make_cifar10_batches.py, whose images (CIFAR-10 re-encoded as JPEG: '
                        'about 3 points below the published accuracies) are written to --data-dir once')
    parser.add_argument('--data-dir', metavar='DIR', help='CIFAR-10 in the official format, or where the scripts '
                        'download it (default: %s); with --shared-data, where its images are written (default: %s)'
                        % (CIFAR10_DIR, REAL_IMAGES_DIR))


def check_data_flags(parser, args):
    """args.data_dir made absolute (its default filled in); a parser error if --shared-data holds no archive."""
    if args.shared_data and not os.path.isfile(os.path.join(args.shared_data, 'cifar10-jpeg.tar.gz')):
        parser.error('no cifar10-jpeg.tar.gz in %s: pass --shared-data DIR (the folder of the real-image archive), '
                     'or leave it out for CIFAR-10 in --data-dir' % args.shared_data)
    args.data_dir = os.path.abspath(args.data_dir or (REAL_IMAGES_DIR if args.shared_data else CIFAR10_DIR))


def prepare_data(args):
    """How an entry names the data in args.data_dir, once the archive's images are written there (--shared-data)."""
    if not args.shared_data:
        return 'CIFAR-10 in %s' % args.data_dir
    if not os.path.isdir(os.path.join(args.data_dir, 'cifar-10-batches-py')):
        subprocess.run([sys.executable, os.path.join(args.shared_data, 'make_cifar10_batches.py'), args.data_dir],
                       check=True)
    return ("the project's real images (CIFAR-10 re-encoded as JPEG, about 3 points below the published accuracies) "
            'in the official format in %s' % args.data_dir)


def first_images(data_dir, n_train, n_test):
    """A folder inside data_dir with its first n_train training and n_test test images in the official format,
    written once (the official batches, and the archive's, are in random order: a fair sample)."""
    out_dir = os.path.join(data_dir, 'first-%d-%d' % (n_train, n_test))
    if not os.path.isdir(os.path.join(out_dir, 'cifar-10-batches-py')):
        data = load_script('airbench94.py').load_cifar10(data_dir)
        cifar_files.write_images(out_dir, *[(data[split + '_images'][:n].permute(0, 2, 3, 1).numpy(),
                                             data[split + '_labels'][:n].numpy())
                                            for split, n in (('train', n_train), ('test', n_test))])
    return out_dir


def load_script(script, settings=()):
    """A fresh module of `script` (a path relative to the repository, or absolute) with the [path, value]
    `settings` applied to its hyp as harness.py's --set applies them (a path not in hyp is an error)."""
    module = harness.load_script(os.path.join(ROOT, script))
    for path, value in settings:
        error = harness.edit_hyp(module.hyp, path, value)
        if error:
            raise ValueError('%s: hyp edit %s: %s' % (script, path, error))
    return module


def harness_argv(script, settings, cli):
    """harness.py's arguments (its log's 'argv') for `script` with the flags `cli` and the hyp edits."""
    sets = [flag for path, value in settings for flag in ('--set', '%s=%s' % (path, json.dumps(value)))]
    return [script, *cli, *sets]


def script_command(script, settings, cli, python=(sys.executable,)):
    """The command that runs `script`'s timed runs through the harness (`python` may be a torchrun
    launcher); run it from ROOT, the script being relative to it."""
    return [*python, HARNESS, *harness_argv(script, settings, cli)]


def shown_command(command):
    """A command as an entry shows it: 'python', and paths inside the repository relative to it."""
    return ' '.join(['python'] + [shlex.quote(os.path.relpath(a, ROOT) if a.startswith(ROOT + os.sep) else a)
                                  for a in command[1:]])


def run_until(command, deadline=None, grace_seconds=15, **popen_args):
    """subprocess.run(command, **popen_args).returncode, except that at `deadline` (a time.time()) the
    command is stopped as by Ctrl-C (the harness and pytest then summarize and log what finished),
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


def run_logged(script, settings, cli, log_dir, deadline=None, python=(sys.executable,), **popen_args):
    """Run `script` through the harness (`cli` holds --log-dir log_dir) from ROOT, with its output on the
    console unless popen_args say otherwise, stopped as by Ctrl-C at `deadline` if one is given
    (run_until); returns (exit code, wall seconds, the path of the log it wrote or None)."""
    before = set(glob.glob(os.path.join(log_dir, '*.json')))
    start = time.time()
    returncode = run_until(script_command(script, settings, cli, python), deadline, cwd=ROOT, **popen_args)
    wall_seconds = time.time() - start
    argv = harness_argv(script, settings, cli)
    new_logs = [path for path in sorted(set(glob.glob(os.path.join(log_dir, '*.json'))) - before)
                if is_log_of(path, script, argv)]  # other benchmarks may log here meanwhile
    return returncode, wall_seconds, new_logs[0] if len(new_logs) == 1 else None


def is_log_of(path, script, argv):
    """Whether the JSON log at `path` is harness.py's of `script` run with the arguments `argv`
    (harness_argv(): the script, its flags, its --set edits)."""
    try:
        with open(path) as f:
            log = json.load(f)
    except (OSError, ValueError):  # another process's log, still being written or not JSON
        return False
    return log.get('script') == os.path.basename(script) and log.get('argv') == argv


def compiles(module):
    """Whether a script (its module) compiles its network in the warm-up run, which it then does
    not let you skip: the compiled scripts define compile_mode, the eager ones do not."""
    return hasattr(module, 'compile_mode')


def parse_setting(text):
    """--set PATH=VALUE (VALUE JSON) as [path, value], parsed as harness.py parses its own --set."""
    return list(harness.parse_set(text))


def settings_text(settings):
    """[path, value] hyp edits as the entries show them: 'opt.train_epochs=10, ...' ('' for none)."""
    return ', '.join('%s=%s' % (path, json.dumps(value)) for path, value in settings)


def settings_flags(settings):
    """The same edits as the --set flags that make them, each with a leading space."""
    return ''.join(' --set %s' % shlex.quote('%s=%s' % (path, json.dumps(value))) for path, value in settings)


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
