"""The benchmarks as someone with only a clone runs them: their defaults lie inside the checkout (or are the
CIFAR-10 download), the project's real-image archive only when passed; run as a file, one says how to run it."""
import glob
import os
import subprocess
import sys

import pytest

from conftest import ROOT

BENCHMARKS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'benchmarks', '*.py'))
                    if not p.endswith('__init__.py'))
# The benchmarks that read CIFAR-10 or the real-image archive
DATA_BENCHMARKS = ['compile_time', 'faster_real_images', 'gpu_check', 'real_images', 'reference_loop_real_images',
                   'torchrun_overhead']
# Each one's --help, in one process (torch is imported once); argv[0] as `python -m` gives it
HELPS = """
import runpy, sys
for name in sys.argv[1:]:
    sys.argv = ['benchmarks/%s.py' % name, '--help']
    try:
        runpy.run_module('benchmarks.' + name, run_name='__main__', alter_sys=True)
    except SystemExit as e:
        assert e.code == 0, (name, e.code)
    print('== end of', name)
"""


# What imports nothing of the repository runs as a file too
STANDALONE = ['variance']


@pytest.mark.parametrize('name', BENCHMARKS)
def test_a_benchmark_run_as_a_file_says_in_one_line_how_to_run_it(name):
    result = subprocess.run([sys.executable, os.path.join('benchmarks', name + '.py')], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, '')
    if name in STANDALONE:  # it ran: its own usage error, for the missing argument
        assert result.stderr.startswith('usage: python -m benchmarks.%s' % name) and 'Traceback' not in result.stderr
    else:
        assert result.stderr == 'run it from the repository root as: python -m benchmarks.%s\n' % name


def test_every_data_default_is_in_the_checkout_and_the_archive_only_when_passed():
    result = subprocess.run([sys.executable, '-c', HELPS, *DATA_BENCHMARKS], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, COLUMNS='1000'))  # one line per flag
    assert result.returncode == 0, result.stderr
    helps = dict(zip(DATA_BENCHMARKS, result.stdout.split('== end of ')))
    for name, text in helps.items():
        flags = {line.split()[0]: line for line in text.splitlines() if line.strip().startswith('--')}
        assert '(default: %s)' % os.path.join(ROOT, 'cifar10') in flags['--data-dir'], name
        assert 'default' not in flags['--shared-data'], name
        assert os.path.join(os.path.dirname(ROOT), 'shared') not in text and '../shared' not in text, name
